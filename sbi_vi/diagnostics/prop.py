"""The ``prop`` quality metric of sbi's ``VIPosterior.evaluate``: is q proportional to p̃?

If q is exact, ``q(θ) ∝ p̃(θ)`` — the target density is a constant multiple of q, the
constant being the evidence. Plotting ``p̃(θ_s)`` against ``q(θ_s)`` over particles then
gives points on a line through the origin. The metric fits that line by least squares and
reports its coefficient of determination

.. math::

    R^2 = 1 - \\frac{\\sum_s (p̃_s - \\hat c\\, q_s)^2}{\\sum_s (p̃_s - \\bar{p̃})^2},
    \\qquad \\hat c = \\frac{\\sum_s q_s p̃_s}{\\sum_s q_s^2},

with ``q_s = q(θ_s)`` and ``p̃_s = p̃(θ_s)`` on the density (not log) scale. R² = 1 means
exact proportionality; sbi reads R² > 0.5 as good and R² < 0.5 as bad. Being computed on
the density scale, the metric is dominated by the high-density region: it separates
"good" from "ok" well but is less sensitive to q missing low-density regions (mode
collapse), where the PSIS k-hat (:func:`sbi_vi.diagnostics.psis`) is the better check.

This reproduces ``proportional_to_joint_diagnostics`` of sbi (``sbi/samplers/vi/``,
registered as quality metric ``"prop"``; ``"prop_prior"`` is the same with particles from
the prior). Both R² terms scale with the square of p̃'s scale and the slope absorbs q's, so
R² is unchanged by constant shifts of ``log_p`` and ``log_q``; we use that to compute it
without overflow for any normaliser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["GOOD_PROP", "PropResult", "prop_metric"]

GOOD_PROP = 0.5
"""``prop`` above this counts as good (sbi's reading); the best value is 1."""


@dataclass(frozen=True, eq=False)
class PropResult:
    """Result of :func:`prop_metric`.

    Attributes:
        value: The R² of the proportional fit, ≤ 1 (1 is best); a float for one
            observation, a tensor of shape ``[*B]`` for a batch.
        interpretation: One line reading the value (``good`` above 0.5, else ``bad``).
        n_particles: Number of particles the metric was computed from.
    """

    value: float | Tensor
    interpretation: str
    n_particles: int

    @property
    def good(self) -> bool | Tensor:
        """Whether ``value > 0.5`` (bool, or bool tensor of shape ``[*B]``)."""
        if isinstance(self.value, Tensor):
            return self.value > GOOD_PROP
        return bool(self.value > GOOD_PROP)


def _as_log_density(name: str, value: Tensor | np.ndarray) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a tensor or numpy array, got {type(value).__name__}.")
    value = value.detach().to(torch.float64)
    if value.ndim == 0:
        raise ValueError(f"`{name}` must have shape [particles, *batch], got a scalar.")
    if torch.isnan(value).any():
        raise ValueError(f"`{name}` must not contain NaN, got {int(torch.isnan(value).sum())}.")
    if torch.isposinf(value).any():
        raise ValueError(
            f"`{name}` must not contain +inf, got {int(torch.isposinf(value).sum())}."
        )
    if (value == -math.inf).all(dim=0).any():
        raise ValueError(
            f"`{name}` is -inf for every particle (in at least one batch element); "
            "the metric is undefined there."
        )
    return value


def prop_metric(log_p: Tensor | np.ndarray, log_q: Tensor | np.ndarray) -> PropResult:
    """R² of a proportional fit of the target density to q over particles (sbi's ``prop``).

    Args:
        log_p: Unnormalised target log density ``log p̃(θ_s)`` (e.g. the potential),
            shape ``[S, *B]``. ``-inf`` (zero density) is allowed.
        log_q: Variational log density ``log q(θ_s)`` at the same particles, shape
            ``[S, *B]``. Particles usually come from q (sbi's ``"prop"``) or from the prior
            (sbi's ``"prop_prior"``).

    Returns:
        A :class:`PropResult`: the R² (1 is exact proportionality, > 0.5 good) and a line
        interpreting it.

    Raises:
        ValueError: If the shapes differ, there are fewer than 2 particles, or an input holds
            NaN or ``+inf`` or is ``-inf`` at every particle.
        TypeError: If an input is not a tensor or array.

    Example:
        >>> import torch
        >>> theta = torch.randn(1000, generator=torch.Generator().manual_seed(0))
        >>> log_q = torch.distributions.Normal(0.0, 1.0).log_prob(theta)
        >>> prop_metric(log_q + 3.0, log_q).interpretation  # p̃ = e³·q: exact
        'good: prop = 1.000 > 0.5 (best is 1.0)'
    """
    log_p = _as_log_density("log_p", log_p)
    log_q = _as_log_density("log_q", log_q)
    if log_p.shape != log_q.shape:
        raise ValueError(
            f"`log_p` and `log_q` must have the same shape [particles, *batch], got "
            f"{tuple(log_p.shape)} and {tuple(log_q.shape)}."
        )
    n_particles = log_p.shape[0]
    if n_particles < 2:
        raise ValueError(f"`log_p` must hold at least 2 particles, got {n_particles}.")

    # Densities rescaled so their largest value is 1: R² is invariant to both scales.
    x = torch.exp(log_q - log_q.amax(dim=0))
    y = torch.exp(log_p - log_p.amax(dim=0))
    slope = (x * y).sum(dim=0) / (x * x).sum(dim=0)
    ss_res = ((y - slope * x) ** 2).sum(dim=0)
    ss_tot = ((y - y.mean(dim=0)) ** 2).sum(dim=0)
    # Constant p̃: R² is 1 if q is constant too (exact fit), else -inf.
    exact = ss_res <= 1e-12 * (y * y).sum(dim=0)
    r2 = torch.where(
        ss_tot > 0,
        1.0 - ss_res / ss_tot.clamp_min(torch.finfo(torch.float64).tiny),
        torch.where(exact, 1.0, -math.inf),
    )

    if r2.ndim == 0:
        value = float(r2)
        verdict = "good" if value > GOOD_PROP else "bad"
        sign = ">" if value > GOOD_PROP else "<="
        line = f"{verdict}: prop = {value:.3f} {sign} 0.5 (best is 1.0)"
        return PropResult(value=value, interpretation=line, n_particles=n_particles)
    n_good = int((r2 > GOOD_PROP).sum())
    line = f"good for {n_good} of {r2.numel()} batch elements (prop > 0.5; best is 1.0)"
    return PropResult(value=r2, interpretation=line, n_particles=n_particles)
