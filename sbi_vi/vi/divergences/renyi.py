"""Importance-weighted and Rényi (alpha) bounds, with stick-the-landing and DReG gradients.

Both are the variational Rényi bound (Li & Turner, 2016) of ``K`` particles,

.. math:: \\mathcal{L}_\\alpha = \\frac{1}{1-\\alpha} \\log \\frac1K \\sum_k w_k^{1-\\alpha},

with α = 0 the importance-weighted bound (IWAE, Burda et al., 2016). The doubly
reparametrised gradient (Tucker et al., 2019) weights the path derivative of log w_k by
α·ŵ_k + (1-α)·ŵ_k², ŵ the normalised ``w^{1-α}``; it reduces to IWAE-DReG at α = 0.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from sbi_vi._checks import check_positive_int
from sbi_vi.vi.divergences.base import (
    Divergence,
    DivergenceOutput,
    LogDensity,
    detached_log_prob,
    invalid_mass_surrogate,
    invalid_penalty,
    safe_log_p,
)
from sbi_vi.vi.families.base import rsample_and_log_prob

__all__ = ["ImportanceWeighted", "RenyiAlpha"]


def _renyi(
    family: nn.Module,
    log_p: LogDensity,
    shape: tuple[int, int],
    context: Tensor | None,
    alpha: float,
    *,
    stick_the_landing: bool,
    dreg: bool,
) -> DivergenceOutput:
    """The Rényi bound over dim 0 of ``shape`` = (K, n); loss averages the n bounds."""
    theta, log_q = rsample_and_log_prob(family(context), shape)
    lp, valid = safe_log_p(log_p, theta, sample_ndim=2)
    if stick_the_landing or dreg:
        log_q_grad = detached_log_prob(family, theta, context)
    else:
        log_q_grad = log_q
    out, penalty = _renyi_bound(lp, log_q, log_q_grad, valid, alpha, dreg=dreg)
    surrogate = invalid_mass_surrogate(family, theta, valid, context, penalty)
    return replace(out, loss=out.loss + surrogate)


def _renyi_bound(
    lp: Tensor, log_q: Tensor, log_q_grad: Tensor, valid: Tensor, alpha: float, *, dreg: bool
) -> tuple[DivergenceOutput, Tensor]:
    """The Rényi bound from ``[K, n, *batch]`` log densities, and the invalid penalty."""
    neg_inf = torch.tensor(float("-inf"), dtype=lp.dtype, device=lp.device)
    log_w_grad = torch.where(valid, lp - log_q_grad, neg_inf)
    log_w = torch.where(valid, lp - log_q, neg_inf).detach()
    scaled = (1.0 - alpha) * log_w  # [K, n, *batch]
    bound = (torch.logsumexp(scaled, 0) - math.log(lp.shape[0])) / (1.0 - alpha)
    norm_w = torch.softmax(scaled, 0)
    norm_w = torch.nan_to_num(norm_w, nan=0.0)
    coeff = alpha * norm_w + (1.0 - alpha) * norm_w.square() if dreg else norm_w
    safe = torch.where(valid, log_w_grad, torch.zeros_like(log_w_grad))
    # gradient of the bound = Σ coeff · ∇ log w  (coefficients detached)
    loss = -(coeff.detach() * safe).sum(0).mean()
    penalty = invalid_penalty(log_w, valid, sample_ndim=2)
    fraction = (~valid).to(lp.dtype).mean((0, 1))
    finite_bound = torch.where(torch.isfinite(bound), -bound, penalty.unsqueeze(0))
    value = (1 - fraction) * finite_bound.mean(0) + fraction * penalty
    k, n = lp.shape[:2]
    flat = log_w.reshape(k * n, *log_w.shape[2:])
    return DivergenceOutput(loss, value.detach(), flat, int((~valid).sum())), penalty


def _bound_from_log_densities(
    log_p: Tensor, log_q: Tensor, log_q_grad: Tensor | None, k: int, alpha: float, dreg: bool
) -> DivergenceOutput:
    """``[K·n, *batch]`` particles (K-major) -> the Rényi bound of n groups of K."""
    if log_p.shape[0] % k:
        raise ValueError(
            f"`log_p` must hold a multiple of {k} particles (groups of K), got {log_p.shape[0]}."
        )
    shape = (k, log_p.shape[0] // k, *log_p.shape[1:])
    lp, lq = log_p.reshape(shape), log_q.reshape(shape)
    lq_grad = lq if log_q_grad is None else log_q_grad.reshape(shape)
    out, _ = _renyi_bound(lp, lq, lq_grad, torch.isfinite(lp), alpha, dreg=dreg)
    return out


class ImportanceWeighted(Divergence):
    """The importance-weighted ELBO with ``K`` particles per bound (``vi_method='IW'``).

    ``n_particles`` bounds of ``K`` particles each are averaged, so one step draws
    ``n_particles × K`` particles.

    Args:
        K: Particles per importance-weighted bound.
        dreg: Use the doubly reparametrised gradient (recommended for large K).
        stick_the_landing: Path-derivative gradient (biased for K > 1; prefer ``dreg``).

    Example:
        >>> from sbi_vi.vi.families import Gaussian
        >>> out = ImportanceWeighted(K=4)(Gaussian(2), lambda t: -t.square().sum(-1), 16)
        >>> out.log_w.shape
        torch.Size([64])
    """

    name = "IW"

    def __init__(self, *, K: int = 8, dreg: bool = False, stick_the_landing: bool = False):
        self.K = check_positive_int("K", K)
        self.dreg = bool(dreg)
        self.stick_the_landing = bool(stick_the_landing)

    @property
    def direction(self) -> str:
        return "density" if (self.dreg or self.stick_the_landing) else "sample"

    def __call__(
        self,
        family: nn.Module,
        log_p: LogDensity,
        n_particles: int,
        context: Tensor | None = None,
    ) -> DivergenceOutput:
        return _renyi(
            family,
            log_p,
            (self.K, n_particles),
            context,
            0.0,
            stick_the_landing=self.stick_the_landing,
            dreg=self.dreg,
        )

    def from_log_densities(
        self, log_p: Tensor, log_q: Tensor, *, log_q_grad: Tensor | None = None
    ) -> DivergenceOutput:
        """The bound of particles ``[K·n, *batch]``: n groups of ``K``, K-major.

        Particle ``k·n + i`` is the k-th member of group i (``reshape(K, n, *batch)``).
        See :meth:`Divergence.from_log_densities`; pass ``log_q_grad`` for DReG and
        stick-the-landing.

        Example:
            >>> out = ImportanceWeighted(K=2).from_log_densities(torch.zeros(6), torch.zeros(6))
            >>> out.value
            tensor(0.)
        """
        return _bound_from_log_densities(log_p, log_q, log_q_grad, self.K, 0.0, self.dreg)


class RenyiAlpha(Divergence):
    """The variational Rényi bound of order ``alpha`` over all particles (``vi_method='alpha'``).

    α → 1 recovers the ELBO, α = 0 the importance-weighted bound, α < 0 is more
    mass-covering. ``alpha = 1`` itself is excluded (use rKL).

    Args:
        alpha: Order of the divergence, ``alpha != 1``.
        stick_the_landing: Path-derivative gradient.
        dreg: Doubly reparametrised gradient.

    Example:
        >>> from sbi_vi.vi.families import Gaussian
        >>> out = RenyiAlpha(alpha=0.5)(Gaussian(2), lambda t: -t.square().sum(-1), 32)
        >>> out.log_w.shape
        torch.Size([32])
    """

    name = "alpha"

    def __init__(self, *, alpha: float = 0.5, stick_the_landing: bool = False, dreg: bool = False):
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not math.isfinite(alpha)
        ):
            raise TypeError(f"`alpha` must be a finite number, got {alpha!r}.")
        if alpha == 1.0:
            raise ValueError("`alpha` must differ from 1 (alpha = 1 is the ELBO: use 'rKL').")
        self.alpha = float(alpha)
        self.stick_the_landing = bool(stick_the_landing)
        self.dreg = bool(dreg)

    @property
    def direction(self) -> str:
        return "density" if (self.dreg or self.stick_the_landing) else "sample"

    def __call__(
        self,
        family: nn.Module,
        log_p: LogDensity,
        n_particles: int,
        context: Tensor | None = None,
    ) -> DivergenceOutput:
        return _renyi(
            family,
            log_p,
            (n_particles, 1),
            context,
            self.alpha,
            stick_the_landing=self.stick_the_landing,
            dreg=self.dreg,
        )

    def from_log_densities(
        self, log_p: Tensor, log_q: Tensor, *, log_q_grad: Tensor | None = None
    ) -> DivergenceOutput:
        """The bound over all particles ``[particles, *batch]``.

        See :meth:`Divergence.from_log_densities`; pass ``log_q_grad`` for DReG and
        stick-the-landing.
        """
        n = log_p.shape[0]
        return _bound_from_log_densities(log_p, log_q, log_q_grad, n, self.alpha, self.dreg)
