r"""Expected coverage of the highest-posterior-density regions of q (Hermans et al. 2022).

The HPD mass needed to reach the true :math:`\theta^*_n` is estimated by the share of
samples of q with a higher density,

.. math::

    m_n = \frac1S \#\{s : q(\theta_{n,s} \mid x_n) \ge q(\theta^*_n \mid x_n)\},

and the coverage at level :math:`c` is the fraction of :math:`n` with :math:`m_n \le c`.
A calibrated q gives coverage ≈ c; coverage below c means over-confident regions (the
dangerous failure), above c conservative ones. It is SBC (:mod:`sbi_vi.diagnostics.sbc`)
with the statistic :math:`f = \log q`, read as a curve. The posterior is given as for
:func:`~sbi_vi.diagnostics.sbc.run_sbc`, with a log density.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_vi._checks import as_tensor, check_in_interval, check_positive_int
from sbi_vi.diagnostics.sbc import _check_pairs, _posterior_draws, check_sbc

__all__ = ["CoverageResult", "run_coverage"]


@dataclass(frozen=True, eq=False)
class CoverageResult:
    """Result of :func:`run_coverage`: empirical against nominal coverage of HPD regions.

    Attributes:
        levels: Nominal credibility levels c, float64 ``[M]``.
        coverage: Fraction of true θ inside the level-c HPD region of q, float64 ``[M]``.
        hpd_levels: Per simulation, the credibility m_n of the smallest HPD region that
            contains the true θ, float64 ``[N]`` in [0, 1] (uniform if q is calibrated).
        num_posterior_samples: Samples S per observation.
        ks_pvalue: p-value of the KS test that the density ranks behind ``hpd_levels`` are
            uniform (:func:`check_sbc` with the statistic log q).
        chi2_pvalue: p-value of the chi-square test of the same ranks.
    """

    levels: Tensor
    coverage: Tensor
    hpd_levels: Tensor
    num_posterior_samples: int
    ks_pvalue: float
    chi2_pvalue: float

    @property
    def num_simulations(self) -> int:
        """The number of simulations N."""
        return int(self.hpd_levels.shape[0])

    @property
    def max_deficit(self) -> float:
        """Largest shortfall ``max_c (c − coverage(c))``: > 0 means over-confident somewhere."""
        return float((self.levels - self.coverage).max())

    def band(self, alpha: float = 0.05) -> tuple[Tensor, Tensor]:
        """Central ``1 − alpha`` range of the coverage of a calibrated q, per level.

        Under calibration N·coverage(c) is Binomial(N, P(m ≤ c)) with
        ``P(m ≤ c) = (⌊cS⌋ + 1) / (S + 1)``; the band holds each level's coverage with
        probability ``1 − alpha`` (pointwise, not simultaneously).

        Args:
            alpha: Significance level, in (0, 1).

        Returns:
            ``(low, high)``, each float64 ``[M]``.
        """
        from scipy import stats

        alpha = check_in_interval("alpha", alpha, 0.0, 1.0)
        n, s = self.num_simulations, self.num_posterior_samples
        p = _coverage_probability(self.levels.numpy(), s)
        low, high = stats.binom.interval(1.0 - alpha, n, p)
        return torch.from_numpy(low / n), torch.from_numpy(high / n)

    def passed(self, alpha: float = 0.05) -> bool:
        """Whether neither test rejects uniform density ranks (Bonferroni over the two)."""
        alpha = check_in_interval("alpha", alpha, 0.0, 1.0)
        return min(self.ks_pvalue, self.chi2_pvalue) > alpha / 2


def _coverage_probability(levels: np.ndarray, num_posterior_samples: int) -> np.ndarray:
    """P(m ≤ c) for m uniform on {0, 1/S, ..., 1}."""
    s = num_posterior_samples
    return np.minimum((np.floor(levels * s + 1e-9) + 1) / (s + 1), 1.0)


def run_coverage(
    thetas: Tensor,
    xs: Tensor,
    posterior: Any,
    num_posterior_samples: int = 1000,
    *,
    levels: Tensor | Sequence[float] | None = None,
    seed: int | None = None,
    show_progress_bar: bool = True,
) -> CoverageResult:
    r"""Expected coverage of the HPD regions of q (Hermans et al. 2022).

    For each pair, the HPD credibility :math:`m_n` needed to contain the true θ is the share
    of S samples of q whose density is at least q(θ* | x_n); the coverage at level c is
    the fraction of :math:`m_n \le c`. Needs the posterior's log density.

    Args:
        thetas: True parameters θ* drawn from the prior, shape ``[N, D]``.
        xs: Simulations ``x_n ~ p(x | thetas[n])``, shape ``[N, L]``.
        posterior: An amortised posterior with ``sample(sample_shape, x=x)`` and
            ``log_prob(theta, x=x)``, or a callable ``x [L] ->`` a distribution with
            ``sample(sample_shape)`` and ``log_prob(theta)``.
        num_posterior_samples: Samples S per observation.
        levels: Nominal credibility levels in [0, 1], shape ``[M]``; default 0, 0.01, ..., 1.
        seed: Seed of torch's CPU generator while sampling; the global generator is left as
            it was. ``None`` draws from the global generator.
        show_progress_bar: Show a tqdm bar over the observations.

    Returns:
        A :class:`CoverageResult`: ``levels``, ``coverage``, the per-simulation
        ``hpd_levels`` and uniformity tests of the density ranks.

    Raises:
        ValueError: If the inputs are malformed (see :func:`run_sbc`), ``levels`` lie
            outside [0, 1], or ``log_prob`` returns NaN.
        TypeError: If the posterior gives no log densities.

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> g = torch.Generator().manual_seed(0)
        >>> thetas = torch.randn(200, 2, generator=g)  # θ ~ N(0, I)
        >>> xs = thetas + 0.5 * torch.randn(200, 2, generator=g)  # x ~ N(θ, 0.25 I)
        >>> def too_narrow(x):  # the true posterior N(x / 1.25, 0.2 I), 3 times too narrow
        ...     return Independent(Normal(x / 1.25, 0.2**0.5 / 3), 1)
        >>> result = run_coverage(thetas, xs, too_narrow, 200, levels=[0.5, 0.9],
        ...                       seed=0, show_progress_bar=False)
        >>> bool((result.coverage < result.levels - 0.3).all()), result.passed()
        (True, False)
    """
    thetas, xs = _check_pairs(thetas, xs)
    num_posterior_samples = check_positive_int("num_posterior_samples", num_posterior_samples)
    if seed is not None:
        seed = check_positive_int("seed", seed, allow_zero=True)
    if levels is None:
        level_values = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    else:
        level_values = as_tensor("levels", levels, dtype=torch.float64).reshape(-1)
        if level_values.numel() == 0 or not bool(
            ((level_values >= 0) & (level_values <= 1)).all()
        ):
            raise ValueError(f"`levels` must be values in [0, 1], got {level_values.tolist()}.")

    ranks = torch.zeros(thetas.shape[0], dtype=torch.int64)
    draws = _posterior_draws(
        posterior,
        thetas,
        xs,
        num_posterior_samples,
        need_log_prob=True,
        seed=seed,
        show_progress_bar=show_progress_bar,
        desc="Coverage",
    )
    with contextlib.closing(draws):  # as in run_sbc
        for n, samples, log_prob in draws:
            if log_prob is None:  # _posterior_draws raised already; keeps type checkers calm
                raise TypeError("Coverage needs the posterior's log density.")
            truth = thetas[n : n + 1].to(samples.dtype)
            with torch.no_grad():
                log_q = torch.as_tensor(log_prob(torch.cat([truth, samples])))
            log_q = log_q.detach().reshape(-1)
            if log_q.shape[0] != num_posterior_samples + 1 or bool(torch.isnan(log_q).any()):
                raise ValueError(
                    f"`log_prob` must give one number, not NaN, per θ: got shape "
                    f"{list(log_q.shape)} with {int(torch.isnan(log_q).sum())} NaN for xs[{n}]."
                )
            ranks[n] = int((log_q[1:] < log_q[0]).sum())

    hpd = (num_posterior_samples - ranks).to(torch.float64) / num_posterior_samples
    coverage = (hpd[:, None] <= level_values[None, :] + 1e-12).to(torch.float64).mean(dim=0)
    ks, chi2 = check_sbc(ranks, num_posterior_samples)
    return CoverageResult(
        levels=level_values,
        coverage=coverage,
        hpd_levels=hpd,
        num_posterior_samples=num_posterior_samples,
        ks_pvalue=float(ks[0]),
        chi2_pvalue=float(chi2[0]),
    )
