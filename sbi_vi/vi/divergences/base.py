"""What every divergence shares: the output type, detached log q, and safe log p.

A divergence is a small object with its settings in ``__init__``; calling it with a
family, a target log density and a particle count returns a :class:`DivergenceOutput`.
All tensors have shape ``[particles, *batch]``: ``batch`` is empty for one observation, the
observations for amortised VI, the cells of a minibatch for a VAE. The surrogate ``loss``
averages over the batch; ``value`` keeps one number per batch element.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = [
    "Divergence",
    "DivergenceOutput",
    "LogDensity",
    "all_finite",
    "detached_log_prob",
    "invalid_mass_surrogate",
    "invalid_penalty",
    "masked_mean",
    "safe_log_p",
]

LogDensity = Callable[[Tensor], Tensor]
"""A target log density: θ ``[*S, *batch, D]`` → log p̃(θ) ``[*S, *batch]``."""

INVALID_PENALTY = 10.0
"""Nats that a particle where the target density is zero costs beyond the worst valid
particle of its batch element (see :func:`invalid_penalty`)."""


@dataclass(frozen=True)
class DivergenceOutput:
    """The result of one evaluation of a divergence.

    Attributes:
        loss: Scalar surrogate whose gradient is the divergence's gradient estimate.
        value: The reported objective per batch element, shape ``[*batch]`` (detached);
            lower is better (e.g. the negative ELBO for rKL).
        log_w: Log importance weights log p̃(θ) - log q(θ), shape ``[particles, *batch]``
            (detached); ``-inf`` where the target is not finite.
        num_invalid: Number of particles whose target log density was NaN or ±inf.
    """

    loss: Tensor
    value: Tensor
    log_w: Tensor
    num_invalid: int = 0


class Divergence(abc.ABC):
    """Base class: ``divergence(family, log_p, n_particles, context=None) -> DivergenceOutput``.

    Class attributes tell the engine how to arrange a flow: ``direction`` is the pass that
    should be cheap (``"sample"`` or ``"density"``); ``annealing_iters`` is how many
    iterations a fit from the prior tempers the target in by default
    (:mod:`sbi_vi.vi.tempering`): > 0 for a mode-seeking divergence.
    """

    #: Registry name (``rKL``, ``fKL``, ``IW``, ``alpha``).
    name: str = ""
    direction: str = "sample"
    annealing_iters: int = 0

    @abc.abstractmethod
    def __call__(
        self,
        family: nn.Module,
        log_p: LogDensity,
        n_particles: int,
        context: Tensor | None = None,
    ) -> DivergenceOutput:
        """Evaluate the divergence with ``n_particles`` draws of ``family(context)``."""

    def from_log_densities(
        self, log_p: Tensor, log_q: Tensor, *, log_q_grad: Tensor | None = None
    ) -> DivergenceOutput:
        """Evaluate the divergence on particles that were drawn elsewhere.

        For front ends that cannot hand over a family, e.g. a probabilistic program whose
        guide is run through effect handlers: they draw the particles themselves and pass
        their log densities. ``__call__`` computes the same quantities from a family and
        goes through the same code.

        Args:
            log_p: Target log density log p̃(θ) of each particle, ``[particles, *batch]``;
                NaN/±inf marks a particle where the target is zero (it gets weight 0).
            log_q: log q(θ) of the same particles, ``[particles, *batch]``. For rKL, IW
                and alpha the particles must be reparametrised draws (θ differentiable in
                q's parameters); for fKL, θ must be detached (``log_q`` differentiable
                in the parameters only).
            log_q_grad: log q(θ) with q's parameters detached, for stick-the-landing and
                DReG (``None``: use ``log_q``).

        Returns:
            The :class:`DivergenceOutput` (without the score-function term that pushes
            q's mass out of the region where the target is zero, which needs the family).
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot be evaluated from log densities alone."
        )

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k[0] != "_")
        return f"{type(self).__name__}({settings})"


def detached_log_prob(family: nn.Module, theta: Tensor, context: Tensor | None = None) -> Tensor:
    """log q(θ) with q's parameters detached: gradients reach θ, not the parameters.

    This is the log density of stick-the-landing and DReG; it re-runs the family with
    detached parameters (``torch.func.functional_call``) rather than copying the model.

    Raises:
        ValueError: If the family's tensors are not registered module parameters (user
            distributions), so they cannot be detached.
    """
    params = dict(family.named_parameters())
    listed = list(family.parameters())
    if len(listed) != len(params):
        raise ValueError(
            "stick_the_landing/dreg need log q with detached parameters, which this "
            "user-defined `q` cannot provide; use a built-in family or turn them off."
        )
    detached = {name: p.detach() for name, p in params.items()}
    q: Distribution = torch.func.functional_call(family, detached, (context,), strict=False)
    return q.log_prob(theta)


def safe_log_p(log_p: LogDensity, theta: Tensor, sample_ndim: int = 1) -> tuple[Tensor, Tensor]:
    """Evaluate the target so that invalid particles cannot poison gradients.

    Particles whose log density is NaN or ±inf are replaced (detached) by a valid particle
    of the same batch element and flagged, so ``torch.where(valid, ..., -inf)`` downstream
    gives zero weight and zero (not NaN) gradient to them.

    Args:
        log_p: Target log density.
        theta: Particles, shape ``[*S, *batch, D]``.
        sample_ndim: Number of leading sample dims ``len(S)``.

    Returns:
        ``log_p`` of shape ``[*S, *batch]`` (finite wherever a batch element has a valid
        particle) and the boolean ``valid`` mask of the same shape.
    """
    lp, valid = _safe_log_p(log_p, theta, sample_ndim)
    return lp, torch.isfinite(lp) if valid is None else valid


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite, read with as little work as possible.

    A one-element CPU tensor is read directly; otherwise the sum of a CPU tensor is
    checked first (finite sum: every entry finite; one kernel and no mask), with the
    element-wise test only when the sum is not finite (an entry is, or the sum overflowed).
    """
    if t.device.type == "cpu" and t.is_floating_point():
        if t.numel() == 1:
            return math.isfinite(t.item())
        if math.isfinite(torch.sum(t.detach()).item()):
            return True
    return bool(torch.isfinite(t).all())


def _safe_log_p(
    log_p: LogDensity, theta: Tensor, sample_ndim: int = 1
) -> tuple[Tensor, Tensor | None]:
    """:func:`safe_log_p` whose mask is ``None`` when every particle is valid."""
    lp = log_p(theta)
    if all_finite(lp):
        return lp, None
    valid = torch.isfinite(lp)
    if not bool(valid.any()):
        return lp, valid
    batch_shape = valid.shape[sample_ndim:]
    d = theta.shape[-1]
    flat_valid = valid.reshape(-1, *batch_shape)
    flat_theta = theta.detach().reshape(-1, *batch_shape, d)
    first = flat_valid.to(torch.uint8).argmax(0)  # a valid particle per batch element
    index = first.reshape(1, *batch_shape, 1).expand(1, *batch_shape, d)
    substitute = flat_theta.gather(0, index)[0]
    theta_safe = torch.where(valid.unsqueeze(-1), theta, substitute)
    lp = log_p(theta_safe)
    return lp, valid & torch.isfinite(lp)


def invalid_penalty(log_w: Tensor, valid: Tensor, sample_ndim: int = 1) -> Tensor:
    """Cost of a particle where the target is zero, per batch element ``[*batch]``.

    A zero density is worse than any positive one, so such a particle costs
    :data:`INVALID_PENALTY` nats more than the worst valid particle (largest -log w) of its
    batch element; it can never be cheaper to move q into the region.
    """
    dims = tuple(range(sample_ndim))
    neg = torch.where(valid, -log_w, torch.full_like(log_w, float("-inf")))
    worst = neg.detach().amax(dims) if sample_ndim else neg.detach()
    worst = torch.where(torch.isfinite(worst), worst.clamp(min=0.0), torch.zeros_like(worst))
    return worst + INVALID_PENALTY


def invalid_mass_surrogate(
    family: nn.Module,
    theta: Tensor,
    valid: Tensor,
    context: Tensor | None = None,
    penalty: Tensor | float = INVALID_PENALTY,
) -> Tensor:
    """Surrogate whose gradient pushes q's mass out of the region where the target is zero.

    Where log p̃ = -inf (inside the prior's support, e.g. a likelihood that vanishes on
    a half-plane), the reverse KL is infinite and the path-wise gradient is blind: the
    particles there carry no gradient, so q would drift into the region for free. This
    adds ``penalty · P_q(invalid)`` (penalty from :func:`invalid_penalty`, ``[*batch]``)
    to the objective, differentiated with the score
    function, ``penalty · E_q[(1_invalid - p̂) ∇ log q(θ)]`` (``p̂`` the invalid fraction as
    a baseline); log q is evaluated at detached θ with live parameters.

    Args:
        family: The family.
        theta: Particles ``[*S, *batch, D]``.
        valid: Boolean mask ``[*S, *batch]``.
        context: The context of the family.
        penalty: Nats per unit of invalid mass.

    Returns:
        A scalar (0 when every particle is valid).
    """
    invalid = (~valid).to(theta.dtype)
    if not bool(invalid.any()):
        return torch.zeros((), dtype=theta.dtype, device=theta.device)
    batch_ndim = 0 if context is None else context.ndim - 1  # family(context) batch dims
    sample_dims = tuple(range(valid.ndim - batch_ndim))
    log_q = family(context).log_prob(theta.detach())
    baseline = invalid.mean(sample_dims, keepdim=True)
    weight = (invalid - baseline) * torch.as_tensor(penalty, dtype=theta.dtype).detach()
    finite = torch.isfinite(log_q)
    terms = torch.where(finite, weight * log_q, torch.zeros_like(log_q))
    return terms.mean(sample_dims).mean()


def masked_mean(values: Tensor, valid: Tensor, dim: int = 0) -> Tensor:
    """Mean of ``values`` over ``dim`` counting only ``valid`` entries (NaN-free)."""
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    total = torch.where(valid, values, zero).sum(dim)
    return total / valid.sum(dim).clamp(min=1)
