"""Normalizing-flow families from zuko, arranged for fast sampling or fast density.

zuko builds every flow in the *density* direction: ``log_prob`` is one network pass and
sampling inverts the transform (for autoregressive flows one pass per dimension, for NAF,
UNAF and GF a bisection). Reverse-KL VI samples at every step, so :class:`FlowFamily`
offers the ``"sample"`` direction: the same zuko transforms, inverted with
``zuko.lazy.LazyInverse``, so sampling is one pass (inverse-autoregressive) while
``log_prob`` of arbitrary θ stays available (as the slower direction). The unconditional
affine MAF in that direction (``AutoFlow("maf")``, ``VIPosterior(q="maf")``) is drawn by
:class:`_AffineMAFSample`: the same draws and densities as zuko's objects, in plain tensor
ops, since reverse-KL VI draws at every step.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints
from torch.distributions.transforms import Transform, identity_transform

from sbi_vi._checks import check_choice, check_positive_int
from sbi_vi._zuko import zuko
from sbi_vi.vi.families.base import Family
from sbi_vi.vi.families.splines import PackedSpline

__all__ = ["FLOW_BUILDERS", "FlowFamily"]


def _nsf(bins: int = 8, slope: float = 1e-3, **kwargs: Any) -> Any:
    """zuko's ``NSF`` (its MAF, bins, bound 5 and slope) with the spline of
    :mod:`sbi_vi.vi.families.splines`, whose forward pass (sampling, in the ``"sample"``
    direction) is one autograd node: the same distribution for the same weights, at about
    two thirds of the cost per reverse-KL step."""
    return zuko.flows.MAF(univariate=PackedSpline(5.0, slope), shapes=[(3 * bins - 1,)], **kwargs)


#: zuko flow constructors by the names of the ``q`` argument.
FLOW_BUILDERS = {
    "maf": zuko.flows.MAF,
    "nsf": _nsf,
    "naf": zuko.flows.NAF,
    "unaf": zuko.flows.UNAF,
    "nice": zuko.flows.NICE,
    "sospf": zuko.flows.SOSPF,
    "gf": zuko.flows.GF,
}

Direction = Literal["sample", "density"]


class FlowFamily(Family):
    """A zuko normalizing flow over unconstrained θ, pushed onto the prior's support.

    Args:
        flow: Name of a zuko flow: ``maf``, ``nsf``, ``naf``, ``unaf``, ``nice``, ``sospf``,
            ``gf``.
        event_size: Dimension ``D`` of θ.
        link: Bijection from ℝᴰ onto the support.
        shift: Standardisation location in unconstrained space, shape ``[D]``.
        scale: Standardisation scale in unconstrained space, shape ``[D]``.
        context_size: Size ``L`` of the context (0 for an unconditional family).
        num_transforms: Number of flow transforms.
        hidden_features: Width of the two hidden layers of each conditioner.
        direction: ``"sample"`` makes sampling one pass (for rKL/IW/alpha), ``"density"``
            makes ``log_prob`` one pass (for fKL, stick-the-landing, DReG).
        embedding_net: Network applied to the context first (see :class:`Family`);
            ``context_size`` is then the size of its output.
        **flow_kwargs: Passed to the zuko constructor (e.g. ``bins`` for NSF).

    Example:
        >>> family = FlowFamily("maf", event_size=2)
        >>> theta, log_q = family().rsample_and_log_prob((4,))
        >>> theta.shape, log_q.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    def __init__(
        self,
        flow: str,
        event_size: int,
        link: Transform = identity_transform,
        shift: Tensor | None = None,
        scale: Tensor | None = None,
        *,
        context_size: int = 0,
        num_transforms: int = 5,
        hidden_features: int = 50,
        direction: Direction = "sample",
        embedding_net: nn.Module | None = None,
        **flow_kwargs: Any,
    ):
        super().__init__(event_size, link, shift, scale, embedding_net=embedding_net)
        check_choice("q", flow, FLOW_BUILDERS)
        check_choice("direction", direction, ("sample", "density"))
        num_transforms = check_positive_int("num_transforms", num_transforms)
        hidden_features = check_positive_int("hidden_features", hidden_features)
        self.flow_name = flow
        self.direction = direction
        built = FLOW_BUILDERS[flow](
            features=event_size,
            context=context_size,
            transforms=num_transforms,
            hidden_features=(hidden_features, hidden_features),
            **flow_kwargs,
        )
        transform = built.transform
        if direction == "sample":
            transform = zuko.lazy.LazyInverse(transform)
        self.flow = zuko.lazy.Flow(transform, built.base)
        self._affine = _affine_maf_layers(self.flow) if direction == "sample" else None

    def base(self, context: Tensor | None = None) -> Distribution:
        affine = getattr(self, "_affine", None)  # absent in families pickled before it
        if context is None and affine is not None:
            return _AffineMAFSample(self.flow, affine)
        return self.flow(context)

    def extra_repr(self) -> str:
        return (
            f"flow={self.flow_name!r}, event_size={self.event_size}, direction={self.direction!r}"
        )


# --- the affine MAF in the sampling direction, without zuko's per-call objects -------------

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _affine_maf_layers(flow: Any) -> tuple[tuple[float, tuple[nn.Module, ...]], ...] | None:
    """The ``(slope, hyper layers)`` of each transform of an unconditional, ``"sample"``-
    direction affine MAF (zuko's ``MAF`` with its default ``MonotonicAffineTransform``), or
    ``None`` for any other flow (those keep zuko's path)."""
    composed = getattr(flow.transform, "transform", None)
    base = flow.base
    if not isinstance(flow.transform, zuko.lazy.LazyInverse) or not isinstance(
        composed, zuko.lazy.LazyComposedTransform
    ):
        return None
    if not (
        isinstance(base, zuko.lazy.UnconditionalDistribution)
        and base.f is zuko.distributions.DiagNormal
        and len(base.args) + len(base.kwargs) == 2
        and set(base.kwargs) <= {"loc", "scale"}
    ):
        return None
    out = []
    for t in composed.transforms:
        if not (
            isinstance(t, zuko.flows.autoregressive.MaskedAutoregressiveTransform)
            and t.univariate is zuko.transforms.MonotonicAffineTransform
            and t.total == 2
        ):
            return None
        if not all(isinstance(m, (zuko.nn.MaskedLinear, nn.ReLU)) for m in t.hyper):
            return None
        out.append((1e-3, tuple(t.hyper)))
    return tuple(out)


class _AffineMAFSample(Distribution):
    """zuko's ``"sample"``-direction affine MAF, drawn in one pass of plain tensor ops.

    The same distribution, the same random draws and the same numbers as
    ``flow()`` (zuko's ``NormalizingFlow``; checked in the tests) for the same weights, without
    the objects zuko builds per call (a transform per layer, a masked weight module call per
    linear layer): reverse-KL VI draws at every step, so this is the flow's per-step path.
    ``log_prob`` of arbitrary ``u`` (the slow, ``D``-pass direction) is zuko's.

    Args:
        flow: The family's ``zuko.lazy.Flow`` (``LazyInverse`` of an affine MAF).
        layers: :func:`_affine_maf_layers` of ``flow``.
    """

    has_rsample = True
    arg_constraints: dict = {}  # noqa: RUF012
    support = constraints.real_vector

    def __init__(self, flow: Any, layers: tuple[tuple[float, tuple[nn.Module, ...]], ...]):
        self._flow = flow
        self._layers = layers
        args, kwargs = list(flow.base.args), flow.base.kwargs
        self._loc = args[0] if args else kwargs["loc"]
        self._scale = args[1] if len(args) > 1 else kwargs["scale"]
        super().__init__(Size(), self._loc.shape)  # validates as zuko's base would

    def rsample_and_log_prob(self, sample_shape: Size | tuple = ()) -> tuple[Tensor, Tensor]:
        shape = Size(sample_shape) + self._loc.shape
        eps = torch.empty(shape, dtype=self._loc.dtype, device=self._loc.device).normal_()
        x = self._loc + self._scale * eps
        log_q = -0.5 * eps.square().sum(-1) - (self._scale.log().sum() + shape[-1] * _LOG_SQRT_2PI)
        log_scales = None
        for slope, hyper in self._layers:
            h = x
            for m in hyper:
                if isinstance(m, nn.ReLU):
                    h = torch.relu(h)
                else:
                    h = F.linear(h, m.mask * m.weight, m.bias)
            shift, a = h.unflatten(-1, (-1, 2)).unbind(-1)
            # zuko's a / (1 + |a / log(slope)|), in fewer autograd nodes
            log_scale = a / torch.add(1.0, a.abs(), alpha=-1.0 / math.log(slope))
            x = torch.addcmul(shift, x, log_scale.exp())
            log_scales = log_scale if log_scales is None else log_scales + log_scale
        return x, log_q - log_scales.sum(-1)

    def rsample(self, sample_shape: Size | tuple = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        flow = self._flow()
        if not self._validate_args:  # switched off on this object: off on zuko's too
            _without_validation(flow)
        return flow.log_prob(value)


def _without_validation(dist: Any, depth: int = 0) -> None:
    """Switch argument validation off on ``dist`` and the distributions it holds."""
    if isinstance(dist, Distribution) and depth < 8:
        dist._validate_args = False
        for value in vars(dist).values():
            _without_validation(value, depth + 1)
