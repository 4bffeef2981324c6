r"""Conditional density estimators q(x | θ) for NLE: zuko flows with z-scoring.

:class:`ConditionalFlow` wraps any zuko lazy flow (``flow(context)`` returns a distribution
over the flow's features) and adds what a likelihood estimator needs: z-scoring of x (an
affine map whose log-determinant enters ``log_prob``), z-scoring and an optional embedding
of θ (the context), and the ``log_prob(x, theta)`` / ``sample(sample_shape, theta)`` methods
that the potentials call, on any leading batch shape.

:func:`likelihood_nn` is the ``sbi`` builder factory: it returns a picklable builder
``(batch_theta, batch_x) -> ConditionalFlow`` that :class:`~sbi_vi.estimators.NLE` calls
with the training data.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Size, Tensor, nn

from sbi_vi._checks import check_choice, check_positive_int
from sbi_vi._zuko import zuko
from sbi_vi.estimators.embedding import embedding_output_dim
from sbi_vi.estimators.zscore import Standardize, ZScore, standardizers
from sbi_vi.vi.families.splines import PackedSpline, spline_call_and_ladj

__all__ = ["FLOW_NAMES", "ConditionalFlow", "LikelihoodNetBuilder", "likelihood_nn"]

FlowName = Literal["maf", "nsf"]
FLOW_NAMES = ("maf", "nsf")


def _flatten_pair(a: Tensor, b: Tensor, a_name: str, b_name: str, a_dim: int, b_dim: int):
    """Broadcast the leading dims of ``a [*, A]`` and ``b [*, B]``; return them flat."""
    if a.ndim < 1 or a.shape[-1] != a_dim:
        raise ValueError(f"`{a_name}` must have shape [*, {a_dim}]; got {tuple(a.shape)}.")
    if b.ndim < 1 or b.shape[-1] != b_dim:
        raise ValueError(f"`{b_name}` must have shape [*, {b_dim}]; got {tuple(b.shape)}.")
    try:
        batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"The leading shapes of `{a_name}` {tuple(a.shape[:-1])} and `{b_name}` "
            f"{tuple(b.shape[:-1])} do not broadcast."
        ) from None
    a = a.expand(*batch, a_dim).reshape(-1, a_dim)
    b = b.expand(*batch, b_dim).reshape(-1, b_dim)
    return a, b, batch


class ConditionalFlow(nn.Module):
    r"""q(x | θ): a zuko conditional flow on z-scored x, with context embed(z-scored θ).

    .. math::

        \log q(x \mid \theta) = \log q_\text{flow}\big((x - \mu_x) / \sigma_x \,\big|\,
        e((\theta - \mu_\theta) / \sigma_\theta)\big) - \textstyle\sum \log \sigma_x

    Args:
        flow: A zuko lazy flow over ``L`` features with context size ``E`` (the output
            size of ``embedding_net``).
        x_norm: Standardisation of x ``[*, L]``.
        theta_norm: Standardisation of θ ``[*, D]``.
        embedding_net: Embedding of the standardised θ, ``[B, D] -> [B, E]``.

    Example:
        >>> theta, x = torch.randn(100, 2), torch.randn(100, 3)
        >>> q = likelihood_nn("maf", num_transforms=2)(theta, x)
        >>> q.log_prob(x[:4], theta[:4]).shape
        torch.Size([4])
        >>> q.sample((5,), theta[0]).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        flow: nn.Module,
        x_norm: Standardize,
        theta_norm: Standardize,
        embedding_net: nn.Module | None = None,
    ):
        super().__init__()
        self.flow = flow
        self.x_norm = x_norm
        self.theta_norm = theta_norm
        self.embedding_net = nn.Identity() if embedding_net is None else embedding_net
        self.x_dim = int(x_norm.mean.shape[0])
        self.theta_dim = int(theta_norm.mean.shape[0])

    def _context(self, theta: Tensor) -> Tensor:
        return self.embedding_net(self.theta_norm(theta))

    def _log_prob_flat(self, x: Tensor, theta: Tensor) -> Tensor:
        """log q(x | θ) for x ``[B, L]`` and θ ``[B, D]`` (no checks: the training path)."""
        plan = self.__dict__.get("_fast_plan")
        if plan is None:
            plan = self.__dict__["_fast_plan"] = _fast_plan(self.flow)
        if plan:
            return self._log_prob_fast(x, theta, plan)
        return self.flow(self._context(theta)).log_prob(self.x_norm(x)) + self.x_norm.log_abs_det()

    def _log_prob_fast(self, x: Tensor, theta: Tensor, plan: tuple) -> Tensor:
        """The density of a zuko MAF (affine or with :class:`RQSTransform`) over a standard
        normal, evaluated directly: the same arithmetic as zuko's ``flow(c).log_prob(z)``
        without building its lazy transforms and distributions, with the log-determinants
        summed over features once."""
        c = self._context(theta)
        z = self.x_norm(x)
        total: Tensor | None = None
        for t, step in zip(self.flow.transform.transforms, plan, strict=True):
            phi = t.hyper(torch.cat((z, c), -1)).unflatten(-1, (-1, t.total))
            if step is None:  # zuko's MonotonicAffineTransform (slope 1e-3)
                shift, scale = phi.unbind(-1)
                ladj = scale / (1 + (scale * _INV_LOG_SLOPE).abs())
                z = torch.addcmul(shift, z, ladj.exp())
            else:
                z, ladj = spline_call_and_ladj(phi, z, *step)
            total = ladj if total is None else total + ladj
        log_base = -0.5 * z.square() if total is None else total - 0.5 * z.square()
        return log_base.sum(-1) + (self.x_norm.log_abs_det() - z.shape[-1] * _HALF_LOG_2PI)

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        """log q(x | θ) for x ``[*, L]`` and θ ``[*, D]`` (broadcast), shape ``[*]``.

        Raises:
            ValueError: If the last dims are not ``L`` and ``D``.
        """
        x, theta, batch = _flatten_pair(x, theta, "x", "theta", self.x_dim, self.theta_dim)
        return self._log_prob_flat(x, theta).reshape(batch)

    def loss(self, x: Tensor, theta: Tensor) -> Tensor:
        """Per-sample negative log-likelihood, shape ``[B]`` for x ``[B, L]``, θ ``[B, D]``."""
        return -self._log_prob_flat(x, theta)

    def sample(self, sample_shape: Size | tuple[int, ...], theta: Tensor) -> Tensor:
        """Draw x ~ q(x | θ): θ ``[D]`` gives ``[*sample_shape, L]``, θ ``[B, D]`` gives
        ``[*sample_shape, B, L]``."""
        if theta.ndim not in (1, 2) or theta.shape[-1] != self.theta_dim:
            raise ValueError(
                f"`theta` must have shape [{self.theta_dim}] or [B, {self.theta_dim}]; "
                f"got {tuple(theta.shape)}."
            )
        with torch.no_grad():
            context = self._context(theta.reshape(-1, self.theta_dim))
            if theta.ndim == 1:
                context = context[0]
            return self.x_norm.inverse(self.flow(context).sample(Size(sample_shape)))


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_INV_LOG_SLOPE = 1 / math.log(1e-3)  # zuko's MonotonicAffineTransform soft bound


def _fast_plan(flow: nn.Module) -> tuple | bool:
    """Per transform of a zuko MAF over a standard normal: ``None`` for zuko's affine
    transform, ``(bins, bound, c)`` for a packed :class:`RQSTransform`; ``False`` for any
    other flow (which then goes through zuko's own ``log_prob``)."""
    from zuko.distributions import DiagNormal
    from zuko.flows.autoregressive import MaskedAutoregressiveTransform
    from zuko.lazy import Flow, LazyComposedTransform, UnconditionalDistribution
    from zuko.transforms import MonotonicAffineTransform

    if not (
        isinstance(flow, Flow)
        and type(flow.transform) is LazyComposedTransform
        and type(flow.base) is UnconditionalDistribution
        and flow.base.f is DiagNormal
    ):
        return False
    kwargs = flow.base.kwargs
    loc_scale = list(flow.base.args) + [kwargs.pop(k) for k in ("loc", "scale") if k in kwargs]
    if kwargs or len(loc_scale) != 2:
        return False
    loc, scale = loc_scale
    if not (bool((loc == 0).all()) and bool((scale == 1).all())):
        return False
    plan: list = []
    for t in flow.transform.transforms:
        if type(t) is not MaskedAutoregressiveTransform:
            return False
        shapes = [tuple(shape) for shape in t.shapes]
        if t.univariate is MonotonicAffineTransform and shapes == [(), ()]:
            plan.append(None)
        elif isinstance(t.univariate, _Spline) and len(shapes) == 1 and len(shapes[0]) == 1:
            bins, rest = divmod(shapes[0][0] + 1, 3)
            if rest or bins < 2:
                return False
            plan.append((bins, t.univariate.bound, -2.0 / math.log(1e-3)))
        else:
            return False
    return tuple(plan) if plan else False


def _build_zuko_flow(
    model: FlowName,
    features: int,
    context: int,
    hidden_features: int,
    num_transforms: int,
    num_bins: int,
    num_blocks: int,
    tail_bound: float,
) -> nn.Module:
    """A zuko MAF, or a zuko MAF with :class:`RQSTransform` (a neural spline flow)."""
    # sbi's MADE / residual conditioners have an input layer plus `num_blocks` blocks.
    hidden = [hidden_features] * (num_blocks + 1)
    kwargs: dict = {}
    if model == "nsf":
        kwargs = {
            "univariate": PackedSpline(float(tail_bound)),
            # One packed tensor [widths, heights, derivatives]: the layout zuko's `unpack`
            # gives with shapes (K,), (K,), (K - 1,), without splitting it.
            "shapes": [(3 * num_bins - 1,)],
        }
    flow = zuko.flows.MAF(
        features, context, transforms=num_transforms, hidden_features=hidden, **kwargs
    )
    _init_near_identity(flow)
    return flow


def _init_near_identity(flow: nn.Module) -> None:
    """Start every transform near the identity: tiny weights and zero bias in the last layer
    of each conditioner (zero parameters are the identity spline and the identity affine).

    On two moons (10,000 simulations) this lowers the converged validation loss of the NSF
    by about 0.04 nats against zuko's default initialisation.
    """
    for transform in flow.transform.transforms:
        hyper = getattr(transform, "hyper", None)
        last = hyper[-1] if isinstance(hyper, nn.Sequential) and len(hyper) else None
        weight, bias = getattr(last, "weight", None), getattr(last, "bias", None)
        if isinstance(weight, nn.Parameter) and isinstance(bias, nn.Parameter):
            nn.init.uniform_(weight, -1e-3, 1e-3)
            nn.init.zeros_(bias)


_Spline = PackedSpline  # the name that estimators pickled before the move


@dataclass(frozen=True)
class LikelihoodNetBuilder:
    """Picklable builder ``(batch_theta [N, D], batch_x [N, L]) -> ConditionalFlow``.

    Made by :func:`likelihood_nn`; its fields are that function's arguments.
    """

    model: FlowName = "maf"
    z_score_theta: ZScore = "independent"
    z_score_x: ZScore = "independent"
    hidden_features: int = 50
    num_transforms: int = 5
    num_bins: int = 10
    num_blocks: int = 2
    tail_bound: float = 5.0
    embedding_net: nn.Module | None = field(default=None, compare=False)

    def __call__(self, batch_theta: Tensor, batch_x: Tensor) -> ConditionalFlow:
        theta_norm, x_norm = standardizers(
            batch_theta, batch_x, self.z_score_theta, self.z_score_x
        )
        # A copy: the builder stays a template, so `retrain_from_scratch` starts afresh.
        embedding = copy.deepcopy(self.embedding_net) if self.embedding_net else nn.Identity()
        embedding = embedding.to(batch_theta.device)
        context = embedding_output_dim(embedding, theta_norm(batch_theta))
        flow = _build_zuko_flow(
            self.model,
            batch_x.shape[-1],
            context,
            self.hidden_features,
            self.num_transforms,
            self.num_bins,
            self.num_blocks,
            self.tail_bound,
        )
        return ConditionalFlow(flow, x_norm, theta_norm, embedding).to(
            device=batch_theta.device, dtype=batch_theta.dtype
        )


def likelihood_nn(
    model: FlowName = "maf",
    z_score_theta: ZScore = "independent",
    z_score_x: ZScore = "independent",
    hidden_features: int = 50,
    num_transforms: int = 5,
    num_bins: int = 10,
    embedding_net: nn.Module | None = None,
    num_blocks: int = 2,
    tail_bound: float = 5.0,
) -> LikelihoodNetBuilder:
    r"""A builder of a conditional flow q(x | θ) for NLE (the ``sbi`` factory).

    Args:
        model: ``maf`` (masked autoregressive flow, affine) or ``nsf`` (the same flow with
            rational-quadratic splines).
        z_score_theta: Standardisation of θ: ``independent``, ``structured`` or ``none``.
        z_score_x: Standardisation of x, same options.
        hidden_features: Width of the conditioner networks.
        num_transforms: Number of autoregressive transforms.
        num_bins: Number of spline bins (``nsf`` only).
        embedding_net: Embedding of θ (the condition), ``[B, D] -> [B, E]``.
        num_blocks: Hidden layers of each conditioner beyond the first (as ``sbi``'s MADE).
        tail_bound: The splines act on ``[-tail_bound, tail_bound]`` of z-scored x.

    Returns:
        A picklable builder ``(batch_theta [N, D], batch_x [N, L]) -> ConditionalFlow``.

    Raises:
        ValueError: For an unknown ``model`` or z-score option, or a non-positive size.

    Example:
        >>> build = likelihood_nn("nsf", hidden_features=32, num_transforms=2)
        >>> q = build(torch.randn(50, 2), torch.randn(50, 2))
        >>> q.log_prob(torch.zeros(2), torch.zeros(2)).shape
        torch.Size([])
    """
    check_choice("model", model, FLOW_NAMES)
    check_choice("z_score_theta", z_score_theta, ("none", "independent", "structured"))
    check_choice("z_score_x", z_score_x, ("none", "independent", "structured"))
    check_positive_int("hidden_features", hidden_features)
    check_positive_int("num_transforms", num_transforms)
    if check_positive_int("num_bins", num_bins) < 2:
        raise ValueError(f"`num_bins` must be at least 2, got {num_bins}.")
    check_positive_int("num_blocks", num_blocks, allow_zero=True)
    if not (isinstance(tail_bound, int | float) and math.isfinite(tail_bound) and tail_bound > 0):
        raise ValueError(f"`tail_bound` must be a positive number, got {tail_bound!r}.")
    if embedding_net is not None and not isinstance(embedding_net, nn.Module):
        raise TypeError(
            f"`embedding_net` must be an nn.Module, got {type(embedding_net).__name__}."
        )
    return LikelihoodNetBuilder(
        model,
        z_score_theta,
        z_score_x,
        hidden_features,
        num_transforms,
        num_bins,
        num_blocks,
        float(tail_bound),
        embedding_net,
    )
