"""SLCP: simulator moments, exact likelihood, four-mode symmetry, reference posterior.

The reference posterior is checked with conditional probability integral transforms: for a
sample θ of the posterior, u = F(θ_j | θ_-j, x_o), the CDF of the exact full conditional
(computed from the likelihood on a 1-D grid), is uniform on (0, 1) for every j. A KS test on
u probes the likelihood's whole dependence on θ_j against the reference samples.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal

from sbi_vi.tasks import SLCP

JITTER = 1e-6


@pytest.fixture(scope="module")
def task() -> SLCP:
    return SLCP()


def _mean_and_covariance(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m and S of the task definition, written out independently of the package."""
    m = theta[..., :2]
    s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
    rho = torch.tanh(theta[..., 4])
    cov = torch.stack(
        [
            torch.stack([s1**2 + JITTER, rho * s1 * s2], -1),
            torch.stack([rho * s1 * s2, s2**2 + JITTER], -1),
        ],
        -2,
    )
    return m, cov


def test_prior_is_uniform_on_the_box(task: SLCP) -> None:
    assert torch.equal(task.prior.low, torch.full((5,), -3.0))
    assert torch.equal(task.prior.high, torch.full((5,), 3.0))


def test_simulator_mean_and_covariance() -> None:
    """Sample mean and covariance of 4 × 50,000 draws within 5 SE of m and S."""
    task = SLCP()
    theta = torch.tensor([0.5, -1.0, 1.2, -0.8, 0.7], dtype=torch.float64)
    m, cov = _mean_and_covariance(theta)
    n = 50_000
    x = task.simulator(theta.expand(n, 5), seed=0).reshape(n * 4, 2)
    k = len(x)
    sample_cov = torch.cov(x.T)
    assert torch.all((x.mean(0) - m).abs() < 5 * (cov.diagonal() / k).sqrt())
    # Var of a sample covariance entry: (S_ii S_jj + S_ij²) / k for Gaussian data
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / k).sqrt()
    assert torch.all((sample_cov - cov).abs() < 5 * se_cov)
    # the four draws of one simulation are independent: correlation within 5/sqrt(n)
    draws = x.reshape(n, 4, 2)
    corr = torch.corrcoef(torch.stack([draws[:, 0, 0], draws[:, 1, 0], draws[:, 3, 1]]))
    assert torch.all(corr[torch.triu_indices(3, 3, 1).unbind()].abs() < 5 / math.sqrt(n))


def test_expected_log_likelihood_is_minus_entropy(task: SLCP) -> None:
    """E[log p(x|θ)] = -4 (log 2π + ½ log det S + 1); per simulation the std is 2."""
    theta = torch.tensor([-1.0, 2.0, -0.7, 1.5, -1.2], dtype=torch.float64)
    _, cov = _mean_and_covariance(theta)
    n = 20_000
    x = task.simulator(theta.expand(n, 5), seed=1)
    log_lik = task._log_likelihood(theta, x)
    expected = -4 * (math.log(2 * math.pi) + 0.5 * torch.logdet(cov).item() + 1)
    assert abs(log_lik.mean().item() - expected) < 5 * 2 / math.sqrt(n)


def test_log_likelihood_matches_torch_multivariate_normal(task: SLCP) -> None:
    torch.manual_seed(2)
    theta = task.prior.sample((64,)).double()
    x_o = task.get_observation(3).double()
    m, cov = _mean_and_covariance(theta)
    expected = MultivariateNormal(m[:, None, :], cov[:, None]).log_prob(x_o.reshape(4, 2)).sum(-1)
    assert torch.allclose(task.log_likelihood(theta, x_o), expected, rtol=1e-9, atol=1e-9)


def test_log_likelihood_invariant_under_the_four_sign_flips(task: SLCP) -> None:
    torch.manual_seed(3)
    theta = task.prior.sample((200,))
    x_o = task.get_observation(5)
    base = task.log_likelihood(theta, x_o)
    for flip in ([1, 1, -1, 1, 1], [1, 1, 1, -1, 1], [1, 1, -1, -1, 1]):
        flipped = theta * torch.tensor(flip, dtype=theta.dtype)
        assert torch.equal(task.log_likelihood(flipped, x_o), base)


def test_degenerate_covariance_gives_finite_values_and_gradients(task: SLCP) -> None:
    """s → 0 and |ρ| → 1: the jitter keeps log-likelihood and gradient finite, never NaN."""
    theta = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [1.0, -1.0, 0.0, 2.0, 3.0],
            [1.0, -1.0, 2.0, 2.0, 100.0],  # ρ = 1 in floating point
            [1.0, -1.0, 2.0, 2.0, -100.0],
        ],
        requires_grad=True,
    )
    for x in (task.get_observation(1), task.simulator(theta.detach(), seed=4)[2]):
        values = task.log_likelihood(theta, x)
        assert torch.isfinite(values).all()
        (grad,) = torch.autograd.grad(values.sum(), theta)
        assert torch.isfinite(grad).all()
    assert torch.isfinite(task.simulator(theta.detach(), seed=5)).all()


def test_reference_samples_fill_the_four_modes_equally(task: SLCP) -> None:
    """The likelihood is symmetric under θ₃ → -θ₃ and θ₄ → -θ₄: each sign quadrant holds
    a quarter of the reference samples (multinomial chi-square test per observation)."""
    for i in range(1, 11):
        ref = task.get_reference_posterior_samples(i)
        quadrant = 2 * (ref[:, 2] > 0).long() + (ref[:, 3] > 0).long()
        counts = torch.bincount(quadrant, minlength=4).numpy()
        assert stats.chisquare(counts).pvalue > 1e-4, (i, counts)


def _conditional_pit(
    task: SLCP, x_o: torch.Tensor, theta: torch.Tensor, dim: int, num_grid: int
) -> tuple[torch.Tensor, float]:
    """u = F(θ_dim | θ_-dim, x_o) for each row of ``theta`` [n, 5], by trapezoid on a grid.

    Also returns the largest share of a conditional's mass in one grid cell (the grid must
    resolve the conditionals for the linear interpolation of the CDF to be accurate).
    """
    low, high = task.prior.low[dim].item(), task.prior.high[dim].item()
    grid = torch.linspace(low, high, num_grid, dtype=torch.float64)
    step = grid[1] - grid[0]
    u, max_cell = [], 0.0
    for chunk in theta.double().split(100):
        points = chunk[:, None, :].repeat(1, num_grid, 1)
        points[..., dim] = grid
        log_p = task.log_likelihood(points, x_o)  # the prior is flat inside the box
        density = (log_p - log_p.max(-1, keepdim=True).values).exp()
        cdf = torch.cat(
            [
                torch.zeros(len(chunk), 1, dtype=torch.float64),
                (0.5 * (density[:, 1:] + density[:, :-1])).cumsum(-1),
            ],
            -1,
        )
        cdf = cdf / cdf[:, -1:]
        max_cell = max(max_cell, cdf.diff(dim=-1).max().item())
        position = (chunk[:, dim] - low) / step
        k = position.floor().long().clamp(0, num_grid - 2)
        left, right = cdf.gather(1, k[:, None])[:, 0], cdf.gather(1, k[:, None] + 1)[:, 0]
        u.append(torch.lerp(left, right, position - k))
    return torch.cat(u), max_cell


def _check_conditionals(task: SLCP, num_observation: int, n: int, num_grid: int) -> None:
    ref = task.get_reference_posterior_samples(num_observation)
    generator = torch.Generator().manual_seed(num_observation)
    subset = ref[torch.randperm(len(ref), generator=generator)[:n]]
    x_o = task.get_observation(num_observation).double()
    for dim in range(5):
        u, max_cell = _conditional_pit(task, x_o, subset, dim, num_grid)
        assert max_cell < 0.2, (num_observation, dim, max_cell)
        p_value = stats.kstest(u.numpy(), "uniform").pvalue
        # 50 tests in all (10 observations × 5 dims): 1e-4 each keeps the total below 1%
        assert p_value > 1e-4, (num_observation, dim, p_value)


def test_reference_samples_match_exact_conditionals_observation_1(task: SLCP) -> None:
    _check_conditionals(task, 1, n=300, num_grid=2001)


@pytest.mark.slow
@pytest.mark.parametrize("num_observation", range(2, 11))
def test_reference_samples_match_exact_conditionals(task: SLCP, num_observation: int) -> None:
    _check_conditionals(task, num_observation, n=500, num_grid=2001)


def test_a_wrong_likelihood_fails_the_conditional_check(task: SLCP) -> None:
    """The conditional check has power: with standard deviations |θ₃|, |θ₄| instead of
    θ₃², θ₄², the reference samples of observation 1 fail it."""

    class WrongSLCP(SLCP):
        def _log_likelihood(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            theta = torch.cat([theta[..., :2], theta[..., 2:4].abs().sqrt(), theta[..., 4:]], -1)
            return super()._log_likelihood(theta, x)

    wrong = WrongSLCP()
    ref = task.get_reference_posterior_samples(1)[:200]
    u, _ = _conditional_pit(wrong, task.get_observation(1).double(), ref, 2, 2001)
    assert stats.kstest(u.numpy(), "uniform").pvalue < 1e-4
