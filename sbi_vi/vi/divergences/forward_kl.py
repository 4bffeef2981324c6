"""Forward KL: minimise KL(p ‖ q) with self-normalised importance weights from q."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sbi_vi.vi.divergences.base import Divergence, DivergenceOutput, LogDensity

__all__ = ["ForwardKL"]


class ForwardKL(Divergence):
    r"""Forward Kullback-Leibler divergence, mass-covering.

    .. math:: \nabla_\phi \mathrm{KL}(p \| q_\phi) \approx -\sum_i \bar w_i \nabla_\phi
        \log q_\phi(\theta_i), \quad \theta_i \sim q_\phi,\ \bar w_i \propto
        \tilde p(\theta_i) / q_\phi(\theta_i)

    The reported value estimates KL(p ‖ q) with the same weights.

    Args:
        weight_transform: Optional map applied to the normalised weights ``[particles,
            *batch]`` before renormalising, e.g. ``lambda w: w ** 0.5`` to temper them.

    Example:
        >>> from sbi_vi.vi.families import Gaussian
        >>> out = ForwardKL()(Gaussian(2), lambda t: -0.5 * t.square().sum(-1), 64)
        >>> out.value.shape
        torch.Size([])
    """

    name = "fKL"
    direction = "density"

    def __init__(self, *, weight_transform: Callable[[Tensor], Tensor] | None = None):
        if weight_transform is not None and not callable(weight_transform):
            raise TypeError(
                f"`weight_transform` must be callable or None, got {type(weight_transform)}."
            )
        self.weight_transform = weight_transform

    def __call__(
        self,
        family: nn.Module,
        log_p: LogDensity,
        n_particles: int,
        context: Tensor | None = None,
    ) -> DivergenceOutput:
        q = family(context)
        with torch.no_grad():
            theta = q.sample((n_particles,))
            lp = log_p(theta)
        return self.from_log_densities(lp, q.log_prob(theta))

    def from_log_densities(
        self, log_p: Tensor, log_q: Tensor, *, log_q_grad: Tensor | None = None
    ) -> DivergenceOutput:
        """The forward KL of particles drawn from q, ``[particles, *batch]``.

        See :meth:`Divergence.from_log_densities`: θ must be detached, ``log_q``
        differentiable in q's parameters. ``log_q_grad`` is not used.

        Example:
            >>> out = ForwardKL().from_log_densities(torch.zeros(4), torch.zeros(4))
            >>> out.value
            tensor(0.)
        """
        lp = log_p.detach()
        n_particles = lp.shape[0]
        valid = torch.isfinite(lp) & torch.isfinite(log_q.detach())
        log_w = torch.where(valid, lp - log_q.detach(), float("-inf"))
        weights = torch.softmax(log_w, dim=0)
        if self.weight_transform is not None:
            weights = self.weight_transform(weights)
            weights = weights / weights.sum(0, keepdim=True)
        weights = torch.nan_to_num(weights, nan=0.0)
        safe_log_q = torch.where(valid, log_q, torch.zeros_like(log_q))
        loss = -(weights * safe_log_q).sum(0).mean()
        log_z = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(n_particles)))
        value = (weights * torch.where(valid, log_w - log_z, torch.zeros_like(log_w))).sum(0)
        return DivergenceOutput(loss, value.detach(), log_w, int((~valid).sum()))
