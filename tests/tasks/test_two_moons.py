"""Two moons: the likelihood is the simulator's density, and its posterior is the reference.

The likelihood is integrated on grids (it must integrate to one, and bin probabilities must
match simulated histograms), and the grid posterior of every observation is compared with
the reference samples by marginal KS tests and by the mass of the two moons.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from sbi_vi.tasks import TwoMoons

R_LOC, R_SCALE, OFFSET = 0.1, 0.01, 0.25


@pytest.fixture(scope="module")
def task() -> TwoMoons:
    return TwoMoons()


def _p_grid(
    u_range: tuple[float, float], v_range: tuple[float, float], n_u: int, n_v: int
) -> tuple[torch.Tensor, float]:
    """Cell centres of a grid over p - (0.25, 0), and the cell area."""
    du = (u_range[1] - u_range[0]) / n_u
    dv = (v_range[1] - v_range[0]) / n_v
    u = u_range[0] + du * (torch.arange(n_u, dtype=torch.float64) + 0.5)
    v = v_range[0] + dv * (torch.arange(n_v, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(u, v, indexing="ij"), -1)
    return grid, du * dv


def test_prior_is_uniform_on_the_square(task: TwoMoons) -> None:
    assert torch.equal(task.prior.low, -torch.ones(2))
    assert torch.equal(task.prior.high, torch.ones(2))
    assert torch.allclose(task.prior.log_prob(torch.zeros(2)), torch.tensor(-math.log(4.0)))


@pytest.mark.parametrize("theta", [[0.0, 0.0], [0.4, -0.7], [-0.9, 0.95]])
def test_likelihood_integrates_to_one(task: TwoMoons, theta: list[float]) -> None:
    """∫ p(x|θ) dx = 1 over a grid covering the moon (checks the Jacobian 1/(πρ))."""
    theta_t = torch.tensor(theta, dtype=torch.float64)
    grid, area = _p_grid((0.0, 0.16), (-0.16, 0.16), 800, 1600)
    x = grid + torch.tensor([OFFSET, 0.0], dtype=torch.float64) + task._shift(theta_t)
    mass = task._log_likelihood(theta_t, x).exp().sum() * area
    # the grid misses the mass at radius > 0.16 (6σ) and all but 1e-8 of the rest
    assert abs(mass.item() - 1.0) < 1e-4


def test_simulated_histogram_matches_likelihood(task: TwoMoons) -> None:
    """Chi-square test of 200,000 simulations in Cartesian bins against integrated density."""
    theta = torch.tensor([0.3, -0.6], dtype=torch.float64)
    n = 200_000
    x = task.simulator(theta.expand(n, 2), seed=0)
    p = x - task._shift(theta) - torch.tensor([OFFSET, 0.0], dtype=torch.float64)
    n_u, n_v, sub = 8, 16, 40  # bins, and integration cells per bin and axis
    u_range, v_range = (0.0, 0.14), (-0.14, 0.14)
    fine, area = _p_grid(u_range, v_range, n_u * sub, n_v * sub)
    x_fine = fine + torch.tensor([OFFSET, 0.0], dtype=torch.float64) + task._shift(theta)
    density = task._log_likelihood(theta, x_fine).exp() * area
    probs = density.reshape(n_u, sub, n_v, sub).sum((1, 3)).flatten()
    iu = ((p[:, 0] - u_range[0]) / (u_range[1] - u_range[0]) * n_u).floor().long()
    iv = ((p[:, 1] - v_range[0]) / (v_range[1] - v_range[0]) * n_v).floor().long()
    inside = (iu >= 0) & (iu < n_u) & (iv >= 0) & (iv < n_v)
    counts = torch.bincount(iu[inside] * n_v + iv[inside], minlength=n_u * n_v).double()
    # bins expected to hold few draws are pooled with everything outside the grid
    keep = probs * n >= 20
    observed = torch.cat([counts[keep], (n - counts[keep].sum()).reshape(1)])
    expected = torch.cat([probs[keep] * n, (n - probs[keep].sum() * n).reshape(1)])
    assert keep.sum() > 40
    chi2 = ((observed - expected).square() / expected).sum().item()
    dof = len(observed) - 1
    assert chi2 < stats.chi2(dof).ppf(1 - 1e-4), (chi2, dof)


def test_simulated_radius_and_angle(task: TwoMoons) -> None:
    """The simulator's polar coordinates around (0.25, 0): r ~ N(0.1, 0.01²), a ~ U(±π/2)."""
    theta = torch.tensor([-0.5, 0.2])
    n = 20_000
    x = task.simulator(theta.expand(n, 2), seed=1).double()
    p = x - task._shift(theta.double()) - torch.tensor([OFFSET, 0.0], dtype=torch.float64)
    radius = torch.hypot(p[:, 0], p[:, 1])
    angle = torch.atan2(p[:, 1], p[:, 0])
    assert stats.kstest(radius.numpy(), stats.norm(R_LOC, R_SCALE).cdf).pvalue > 1e-4
    assert stats.kstest(angle.numpy(), stats.uniform(-math.pi / 2, math.pi).cdf).pvalue > 1e-4


def test_log_likelihood_is_minus_inf_behind_the_moon_and_never_nan(task: TwoMoons) -> None:
    theta = torch.tensor([[0.2, 0.1]], dtype=torch.float64, requires_grad=True)
    centre = torch.tensor([OFFSET, 0.0], dtype=torch.float64) + task._shift(theta.detach())[0]
    offsets = [
        [0.0, 0.0],  # ρ ≈ 0, on the boundary (either side after rounding)
        [-0.1, 0.0],  # the other half-plane
        [-1e-9, 0.1],  # just behind the tip of the moon
        [1e-12, 0.0],  # ρ tiny, inside
        [0.1, 0.0],  # the crest of the moon
    ]
    x = centre + torch.tensor(offsets, dtype=torch.float64)
    values = torch.stack([task.log_likelihood(theta, row)[0] for row in x])
    assert not torch.isnan(values).any()
    assert values[0] < 0.0
    assert torch.isneginf(values[[1, 2]]).all()
    assert torch.isfinite(values[[3, 4]]).all()
    assert values[4] > 4.0  # ≈ log N(0.1; 0.1, 0.01²) - log(0.1π)
    for row in x:
        (grad,) = torch.autograd.grad(task.log_likelihood(theta, row)[0], theta)
        assert torch.isfinite(grad).all()


def test_log_likelihood_is_symmetric_in_the_two_moons(task: TwoMoons) -> None:
    """Swapping the sign of θ₁ + θ₂ at fixed θ₂ - θ₁ leaves the likelihood unchanged."""
    torch.manual_seed(2)
    theta = task.prior.sample((100,)).double()
    mirrored = torch.stack((-theta[:, 1], -theta[:, 0]), -1)  # z1 -> -z1, z2 unchanged
    x_o = task.get_observation(1)
    assert torch.allclose(task.log_likelihood(theta, x_o), task.log_likelihood(mirrored, x_o))


def _grid_posterior(task: TwoMoons, num_observation: int, n: int) -> torch.Tensor:
    """Posterior mass of the cells of an ``n × n`` grid on [-1, 1]², shape [n, n]."""
    centres = -1.0 + (2.0 / n) * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), -1)
    log_p = task.potential(x_o=task.get_observation(num_observation).double())(grid)
    mass = (log_p - log_p.max()).exp()
    return mass / mass.sum()


def _grid_cdf(marginal: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """CDF of a marginal given by cell masses on [-1, 1], linear within cells."""
    n = len(marginal)
    edges_cdf = torch.cat([torch.zeros(1, dtype=marginal.dtype), marginal.cumsum(0)])
    position = (values.double() + 1.0) * n / 2
    k = position.floor().long().clamp(0, n - 1)
    return torch.lerp(edges_cdf[k], edges_cdf[k + 1], position - k)


@pytest.mark.parametrize("num_observation", range(1, 11))
def test_grid_posterior_matches_reference_samples(task: TwoMoons, num_observation: int) -> None:
    """Each marginal of the reference samples passes a KS test against the grid posterior,
    and the two moons (sign of θ₁ + θ₂) hold the grid's share of samples within 5 SE."""
    ref = task.get_reference_posterior_samples(num_observation)
    mass = _grid_posterior(task, num_observation, 1000)
    for dim, marginal in enumerate((mass.sum(1), mass.sum(0))):
        u = _grid_cdf(marginal, ref[:, dim])
        p_value = stats.kstest(u.numpy(), "uniform").pvalue
        assert p_value > 1e-4, (num_observation, dim, p_value)
    centres = -1.0 + (2.0 / 1000) * (torch.arange(1000, dtype=torch.float64) + 0.5)
    upper = (centres[:, None] + centres[None, :]) > 0
    share = mass[upper].sum().item()
    observed = ((ref[:, 0] + ref[:, 1]) > 0).double().mean().item()
    assert abs(observed - share) < 5 * math.sqrt(share * (1 - share) / len(ref))
    # posterior means agree too (SE from the grid's standard deviation)
    grid_mean = torch.stack([(mass.sum(1) * centres).sum(), (mass.sum(0) * centres).sum()])
    grid_var = torch.stack([(mass.sum(1) * centres**2).sum(), (mass.sum(0) * centres**2).sum()])
    grid_std = (grid_var - grid_mean**2).sqrt()
    assert torch.all((ref.double().mean(0) - grid_mean).abs() < 5 * grid_std / 100)
