r"""Simulation-based calibration (SBC) and expected coverage of posterior approximations.

Draw :math:`\theta^*_n \sim p(\theta)` and :math:`x_n \sim p(x \mid \theta^*_n)` (e.g. with
:func:`sbi_vi.simulate.simulate`), then :math:`S` samples :math:`\theta_{n,s} \sim
q(\theta \mid x_n)`. If q is the true posterior, :math:`\theta^*_n` is one more draw from
it, so for any statistic :math:`f` the *rank*

.. math::

    r_n = \#\{s : f(\theta_{n,s}, x_n) < f(\theta^*_n, x_n)\} \in \{0, \dots, S\}

is uniform on :math:`\{0, \dots, S\}` [1]. Departures show how q is wrong: ranks piled at
both ends mean q is too narrow (over-confident), a hump in the middle means too wide, a
slope means q is shifted. :func:`run_sbc` computes the ranks of the marginals (or of any
statistics) and tests them with :func:`check_sbc`.

*Expected coverage* [2] asks how often :math:`\theta^*_n` falls inside the highest
posterior density (HPD) region of q of credibility :math:`c`. The HPD mass needed to
reach :math:`\theta^*_n` is estimated by the share of samples with a higher density,

.. math::

    m_n = \frac1S \#\{s : q(\theta_{n,s} \mid x_n) \ge q(\theta^*_n \mid x_n)\},

and the coverage at level :math:`c` is the fraction of :math:`n` with :math:`m_n \le c`.
A calibrated q gives coverage ≈ c; coverage below c means over-confident regions (the
dangerous failure), above c conservative ones. It is SBC with the statistic
:math:`f = \log q`, read as a curve (:func:`~sbi_vi.diagnostics.coverage.run_coverage`).

The posterior is given in one of two ways:

- **amortised**: an object with ``sample(sample_shape, x=x)`` (and ``log_prob(theta,
  x=x)`` for coverage), such as an amortised ``VIPosterior``;
- **one fit per observation**: a callable ``posterior(x)`` returning, for one
  ``x`` of shape ``[L]``, either an object with ``sample(sample_shape)`` (and
  ``log_prob(theta)``) — a torch ``Distribution``, or a ``VIPosterior`` trained on that
  ``x`` — or directly a tensor of ``S`` samples ``[S, D]``. A ``VIPosterior`` trained for
  one observation serves only that one; for SBC wrap its training in such a callable::

      def posterior_fn(x):
          return VIPosterior(potential, prior, q="gaussian").set_default_x(x).train()

References:
    [1] Talts, Betancourt, Simpson, Vehtari, Gelman. *Validating Bayesian inference
    algorithms with simulation-based calibration*. 2018. https://arxiv.org/abs/1804.06788

    [2] Hermans, Delaunoy, Rozet, Wehenkel, Begy, Louppe. *A trust crisis in
    simulation-based inference? Your posterior approximations can be unfaithful*. TMLR 2022.
    https://arxiv.org/abs/2110.06581
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_vi._checks import as_tensor, check_in_interval, check_positive_int, seeded

__all__ = ["SBCResult", "check_sbc", "default_num_bins", "run_sbc"]

ReduceFn = Callable[[Tensor, Tensor], Tensor]
"""A statistic ``f(theta [S, D], x [L]) -> [S]`` whose ranks SBC tests."""


@dataclass(frozen=True, eq=False)
class SBCResult:
    """Result of :func:`run_sbc`: ranks of K statistics for N simulations and their tests.

    Attributes:
        ranks: Rank of each true θ among its posterior samples, per statistic, int64 of shape
            ``[N, K]``, values in ``0..num_posterior_samples``.
        num_posterior_samples: Samples S per observation.
        ks_pvalues: p-value of the Kolmogorov–Smirnov test of uniform ranks, float64
            ``[K]`` (see :func:`check_sbc`).
        chi2_pvalues: p-value of the chi-square test of the binned ranks, float64 ``[K]``.
        dap_samples: One posterior sample per observation, ``[N, D]``: the data-averaged
            posterior, which should match the prior (compare with
            :func:`sbi_vi.diagnostics.c2st` against prior samples).
        names: A name per statistic (``theta_1`` ... for marginals), length K.
    """

    ranks: Tensor
    num_posterior_samples: int
    ks_pvalues: Tensor
    chi2_pvalues: Tensor
    dap_samples: Tensor
    names: tuple[str, ...]

    @property
    def num_simulations(self) -> int:
        """The number of simulations N."""
        return int(self.ranks.shape[0])

    def rejected(self, alpha: float = 0.05) -> Tensor:
        """Which statistics fail calibration at family-wise level ``alpha``.

        Each of the K statistics has two tests (KS and chi-square); a Bonferroni correction
        over the 2K tests rejects statistic k when ``min(ks_k, chi2_k) <= alpha / (2K)``.
        The chance that a calibrated posterior fails any statistic is then at most
        ``alpha``.

        Args:
            alpha: Family-wise significance level, in (0, 1).

        Returns:
            Bool tensor of shape ``[K]``.
        """
        alpha = check_in_interval("alpha", alpha, 0.0, 1.0)
        threshold = alpha / (2 * len(self.names))
        return torch.minimum(self.ks_pvalues, self.chi2_pvalues) <= threshold

    def passed(self, alpha: float = 0.05) -> bool:
        """Whether no statistic is rejected at family-wise level ``alpha`` (see :meth:`rejected`).

        Passing does not prove calibration (a posterior equal to the prior passes too); it
        says that N simulations found no evidence against it.
        """
        return not bool(self.rejected(alpha).any())


# ------------------------------------------------------------------------------ inputs


def _check_pairs(thetas: Any, xs: Any) -> tuple[Tensor, Tensor]:
    thetas = as_tensor("thetas", thetas).detach()
    xs = as_tensor("xs", xs).detach()
    if thetas.ndim == 1:
        thetas = thetas[:, None]
    if xs.ndim == 1:
        xs = xs[:, None]
    if thetas.ndim != 2 or thetas.shape[0] == 0:
        raise ValueError(f"`thetas` must have shape [N, D] with N >= 1, got {list(thetas.shape)}.")
    if xs.ndim != 2 or xs.shape[0] != thetas.shape[0]:
        raise ValueError(
            f"`xs` must have shape [N, L] with N = {thetas.shape[0]} like `thetas`, got "
            f"{list(xs.shape)}."
        )
    for name, value in (("thetas", thetas), ("xs", xs)):
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).any(dim=1).sum())
            raise ValueError(f"`{name}` must be finite, but {bad} rows hold NaN or inf.")
    return thetas, xs


def _check_samples(samples: Any, num_samples: int, dim: int, n: int) -> Tensor:
    samples = torch.as_tensor(samples).detach()
    if samples.ndim == 1 and dim == 1:
        samples = samples[:, None]
    if samples.shape != (num_samples, dim):
        raise ValueError(
            f"The posterior must give samples of shape [num_posterior_samples, D] = "
            f"[{num_samples}, {dim}] for xs[{n}], got {list(samples.shape)}."
        )
    return samples


def _posterior_draws(
    posterior: Any,
    thetas: Tensor,
    xs: Tensor,
    num_samples: int,
    *,
    need_log_prob: bool,
    seed: int | None,
    show_progress_bar: bool,
    desc: str,
) -> Iterator[tuple[int, Tensor, Callable[[Tensor], Tensor] | None]]:
    """Yield ``(n, samples [S, D], log_prob or None)`` for each observation ``xs[n]``."""
    amortised = callable(getattr(posterior, "sample", None))
    if not amortised and not callable(posterior):
        raise TypeError(
            "`posterior` must have a `sample(sample_shape, x=...)` method (amortised) or be "
            f"a callable x -> distribution or samples; got {type(posterior).__name__}."
        )
    if need_log_prob and amortised and not callable(getattr(posterior, "log_prob", None)):
        raise TypeError("`posterior` must have a `log_prob(theta, x=...)` method for coverage.")
    dim = thetas.shape[1]
    # Gradients stay enabled around `posterior(x)`: it may train a fit for this x.
    with seeded(seed):
        for n in tqdm(
            range(thetas.shape[0]), desc=desc, disable=not show_progress_bar, leave=False
        ):
            x = xs[n]
            log_prob: Callable[[Tensor], Tensor] | None = None
            if amortised:
                with torch.no_grad():
                    samples = posterior.sample((num_samples,), x=x)
                if need_log_prob:
                    log_prob = _bind_x(posterior.log_prob, x)
            else:
                q = posterior(x)
                if callable(getattr(q, "sample", None)):
                    with torch.no_grad():
                        samples = q.sample((num_samples,))
                    if callable(getattr(q, "log_prob", None)):
                        log_prob = q.log_prob
                else:
                    samples = q
                if need_log_prob and log_prob is None:
                    raise TypeError(
                        "Coverage needs log densities: `posterior(x)` must return an object "
                        f"with `sample` and `log_prob` (a Distribution), got {type(q).__name__}."
                    )
            yield n, _check_samples(samples, num_samples, dim, n), log_prob


def _bind_x(log_prob: Callable[..., Tensor], x: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda theta: log_prob(theta, x=x)


def _resolve_reduce_fns(
    reduce_fns: Literal["marginals"] | ReduceFn | Sequence[ReduceFn], dim: int
) -> tuple[list[ReduceFn], tuple[str, ...]]:
    if isinstance(reduce_fns, str):
        if reduce_fns != "marginals":
            raise ValueError(
                f"`reduce_fns` must be 'marginals', a callable or a list of callables; got "
                f"{reduce_fns!r}."
            )
        fns = [_marginal(k) for k in range(dim)]
        return fns, tuple(f"theta_{k + 1}" for k in range(dim))
    fns = [reduce_fns] if callable(reduce_fns) else list(reduce_fns)
    if not fns or not all(callable(f) for f in fns):
        raise TypeError(
            "`reduce_fns` must be 'marginals', a callable (theta [S, D], x [L]) -> [S] or a "
            f"non-empty list of them; got {reduce_fns!r}."
        )
    names = []
    for k, f in enumerate(fns):
        name = getattr(f, "__name__", "")
        names.append(name if name and name != "<lambda>" else f"reduce_fn_{k + 1}")
    return fns, tuple(names)


def _marginal(k: int) -> ReduceFn:
    return lambda theta, x: theta[..., k]


def _statistic(fn: ReduceFn, theta: Tensor, x: Tensor, size: int, name: str) -> Tensor:
    value = torch.as_tensor(fn(theta, x)).detach().reshape(-1)
    if value.shape[0] != size:
        raise ValueError(
            f"reduce function {name!r} must map theta [{size}, D] to [{size}], got "
            f"{value.shape[0]} values."
        )
    return value


# -------------------------------------------------------------------------------- SBC


def run_sbc(
    thetas: Tensor,
    xs: Tensor,
    posterior: Any,
    num_posterior_samples: int = 1000,
    reduce_fns: Literal["marginals"] | ReduceFn | Sequence[ReduceFn] = "marginals",
    *,
    seed: int | None = None,
    show_progress_bar: bool = True,
) -> SBCResult:
    r"""Simulation-based calibration: ranks of true parameters among posterior samples.

    For each pair ``(thetas[n], xs[n])`` draw S samples of q(θ | x_n), reduce samples and
    true θ to K statistics, and record the rank of the true value (the number of samples
    strictly below it). Ranks are then tested for uniformity with :func:`check_sbc`.

    Args:
        thetas: True parameters θ* drawn from the prior, shape ``[N, D]``.
        xs: Simulations ``x_n ~ p(x | thetas[n])``, shape ``[N, L]``.
        posterior: An amortised posterior with ``sample(sample_shape, x=x)``, or a callable
            ``x [L] ->`` a distribution with ``sample(sample_shape)`` or samples ``[S, D]``
            (one fit per observation; see the module docstring).
        num_posterior_samples: Samples S per observation.
        reduce_fns: ``"marginals"`` (K = D statistics, the coordinates of θ), a callable
            ``f(theta [S, D], x [L]) -> [S]``, or a list of such callables (e.g.
            ``lambda theta, x: posterior.log_prob(theta, x=x)``).
        seed: Seed of torch's CPU generator while sampling; the global generator is left as
            it was. ``None`` draws from the global generator.
        show_progress_bar: Show a tqdm bar over the observations.

    Returns:
        An :class:`SBCResult` with ranks ``[N, K]``, KS and chi-square p-values ``[K]`` and
        ``passed(alpha)``.

    Raises:
        ValueError: If ``thetas``/``xs`` are not ``[N, D]``/``[N, L]`` with the same N or
            hold NaN/inf, the posterior's samples are not ``[S, D]``, or a reduce function
            does not return one value per sample.
        TypeError: If ``posterior`` or ``reduce_fns`` is of the wrong kind.

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> g = torch.Generator().manual_seed(0)
        >>> thetas = torch.randn(200, 2, generator=g)  # θ ~ N(0, I)
        >>> xs = thetas + 0.5 * torch.randn(200, 2, generator=g)  # x ~ N(θ, 0.25 I)
        >>> def exact(x):  # the true posterior N(x / 1.25, 0.2 I) for one x
        ...     return Independent(Normal(x / 1.25, 0.2**0.5), 1)
        >>> result = run_sbc(thetas, xs, exact, 100, seed=0, show_progress_bar=False)
        >>> result.ranks.shape, result.passed()
        (torch.Size([200, 2]), True)
    """
    thetas, xs = _check_pairs(thetas, xs)
    num_posterior_samples = check_positive_int("num_posterior_samples", num_posterior_samples)
    if seed is not None:
        seed = check_positive_int("seed", seed, allow_zero=True)
    fns, names = _resolve_reduce_fns(reduce_fns, thetas.shape[1])

    ranks = torch.zeros(thetas.shape[0], len(fns), dtype=torch.int64)
    dap = torch.empty_like(thetas)
    draws = _posterior_draws(
        posterior,
        thetas,
        xs,
        num_posterior_samples,
        need_log_prob=False,
        seed=seed,
        show_progress_bar=show_progress_bar,
        desc="SBC",
    )
    # closing(): the generator restores the global RNG even if a statistic raises. No
    # no_grad() around the loop: the generator runs `posterior(x)`, which may train a fit.
    with contextlib.closing(draws):
        for n, samples, _ in draws:
            dap[n] = samples[0].to(dap.dtype)
            truth = thetas[n : n + 1].to(samples.dtype)
            with torch.no_grad():
                for k, (fn, name) in enumerate(zip(fns, names)):
                    values = _statistic(fn, samples, xs[n], num_posterior_samples, name)
                    true_value = _statistic(fn, truth, xs[n], 1, name)
                    ranks[n, k] = int((values < true_value).sum())
    ks, chi2 = check_sbc(ranks, num_posterior_samples)
    return SBCResult(ranks, num_posterior_samples, ks, chi2, dap, names)


def _rank_bins(num_posterior_samples: int, num_bins: int) -> np.ndarray:
    """Edges of ``num_bins`` bins of the ranks 0..S: bin b holds ``edges[b] .. edges[b+1] - 1``."""
    return np.floor(np.arange(num_bins + 1) * (num_posterior_samples + 1) / num_bins).astype(int)


def default_num_bins(num_simulations: int, num_posterior_samples: int) -> int:
    """Bins of the chi-square test and rank histograms: about 10 ranks per bin, 2 to 20.

    Args:
        num_simulations: N.
        num_posterior_samples: S (at most S + 1 bins are possible).

    Returns:
        ``min(20, S + 1, max(2, N // 10))``.
    """
    return min(20, num_posterior_samples + 1, max(2, num_simulations // 10))


def check_sbc(
    ranks: Tensor | np.ndarray, num_posterior_samples: int, *, num_bins: int | None = None
) -> tuple[Tensor, Tensor]:
    r"""Test SBC ranks for uniformity on ``{0, ..., S}``, per statistic.

    - **Kolmogorov–Smirnov**: the largest gap D between the empirical CDF of the ranks and
      the CDF ``(j + 1) / (S + 1)`` of the discrete uniform (both are step functions with
      jumps at the integers, so the gap at the integers is the exact supremum); the
      p-value is ``P(D_N ≥ D)`` under the continuous null (``scipy.stats.kstwo``), which is
      conservative for a discrete null: a calibrated posterior is rejected at most at the
      nominal rate.
    - **Chi-square**: ranks binned into ``num_bins`` bins of consecutive values with exact
      expected counts ``N · width / (S + 1)`` (bins need not be equally wide), Pearson's
      statistic against ``χ²(num_bins − 1)``. It detects the "U" and "∩" shapes of
      over- and under-dispersed posteriors that KS can miss.

    Args:
        ranks: Ranks, integers in ``0..S``, shape ``[N, K]`` (or ``[N]`` for K = 1).
        num_posterior_samples: S, the number of posterior samples behind each rank.
        num_bins: Bins of the chi-square test (2 to S + 1); default
            :func:`default_num_bins` (about ten ranks per bin, at most 20).

    Returns:
        ``(ks_pvalues, chi2_pvalues)``, float64 tensors of shape ``[K]``.

    Raises:
        ValueError: If ranks are not integers in ``0..S``, empty, or ``num_bins`` is out
            of range.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> uniform = torch.randint(0, 101, (500, 2), generator=g)
        >>> ks, chi2 = check_sbc(uniform, 100)
        >>> bool((ks > 0.01).all() and (chi2 > 0.01).all())
        True
        >>> ks, chi2 = check_sbc(uniform // 2, 100)  # all ranks in the lower half
        >>> bool((ks < 1e-6).all() and (chi2 < 1e-6).all())
        True
    """
    from scipy import stats

    s = check_positive_int("num_posterior_samples", num_posterior_samples)
    if isinstance(ranks, Tensor):
        values = ranks.detach().cpu().numpy()
    else:
        values = np.asarray(ranks)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"`ranks` must have shape [N, K] with N, K >= 1, got {values.shape}.")
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
        raise ValueError("`ranks` must be finite numbers.")
    if np.any(values != np.round(values)) or values.min() < 0 or values.max() > s:
        raise ValueError(
            f"`ranks` must be integers in 0..{s} (num_posterior_samples), got values in "
            f"[{values.min()}, {values.max()}]."
        )
    values = values.astype(np.int64)
    n = values.shape[0]
    if num_bins is None:
        num_bins = default_num_bins(n, s)
    num_bins = check_positive_int("num_bins", num_bins)
    if not 2 <= num_bins <= s + 1:
        raise ValueError(f"`num_bins` must be in 2..{s + 1} (S + 1), got {num_bins}.")

    cdf = np.arange(1, s + 2) / (s + 1)
    edges = _rank_bins(s, num_bins)
    expected = n * np.diff(edges) / (s + 1)
    ks, chi2 = [], []
    for column in values.T:
        counts = np.bincount(column, minlength=s + 1)
        gap = np.abs(np.cumsum(counts) / n - cdf).max()
        ks.append(float(stats.kstwo.sf(gap, n)))
        binned = np.add.reduceat(counts, edges[:-1])
        chi2.append(float(stats.chisquare(binned, expected).pvalue))
    return torch.tensor(ks, dtype=torch.float64), torch.tensor(chi2, dtype=torch.float64)
