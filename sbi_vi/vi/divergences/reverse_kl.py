"""Reverse KL: minimise KL(q ‖ p), i.e. maximise the ELBO, with reparametrised gradients."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from sbi_vi.vi.divergences.base import (
    Divergence,
    DivergenceOutput,
    LogDensity,
    _safe_log_p,
    all_finite,
    detached_log_prob,
    invalid_mass_surrogate,
    invalid_penalty,
    masked_mean,
)
from sbi_vi.vi.families.base import rsample_and_log_prob

__all__ = ["ReverseKL"]


class ReverseKL(Divergence):
    r"""Reverse Kullback-Leibler divergence, the negative ELBO.

    .. math:: \mathcal{L}(\phi) = \mathbb{E}_{q_\phi}[\log q_\phi(\theta) - \log \tilde p(\theta)]

    Particles where the target is zero (log p̃ = -inf) are charged more than the worst valid
    particle (:func:`~sbi_vi.vi.divergences.base.invalid_penalty`), with a score-function
    gradient (:func:`~sbi_vi.vi.divergences.base.invalid_mass_surrogate`).

    Args:
        stick_the_landing: Drop the score term of the gradient by evaluating log q with
            detached parameters (Roeder et al., 2017): zero variance when q = p.

    Example:
        >>> from sbi_vi.vi.families import Gaussian
        >>> out = ReverseKL()(Gaussian(2), lambda t: -0.5 * t.square().sum(-1), 64)
        >>> out.log_w.shape
        torch.Size([64])
    """

    name = "rKL"
    annealing_iters = 200  # mode-seeking: temper the likelihood in (sbi_vi.vi.tempering)

    def __init__(self, *, stick_the_landing: bool = False):
        self.stick_the_landing = bool(stick_the_landing)

    @property
    def direction(self) -> str:
        return "density" if self.stick_the_landing else "sample"

    def __call__(
        self,
        family: nn.Module,
        log_p: LogDensity,
        n_particles: int,
        context: Tensor | None = None,
    ) -> DivergenceOutput:
        theta, log_q = rsample_and_log_prob(family(context), (n_particles,))
        lp, valid = _safe_log_p(log_p, theta)
        if self.stick_the_landing:
            log_q_grad = detached_log_prob(family, theta, context)
        else:
            log_q_grad = log_q
        out, penalty = _reverse_kl(lp, log_q, log_q_grad, valid)
        if penalty is None:  # every particle valid: no mass to push out
            return out
        assert valid is not None
        surrogate = invalid_mass_surrogate(family, theta, valid, context, penalty)
        return replace(out, loss=out.loss + surrogate)

    def from_log_densities(
        self, log_p: Tensor, log_q: Tensor, *, log_q_grad: Tensor | None = None
    ) -> DivergenceOutput:
        """The negative ELBO of reparametrised particles ``[particles, *batch]``.

        See :meth:`Divergence.from_log_densities`. With ``stick_the_landing`` pass
        ``log_q_grad`` (log q with detached parameters).

        Example:
            >>> out = ReverseKL().from_log_densities(torch.zeros(4), torch.ones(4))
            >>> out.loss, out.value
            (tensor(1.), tensor(1.))
        """
        valid = None if all_finite(log_p) else torch.isfinite(log_p)
        out, _ = _reverse_kl(log_p, log_q, log_q if log_q_grad is None else log_q_grad, valid)
        return out


def _reverse_kl(
    lp: Tensor, log_q: Tensor, log_q_grad: Tensor, valid: Tensor | None
) -> tuple[DivergenceOutput, Tensor | None]:
    """The rKL output from ``[particles, *batch]`` log densities, and the invalid penalty
    (``None`` when every particle is valid, ``valid is None``: a few tensor ops)."""
    if valid is None:
        diff = log_q_grad - lp
        neg_w = diff.detach() if log_q_grad is log_q else (log_q - lp).detach()
        if diff.numel() == 1:  # one particle, one batch element: the means are views
            return DivergenceOutput(diff.reshape(()), neg_w.reshape(neg_w.shape[1:]), -neg_w), None
        return DivergenceOutput(diff.mean(), neg_w.mean(0), -neg_w), None
    log_w = torch.where(valid, lp - log_q, float("-inf")).detach()
    penalty = invalid_penalty(log_w, valid)
    loss = masked_mean(log_q_grad - lp, valid).mean()
    fraction = (~valid).to(lp.dtype).mean(0)
    value = (1 - fraction) * masked_mean(-log_w, valid) + fraction * penalty
    return DivergenceOutput(loss, value, log_w, int((~valid).sum())), penalty
