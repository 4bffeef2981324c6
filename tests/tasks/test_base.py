"""Contract tests of every task: shapes, dtypes, seeds, argument checks, shipped data.

The statistical agreement of each simulator, likelihood and reference posterior is tested
in the per-task files; here the checks that every task must pass, parametrised over tasks.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from sbi_vi.tasks import Task, TaskPotential, get_task, list_tasks

TASKS = list_tasks()


@pytest.fixture(params=TASKS)
def task(request: pytest.FixtureRequest) -> Task:
    return get_task(request.param)


def test_prior_samples_have_event_shape_d(task: Task) -> None:
    torch.manual_seed(0)
    theta = task.prior.sample((11,))
    assert theta.shape == (11, task.dim_theta)
    assert theta.dtype == torch.float32
    assert task.prior.event_shape == (task.dim_theta,)
    assert task.prior.batch_shape == ()
    assert task.prior.log_prob(theta).shape == (11,)
    assert torch.isfinite(task.prior.log_prob(theta)).all()


@pytest.mark.parametrize("batch_shape", [(), (1,), (7,), (3, 4)])
def test_simulator_and_log_likelihood_shapes(task: Task, batch_shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    theta = task.prior.sample(batch_shape)
    x = task.simulator(theta)
    assert x.shape == (*batch_shape, task.dim_x)
    assert x.dtype == theta.dtype
    assert torch.isfinite(x).all()
    x_o = task.get_observation(1)
    assert task.log_likelihood(theta, x_o).shape == batch_shape
    assert task.log_likelihood(theta, x_o[0]).shape == batch_shape
    assert task.potential(1)(theta).shape == batch_shape


def test_simulator_keeps_float64(task: Task) -> None:
    theta = task.prior.sample((5,)).double()
    x = task.simulator(theta, seed=3)
    assert x.dtype == torch.float64
    assert task.log_likelihood(theta, x[0]).dtype == torch.float64
    # float32 x with float64 theta is promoted, not truncated
    assert task.log_likelihood(theta, x[0].float()).dtype == torch.float64


def test_simulated_data_have_finite_likelihood(task: Task) -> None:
    torch.manual_seed(2)
    theta = task.prior.sample((2000,))
    x = task.simulator(theta)
    log_lik = task._log_likelihood(theta, x)  # paired, element-wise
    assert log_lik.shape == (2000,)
    assert torch.isfinite(log_lik).all()
    for i in range(3):  # the public method agrees with the paired one
        assert torch.allclose(task.log_likelihood(theta[i], x[i]), log_lik[i])


def test_iid_rows_of_x_sum(task: Task) -> None:
    torch.manual_seed(3)
    theta = task.prior.sample((6,))
    x = task.simulator(task.prior.sample((3,)))
    total = task.log_likelihood(theta, x)
    parts = sum(task.log_likelihood(theta, x[i]) for i in range(3))
    both_inf = torch.isneginf(total) & torch.isneginf(parts)
    assert torch.all(both_inf | torch.isclose(total, parts, rtol=1e-5, atol=1e-4))


def test_simulator_reproducible_with_manual_seed(task: Task) -> None:
    theta = task.prior.sample((50,))
    torch.manual_seed(123)
    x1 = task.simulator(theta)
    torch.manual_seed(123)
    x2 = task.simulator(theta)
    x3 = task.simulator(theta)
    assert torch.equal(x1, x2)
    assert not torch.equal(x2, x3)


def test_simulator_seed_is_private_and_reproducible(task: Task) -> None:
    theta = task.prior.sample((50,))
    state = torch.get_rng_state()
    x1 = task.simulator(theta, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(x1, task.simulator(theta, seed=7))
    assert not torch.equal(x1, task.simulator(theta, seed=8))


def test_simulator_rejects_bad_arguments(task: Task) -> None:
    theta = task.prior.sample((4,))
    with pytest.raises(ValueError, match="`theta`"):
        task.simulator(theta[:, :-1])
    with pytest.raises(ValueError, match="`theta`"):
        task.simulator(torch.tensor(0.0))
    bad = theta.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="`theta` must be finite"):
        task.simulator(bad)
    with pytest.raises(TypeError, match="`seed`"):
        task.simulator(theta, seed=1.5)
    with pytest.raises(ValueError, match="`seed`"):
        task.simulator(theta, seed=-1)


def test_log_likelihood_rejects_bad_shapes(task: Task) -> None:
    theta = task.prior.sample((4,))
    x_o = task.get_observation(1)
    with pytest.raises(ValueError, match="`theta`"):
        task.log_likelihood(theta[:, :-1], x_o)
    with pytest.raises(ValueError, match="`x`"):
        task.log_likelihood(theta, x_o[:, :-1])
    with pytest.raises(ValueError, match="`x`"):
        task.log_likelihood(theta, x_o.expand(2, 3, -1))
    with pytest.raises(TypeError, match="`x`"):
        task.log_likelihood(theta, object())
    with pytest.raises(ValueError, match="`x` must be finite"):
        task.log_likelihood(theta, torch.full((task.dim_x,), math.nan))


@pytest.mark.parametrize("bad", [0, 11, -1])
def test_bad_num_observation_value(task: Task, bad: int) -> None:
    for method in (
        task.get_observation,
        task.get_true_parameters,
        task.get_reference_posterior_samples,
        task.get_observation_seed,
        task.potential,
    ):
        with pytest.raises(ValueError, match=r"`num_observation` must be an integer from 1 to 10"):
            method(bad)


@pytest.mark.parametrize("bad", [1.0, "1", True, None])
def test_bad_num_observation_type(task: Task, bad: object) -> None:
    with pytest.raises(TypeError, match="`num_observation`"):
        task.get_observation(bad)  # type: ignore[arg-type]


def test_potential_needs_exactly_one_argument(task: Task) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        task.potential()
    with pytest.raises(ValueError, match="exactly one"):
        task.potential(1, x_o=task.get_observation(1))
    with pytest.raises(ValueError, match="`x`"):
        task.potential(x_o=torch.zeros(task.dim_x + 1))


def test_data_loads_for_every_observation(task: Task) -> None:
    assert task.num_observations == 10
    for i in range(1, 11):
        x_o = task.get_observation(i)
        theta_o = task.get_true_parameters(i)
        ref = task.get_reference_posterior_samples(i)
        assert x_o.shape == (1, task.dim_x) and x_o.dtype == torch.float32
        assert theta_o.shape == (1, task.dim_theta)
        assert ref.shape == (10_000, task.dim_theta) and ref.dtype == torch.float32
        assert torch.isfinite(x_o).all() and torch.isfinite(ref).all()
        # no duplicated rows: the samples are draws of a continuous distribution
        assert torch.unique(ref, dim=0).shape[0] == 10_000
        assert isinstance(task.get_observation_seed(i), int)


def test_loaded_tensors_are_fresh_copies(task: Task) -> None:
    x_o = task.get_observation(2)
    x_o += 1000.0
    assert not torch.equal(task.get_observation(2), x_o)


def test_reference_samples_and_true_parameters_in_prior_support(task: Task) -> None:
    for i in range(1, 11):
        ref = task.get_reference_posterior_samples(i)
        theta_o = task.get_true_parameters(i)
        assert torch.isfinite(task.prior.log_prob(ref)).all()
        assert task.prior.support.check(ref).all()
        assert torch.isfinite(task.prior.log_prob(theta_o)).all()


def test_true_parameters_and_reference_samples_have_finite_likelihood(task: Task) -> None:
    for i in range(1, 11):
        x_o = task.get_observation(i)
        assert torch.isfinite(task.log_likelihood(task.get_true_parameters(i), x_o)).all()
        potential = task.potential(i)
        assert torch.isfinite(potential(task.get_reference_posterior_samples(i))).all()


def test_true_parameters_are_typical_of_the_reference_posterior(task: Task) -> None:
    """theta_o is a draw of the posterior, so its potential is not in the far tail.

    The fraction of reference samples with a lower potential than theta_o is (under the
    true posterior) uniform; over ten observations, all ten below 1e-3 is impossible, and any
    single one below 1e-4 has probability 1e-3.
    """
    quantiles = []
    for i in range(1, 11):
        potential = task.potential(i)
        ref_values = potential(task.get_reference_posterior_samples(i))
        value = potential(task.get_true_parameters(i))
        quantiles.append((ref_values < value).double().mean().item())
    assert min(quantiles) > 1e-4
    assert sum(quantiles) / 10 > 0.15


@pytest.mark.parametrize("name", ["two_moons", "slcp"])
def test_potential_is_minus_inf_outside_the_prior_support(name: str) -> None:
    task = get_task(name)  # type: ignore[arg-type]
    potential = task.potential(1)
    theta = task.get_true_parameters(1).repeat(3, 1)
    theta[0, 0] = task.prior.high[0] + 0.5
    theta[1, -1] = task.prior.low[-1] - 100.0
    theta[2, 0] = math.inf
    values = potential(theta)
    assert torch.isneginf(values).all()


def test_potential_gradient_finite_at_reference_samples(task: Task) -> None:
    theta = task.get_reference_posterior_samples(1)[:500].clone().requires_grad_(True)
    task.potential(1)(theta).sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()


def test_potential_accepts_own_x_o_and_pickles(task: Task) -> None:
    x_o = task.get_observation(4)
    theta = task.get_reference_posterior_samples(4)[:10]
    by_number = task.potential(4)
    by_value = task.potential(x_o=x_o[0])
    assert isinstance(by_number, TaskPotential)
    assert torch.equal(by_number(theta), by_value(theta))
    restored = pickle.loads(pickle.dumps(by_number))
    assert torch.equal(restored(theta), by_number(theta))
    assert task.name in repr(by_number)


def test_likelihood_ratio_has_unit_mean_under_the_simulator(task: Task) -> None:
    r"""Simulator and likelihood agree: E_{x ~ p(x|θ)}[p(x|θ') / p(x|θ)] = 1.

    θ' is a small move from θ (for two moons along the moon, so that the support of
    p(x|θ') stays inside that of p(x|θ)); the tolerance is 5 standard errors.
    """
    theta, step = {
        "gaussian_linear": (torch.linspace(-0.5, 0.5, 10), torch.full((10,), 0.02)),
        "two_moons": (torch.tensor([0.3, -0.6]), torch.tensor([-0.003, 0.003])),
        "slcp": (
            torch.tensor([0.5, -1.0, 1.2, -0.8, 0.7]),
            torch.tensor([0.1, -0.1, 0.05, 0.05, -0.1]),
        ),
    }[task.name]
    theta, step = theta.double(), step.double()
    theta_prime = theta + step
    x = task.simulator(theta.expand(40_000, -1), seed=11)
    log_ratio = task._log_likelihood(theta_prime, x) - task._log_likelihood(theta, x)
    ratio = log_ratio.exp()
    assert torch.isfinite(ratio).all()
    standard_error = ratio.std() / math.sqrt(len(ratio))
    assert 0.0 < standard_error < 0.05  # the move is small enough for a useful test
    assert abs(ratio.mean().item() - 1.0) < 5 * standard_error.item()
