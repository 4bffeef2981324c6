"""Normalizing-flow families from zuko, arranged for fast sampling or fast density.

zuko builds every flow in the *density* direction: ``log_prob`` is one network pass and
sampling inverts the transform (for autoregressive flows one pass per dimension, for NAF,
UNAF and GF a bisection). Reverse-KL VI samples at every step, so :class:`FlowFamily`
offers the ``"sample"`` direction: the same zuko transforms, inverted with
``zuko.lazy.LazyInverse``, so sampling is one pass (inverse-autoregressive) while
``log_prob`` of arbitrary θ stays available (as the slower direction).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn
from torch.distributions import Distribution
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

    def base(self, context: Tensor | None = None) -> Distribution:
        return self.flow(context)

    def extra_repr(self) -> str:
        return (
            f"flow={self.flow_name!r}, event_size={self.event_size}, direction={self.direction!r}"
        )
