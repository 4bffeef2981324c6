"""Forward KL: minimise KL(p ‖ q) with self-normalised importance weights from q."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from sbi_vi._checks import check_positive_int
from sbi_vi.vi.divergences.base import Divergence, DivergenceOutput, LogDensity

__all__ = ["ForwardKL"]


class ForwardKL(Divergence):
    r"""Forward Kullback-Leibler divergence, mass-covering.

    .. math:: \nabla_\phi \mathrm{KL}(p \| q_\phi) \approx -\sum_i \bar w_i \nabla_\phi
        \log q_\phi(\theta_i), \quad \theta_i \sim q_\phi,\ \bar w_i \propto
        \tilde p(\theta_i) / q_\phi(\theta_i)

    The reported value estimates KL(p ‖ q) with the same weights.

    The particles need no gradient, so they may come from a recent q rather than the
    current one: with ``refresh_every=R`` a fit draws θ (and remembers ``log r(θ)``, the
    density of the q that drew them) once every R calls of the same family and reuses them
    in between, weighting by ``p̃(θ) / r(θ)`` (importance sampling from the proposal r, so
    the gradient stays consistent) and re-evaluating ``log q`` of the current q. Drawing is
    the expensive pass of a flow built for fast densities (an autoregressive inversion);
    the target is re-evaluated every call, so a target that changes between calls
    (tempering, a new observation) is handled. Calls with a ``context`` always draw.

    Args:
        weight_transform: Optional map applied to the normalised weights ``[particles,
            *batch]`` before renormalising, e.g. ``lambda w: w ** 0.5`` to temper them.
        refresh_every: Calls of the same family (and ``n_particles``) per fresh draw.

    Example:
        >>> from sbi_vi.vi.families import Gaussian
        >>> out = ForwardKL()(Gaussian(2), lambda t: -0.5 * t.square().sum(-1), 64)
        >>> out.value.shape
        torch.Size([])
    """

    name = "fKL"
    direction = "density"

    def __init__(
        self,
        *,
        weight_transform: Callable[[Tensor], Tensor] | None = None,
        refresh_every: int = 1,
    ):
        if weight_transform is not None and not callable(weight_transform):
            raise TypeError(
                f"`weight_transform` must be callable or None, got {type(weight_transform)}."
            )
        self.weight_transform = weight_transform
        self.refresh_every = check_positive_int("refresh_every", refresh_every)
        self._draws: tuple | None = None  # (weakref to family, n, calls, theta, log r)

    def __call__(
        self,
        family: nn.Module,
        log_p: LogDensity,
        n_particles: int,
        context: Tensor | None = None,
    ) -> DivergenceOutput:
        q = family(context)
        cached = self._draws
        if (
            context is None
            and cached is not None
            and cached[0]() is family
            and cached[1] == n_particles
            and cached[2] < self.refresh_every
        ):
            self._draws = (*cached[:2], cached[2] + 1, *cached[3:])
            theta, log_r = cached[3], cached[4]
        else:
            with torch.no_grad():
                theta = q.sample((n_particles,))
            log_r = None
        with torch.no_grad():
            lp = log_p(theta)
        log_q = q.log_prob(theta)
        if log_r is None and context is None and self.refresh_every > 1:
            self._draws = (weakref.ref(family), n_particles, 1, theta, log_q.detach())
        return self._estimate(lp, log_q, log_r)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_draws"] = None  # draws are a cache (and a weak reference)
        return state

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
        return self._estimate(log_p, log_q, None)

    def _estimate(self, log_p: Tensor, log_q: Tensor, log_r: Tensor | None) -> DivergenceOutput:
        """Weights ``p̃/r`` of particles from the proposal r (``None``: r = q)."""
        lp = log_p.detach()
        n_particles = lp.shape[0]
        log_prop = log_q.detach() if log_r is None else log_r
        valid = torch.isfinite(lp) & torch.isfinite(log_q.detach()) & torch.isfinite(log_prop)
        log_w = torch.where(valid, lp - log_prop, float("-inf"))
        weights = torch.softmax(log_w, dim=0)
        if self.weight_transform is not None:
            weights = self.weight_transform(weights)
            weights = weights / weights.sum(0, keepdim=True)
        weights = torch.nan_to_num(weights, nan=0.0)
        safe_log_q = torch.where(valid, log_q, torch.zeros_like(log_q))
        loss = -(weights * safe_log_q).sum(0).mean()
        log_z = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(n_particles)))
        log_ratio = torch.where(valid, lp - log_q.detach() - log_z, torch.zeros_like(log_w))
        value = (weights * log_ratio).sum(0)
        return DivergenceOutput(loss, value.detach(), log_w, int((~valid).sum()))
