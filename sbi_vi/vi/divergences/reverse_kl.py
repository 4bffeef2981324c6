"""Reverse KL: minimise KL(q ‖ p), i.e. maximise the ELBO, with reparametrised gradients."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sbi_vi.vi.divergences.base import (
    Divergence,
    DivergenceOutput,
    LogDensity,
    detached_log_prob,
    invalid_mass_surrogate,
    invalid_penalty,
    masked_mean,
    safe_log_p,
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
        lp, valid = safe_log_p(log_p, theta)
        if self.stick_the_landing:
            log_q_grad = detached_log_prob(family, theta, context)
        else:
            log_q_grad = log_q
        log_w = torch.where(valid, lp - log_q, float("-inf")).detach()
        penalty = invalid_penalty(log_w, valid)
        loss = masked_mean(log_q_grad - lp, valid).mean()
        loss = loss + invalid_mass_surrogate(family, theta, valid, context, penalty)
        fraction = (~valid).to(lp.dtype).mean(0)
        value = (1 - fraction) * masked_mean(-log_w, valid) + fraction * penalty
        return DivergenceOutput(loss, value, log_w, int((~valid).sum()))
