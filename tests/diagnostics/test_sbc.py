"""Tests of sbi_vi.diagnostics.sbc: SBC ranks, their tests, expected coverage.

The statistical tests use a conjugate Gaussian model, θ ~ N(0, I₂), x ~ N(θ, σ² I₂), whose
posterior N(x / (1 + σ²), σ² / (1 + σ²) I₂) is known: the exact posterior must pass, and
posteriors that are too narrow, too wide or shifted must fail. Seeds are fixed, so each
verdict is deterministic; the thresholds leave wide margins.
"""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Independent, Normal

from sbi_vi.diagnostics import CoverageResult, SBCResult, check_sbc, run_coverage, run_sbc
from sbi_vi.diagnostics.sbc import default_num_bins
from sbi_vi.simulate import simulate
from sbi_vi.tasks import get_task

SIGMA = 0.5
POST_VAR = SIGMA**2 / (1 + SIGMA**2)
QUIET = {"show_progress_bar": False}


class GaussianPosterior:
    """An amortised posterior of the conjugate model, scaled and shifted on purpose.

    ``scale`` multiplies the true posterior's standard deviation; ``shift`` moves its mean
    by that many true posterior standard deviations, in θ₁ only.
    """

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        self.scale = scale
        self.shift = torch.tensor([shift * POST_VAR**0.5, 0.0])

    def dist(self, x):
        loc = x / (1 + SIGMA**2) + self.shift
        return Independent(Normal(loc, self.scale * POST_VAR**0.5), 1)

    def sample(self, sample_shape, x):
        return self.dist(x).sample(sample_shape)

    def log_prob(self, theta, x):
        return self.dist(x).log_prob(theta)


def _data(n: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    thetas = torch.randn(n, 2, generator=g)
    return thetas, thetas + SIGMA * torch.randn(n, 2, generator=g)


# -------------------------------------------------------------------------------- SBC


def test_exact_posterior_passes_sbc():
    thetas, xs = _data()
    result = run_sbc(thetas, xs, GaussianPosterior(), 200, seed=0, **QUIET)
    assert isinstance(result, SBCResult)
    assert result.ranks.shape == (300, 2) and result.ranks.dtype == torch.int64
    assert int(result.ranks.min()) >= 0 and int(result.ranks.max()) <= 200
    assert result.num_simulations == 300 and result.num_posterior_samples == 200
    assert result.names == ("theta_1", "theta_2")
    assert result.passed()
    assert (result.ks_pvalues > 0.05).all() and (result.chi2_pvalues > 0.05).all()
    assert (result.ranks.double().mean(0) - 100).abs().max() < 10  # SE ≈ 3.4
    # The data-averaged posterior is the prior N(0, I).
    assert result.dap_samples.shape == (300, 2)
    assert (result.dap_samples.mean(0).abs() < 0.2).all()
    assert ((result.dap_samples.std(0) - 1).abs() < 0.15).all()


def test_over_confident_posterior_fails_sbc():
    thetas, xs = _data()
    result = run_sbc(thetas, xs, GaussianPosterior(scale=0.3), 200, seed=0, **QUIET)
    assert not result.passed()
    assert result.rejected().all()
    # The "U" shape: most true values fall in the outer 10 % of ranks on either side.
    outer = (result.ranks <= 20) | (result.ranks >= 180)
    assert (outer.double().mean(0) > 0.5).all()


def test_under_confident_posterior_fails_sbc():
    thetas, xs = _data()
    result = run_sbc(thetas, xs, GaussianPosterior(scale=2.0), 200, seed=0, **QUIET)
    assert result.rejected().all()
    middle = (result.ranks > 50) & (result.ranks < 150)  # the "∩" shape
    assert (middle.double().mean(0) > 0.7).all()  # 0.5 if calibrated


def test_shifted_posterior_fails_sbc_in_the_shifted_dimension_only():
    thetas, xs = _data()
    result = run_sbc(thetas, xs, GaussianPosterior(shift=0.5), 200, seed=0, **QUIET)
    assert result.rejected().tolist() == [True, False]
    assert not result.passed()
    means = result.ranks.double().mean(0)
    assert means[0] < 80 < 90 < means[1] < 110  # samples above the truth: low ranks


def test_amortised_and_per_observation_posteriors_agree():
    thetas, xs = _data(60)
    exact = GaussianPosterior()
    amortised = run_sbc(thetas, xs, exact, 50, seed=3, **QUIET)
    per_x = run_sbc(thetas, xs, exact.dist, 50, seed=3, **QUIET)  # x -> Distribution
    assert torch.equal(amortised.ranks, per_x.ranks)

    def samples_fn(x):  # x -> samples [S, D]
        return exact.dist(x).sample((50,))

    from_samples = run_sbc(thetas, xs, samples_fn, 50, seed=3, **QUIET)
    assert torch.equal(amortised.ranks, from_samples.ranks)
    assert torch.equal(amortised.dap_samples, from_samples.dap_samples)


def test_per_observation_fits_may_use_gradients():
    thetas, xs = _data(20)

    def fit(x):  # a few steps of gradient descent to the posterior mean, as a fit would do
        loc = torch.zeros(2, requires_grad=True)
        optimizer = torch.optim.SGD([loc], lr=0.5)
        for _ in range(30):
            optimizer.zero_grad()
            ((loc - x / (1 + SIGMA**2)) ** 2).sum().backward()
            optimizer.step()
        return Independent(Normal(loc.detach(), POST_VAR**0.5), 1)

    fitted = run_sbc(thetas, xs, fit, 30, seed=0, **QUIET)
    exact = run_sbc(thetas, xs, GaussianPosterior(), 30, seed=0, **QUIET)
    assert torch.equal(fitted.ranks, exact.ranks)
    assert run_coverage(thetas, xs, fit, 30, seed=0, **QUIET).hpd_levels.shape == (20,)


def test_global_rng_is_restored_when_a_statistic_raises():
    thetas, xs = _data(20)
    state = torch.get_rng_state()

    def broken(theta, x):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_sbc(thetas, xs, GaussianPosterior(), 10, broken, seed=0, **QUIET)
    assert torch.equal(torch.get_rng_state(), state)


def test_seed_is_reproducible_and_leaves_global_rng_alone():
    thetas, xs = _data(50)
    state = torch.get_rng_state()
    a = run_sbc(thetas, xs, GaussianPosterior(), 40, seed=1, **QUIET)
    assert torch.equal(torch.get_rng_state(), state)
    b = run_sbc(thetas, xs, GaussianPosterior(), 40, seed=1, **QUIET)
    c = run_sbc(thetas, xs, GaussianPosterior(), 40, seed=2, **QUIET)
    assert torch.equal(a.ranks, b.ranks)
    assert not torch.equal(a.ranks, c.ranks)


def test_reduce_functions():
    thetas, xs = _data(100)
    posterior = GaussianPosterior()
    marginals = run_sbc(thetas, xs, posterior, 40, seed=0, **QUIET)

    def first(theta, x):
        return theta[:, 0]

    def log_q(theta, x):
        return posterior.log_prob(theta, x)

    custom = run_sbc(
        thetas, xs, posterior, 40, [first, lambda t, x: t[:, 1], log_q], seed=0, **QUIET
    )
    assert custom.names == ("first", "reduce_fn_2", "log_q")
    assert custom.ranks.shape == (100, 3)
    assert torch.equal(custom.ranks[:, :2], marginals.ranks)
    single = run_sbc(thetas, xs, posterior, 40, log_q, seed=0, **QUIET)
    assert torch.equal(single.ranks[:, 0], custom.ranks[:, 2])
    assert single.passed()


def test_sbc_with_simulate_and_a_task():
    task = get_task("gaussian_linear")
    thetas, xs = simulate(task.simulator, task.prior, 200, seed=0, **QUIET)
    result = run_sbc(thetas, xs, task.true_posterior, 100, seed=0, **QUIET)
    assert result.ranks.shape == (200, 10)
    assert result.passed()


def test_result_is_frozen_and_alpha_checked():
    thetas, xs = _data(30)
    result = run_sbc(thetas, xs, GaussianPosterior(), 20, seed=0, **QUIET)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.ranks = None
    with pytest.raises(ValueError, match="alpha"):
        result.passed(alpha=1.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"xs": torch.zeros(7, 2)}, ValueError, "xs"),
        ({"thetas": torch.full((10, 2), float("nan"))}, ValueError, "thetas"),
        ({"thetas": torch.zeros(0, 2), "xs": torch.zeros(0, 2)}, ValueError, "thetas"),
        ({"posterior": 3}, TypeError, "posterior"),
        ({"num_posterior_samples": 0}, ValueError, "num_posterior_samples"),
        ({"reduce_fns": "mean"}, ValueError, "reduce_fns"),
        ({"reduce_fns": []}, TypeError, "reduce_fns"),
        ({"reduce_fns": lambda t, x: t}, ValueError, "reduce function"),
        ({"posterior": lambda x: torch.zeros(5, 2)}, ValueError, r"\[20, 2\]"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_run_sbc_bad_input(kwargs, error, match):
    thetas, xs = _data(10)
    args = {
        "thetas": thetas,
        "xs": xs,
        "posterior": GaussianPosterior(),
        "num_posterior_samples": 20,
        **QUIET,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        run_sbc(**args)


# -------------------------------------------------------------------------- check_sbc


def test_check_sbc_rejects_at_most_at_the_nominal_rate_under_the_null():
    g = torch.Generator().manual_seed(0)
    ranks = torch.randint(0, 51, (100, 400), generator=g)  # 400 calibrated statistics
    ks, chi2 = check_sbc(ranks, 50)
    assert ks.shape == chi2.shape == (400,) and ks.dtype == torch.float64
    assert (ks <= 0.05).double().mean() <= 0.07  # conservative for a discrete null
    assert 0.02 <= (chi2 <= 0.05).double().mean() <= 0.09


def test_check_sbc_ks_statistic_is_exact_for_discrete_ranks():
    rng = np.random.default_rng(0)
    s, n = 4, 37
    ranks = rng.integers(0, s + 1, size=n)
    grid = np.linspace(-1, s + 1, 20001)  # brute-force sup over the real line
    ecdf = (ranks[None, :] <= grid[:, None]).mean(1)
    cdf = np.clip(np.floor(grid + 1) / (s + 1), 0, 1)
    gap = np.abs(ecdf - cdf).max()
    ks, _ = check_sbc(ranks, s)
    assert float(ks[0]) == pytest.approx(stats.kstwo.sf(gap, n), rel=1e-9)


def test_check_sbc_matches_continuous_ks_for_many_samples():
    rng = np.random.default_rng(1)
    ranks = rng.integers(0, 100_001, size=(300, 1))
    ks, _ = check_sbc(ranks, 100_000)
    continuous = stats.kstest((ranks[:, 0] + 0.5) / 100_001, "uniform").pvalue
    assert float(ks[0]) == pytest.approx(continuous, abs=0.01)


def test_check_sbc_detects_non_uniform_ranks_and_bins():
    g = torch.Generator().manual_seed(0)
    uniform = torch.randint(0, 11, (400,), generator=g)
    assert (torch.stack(check_sbc(uniform, 10)) > 0.01).all()
    piled = torch.where(uniform < 5, 0, 10)  # a "U": only the extreme ranks
    assert (torch.stack(check_sbc(piled, 10)) < 1e-6).all()
    for num_bins in (2, 3, 7, 11):  # bins of unequal width over 11 values
        _, chi2 = check_sbc(uniform, 10, num_bins=num_bins)
        assert 0.0 < float(chi2[0]) <= 1.0
    assert default_num_bins(300, 200) == 20 and default_num_bins(30, 1) == 2


@pytest.mark.parametrize(
    ("ranks", "kwargs", "match"),
    [
        (torch.tensor([0, 5, 11]), {}, r"integers in 0\.\.10"),
        (torch.tensor([-1, 5]), {}, r"integers in 0\.\.10"),
        (np.array([0.5, 2.0]), {}, "integers"),
        (torch.zeros(0, 2), {}, "shape"),
        (torch.zeros(5, 2, 2), {}, "shape"),
        (torch.zeros(5), {"num_bins": 12}, "num_bins"),
        (torch.zeros(5), {"num_bins": 1}, "num_bins"),
    ],
)
def test_check_sbc_bad_input(ranks, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_sbc(ranks, 10, **kwargs)


# ---------------------------------------------------------------------------- coverage


def test_exact_posterior_has_nominal_coverage():
    thetas, xs = _data()
    result = run_coverage(thetas, xs, GaussianPosterior(), 200, seed=0, **QUIET)
    assert isinstance(result, CoverageResult)
    assert result.levels.shape == result.coverage.shape == (101,)
    assert result.hpd_levels.shape == (300,)
    assert float(result.coverage[0]) < 0.02 and float(result.coverage[-1]) == 1.0
    assert (result.coverage[1:] >= result.coverage[:-1]).all()  # a CDF: non-decreasing
    assert (result.coverage - result.levels).abs().max() < 0.1
    low, high = result.band(alpha=0.001)
    assert ((result.coverage >= low) & (result.coverage <= high)).all()
    assert result.passed()


def test_over_confident_posterior_has_low_coverage():
    thetas, xs = _data()
    result = run_coverage(
        thetas, xs, GaussianPosterior(scale=0.3), 200, levels=[0.5, 0.9], seed=0, **QUIET
    )
    # For N(0, I₂) vs a 0.3-scaled q, the level-c HPD region of q covers the truth with
    # probability 1 − (1 − c)^(0.09): 0.06 at 0.5, 0.19 at 0.9.
    assert result.coverage[0] < 0.15 and result.coverage[1] < 0.3
    assert result.max_deficit > 0.5
    assert not result.passed()


def test_shifted_posterior_has_low_coverage_and_wide_one_high_coverage():
    thetas, xs = _data()
    levels = [0.5, 0.9]
    shifted = run_coverage(
        thetas, xs, GaussianPosterior(shift=1.5), 200, levels=levels, seed=0, **QUIET
    )
    # Shifted by 1.5 sd, the truth is in the level-c region with probability
    # P(χ²₂(λ = 2.25) ≤ −2 log(1 − c)): 0.23 at 0.5, 0.64 at 0.9.
    assert (shifted.coverage < torch.tensor(levels) - 0.15).all()
    assert not shifted.passed()
    wide = run_coverage(
        thetas, xs, GaussianPosterior(scale=2.0), 200, levels=levels, seed=0, **QUIET
    )
    assert (wide.coverage > torch.tensor(levels) + 0.05).all()
    assert wide.max_deficit < 0
    assert not wide.passed()


def test_coverage_equals_sbc_on_log_q():
    thetas, xs = _data(80)
    posterior = GaussianPosterior(scale=0.8)
    coverage = run_coverage(thetas, xs, posterior, 100, seed=5, **QUIET)
    sbc = run_sbc(thetas, xs, posterior, 100, posterior.log_prob, seed=5, **QUIET)
    ranks = sbc.ranks[:, 0]
    torch.testing.assert_close(coverage.hpd_levels, (100 - ranks).double() / 100)
    assert coverage.ks_pvalue == pytest.approx(float(sbc.ks_pvalues[0]))


def test_coverage_needs_log_densities_and_valid_levels():
    thetas, xs = _data(10)
    with pytest.raises(TypeError, match="log"):
        run_coverage(thetas, xs, lambda x: torch.zeros(20, 2), 20, **QUIET)

    class SampleOnly:
        def sample(self, sample_shape, x):
            return torch.zeros(*sample_shape, 2)

    with pytest.raises(TypeError, match="log_prob"):
        run_coverage(thetas, xs, SampleOnly(), 20, **QUIET)
    with pytest.raises(ValueError, match="levels"):
        run_coverage(thetas, xs, GaussianPosterior(), 20, levels=[0.5, 1.2], **QUIET)

    class NanLogProb(GaussianPosterior):
        def log_prob(self, theta, x):
            return torch.full(theta.shape[:1], float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        run_coverage(thetas, xs, NanLogProb(), 20, **QUIET)
