"""Tests of sbi_vi.simulate: shapes, seeds, workers, Dask, invalid x and failing simulators."""

# The simulators draw from numpy's legacy global generator on purpose: simulate() seeds it.
# ruff: noqa: NPY002

import random
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal

from sbi_vi.errors import SimulationWarning
from sbi_vi.priors import BoxUniform
from sbi_vi.simulate import SimulationError, simulate
from sbi_vi.tasks import get_task

PRIOR = BoxUniform(torch.zeros(2), torch.ones(2))
QUIET = {"show_progress_bar": False}


# Simulators are built by factories: closures pickle by value, so worker processes need not
# import this test module.
def _make_batch_simulator():
    """[B, 2] -> [B, 3]; draws each row's numbers in row order from torch and numpy."""

    def simulator(theta):
        n = theta.shape[0]
        noise = torch.rand(n, 2) + torch.as_tensor(
            np.random.normal(size=(n, 2)), dtype=theta.dtype
        )
        return torch.cat([theta + noise, theta.sum(-1, keepdim=True)], -1)

    return simulator


def _make_single_simulator():
    """[2] -> [3], drawing the same numbers in the same order as the batch simulator."""

    def simulator(theta):
        noise = torch.rand(2) + torch.as_tensor(np.random.normal(size=2), dtype=theta.dtype)
        return torch.cat([theta + noise, theta.sum(-1, keepdim=True)])

    return simulator


def _make_numpy_simulator():
    """A numpy one-at-a-time simulator returning an ndarray of length 4."""

    def simulator(theta):
        theta = np.asarray(theta)
        return np.concatenate([theta, theta**2]) + 0.1 * np.random.standard_normal(4)

    return simulator


def _make_failing_simulator(threshold: float):
    """One at a time; raises when θ_1 > threshold."""

    def simulator(theta):
        if theta.ndim != 1:
            raise TypeError("one θ at a time")
        if float(theta[0]) > threshold:
            raise ValueError("unstable solver")
        return 2 * theta

    return simulator


# ---------------------------------------------------------------------------------- shapes


def test_batch_simulator_shapes_and_pairing():
    theta, x = simulate(lambda t: torch.cat([t, 3 * t], -1), PRIOR, 123, seed=0, **QUIET)
    assert theta.shape == (123, 2) and x.shape == (123, 4)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.cat([theta, 3 * theta], -1))  # row n from theta n


def test_one_dimensional_outputs_become_one_column():
    _, x = simulate(lambda t: t.sum(-1), PRIOR, 20, seed=0, **QUIET)  # batch, [B]
    assert x.shape == (20, 1)
    theta, x = simulate(lambda t: float(t.sum()), PRIOR, 20, seed=0, vectorized=False, **QUIET)
    assert x.shape == (20, 1)
    torch.testing.assert_close(x[:, 0], theta.sum(-1))


def test_scalar_event_prior_gives_one_column_theta():
    theta, x = simulate(lambda t: 2 * t, Normal(0.0, 1.0), 15, seed=0, **QUIET)
    assert theta.shape == (15, 1) and x.shape == (15, 1)


def test_float64_outputs_are_cast_to_float32():
    _, x = simulate(lambda t: t.double() * 2, PRIOR, 5, seed=0, **QUIET)
    assert x.dtype == torch.float32


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    batch_size=st.integers(1, 70),
    vectorized=st.booleans(),
)
def test_rows_stay_paired_for_any_chunking(n, batch_size, vectorized):
    theta, x = simulate(
        lambda t: t * 2 + 1,
        PRIOR,
        n,
        seed=1,
        simulation_batch_size=batch_size,
        vectorized=vectorized,
        **QUIET,
    )
    assert theta.shape == (n, 2)
    torch.testing.assert_close(x, theta * 2 + 1)


# ---------------------------------------------------------------------------------- seeds


def test_same_seed_same_results_different_seed_different():
    sim = _make_batch_simulator()
    a = simulate(sim, PRIOR, 50, seed=3, **QUIET)
    b = simulate(sim, PRIOR, 50, seed=3, **QUIET)
    c = simulate(sim, PRIOR, 50, seed=4, **QUIET)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_seed_leaves_global_generators_untouched():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    torch_state, np_state, py_state = (
        torch.get_rng_state(),
        np.random.get_state(),
        random.getstate(),
    )
    simulate(_make_batch_simulator(), PRIOR, 30, seed=5, **QUIET)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert random.getstate() == py_state


def test_no_seed_honours_torch_manual_seed():
    sim = _make_batch_simulator()
    torch.manual_seed(11)
    a = simulate(sim, PRIOR, 30, **QUIET)
    torch.manual_seed(11)
    b = simulate(sim, PRIOR, 30, **QUIET)
    c = simulate(sim, PRIOR, 30, **QUIET)
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_vectorized_and_one_at_a_time_give_identical_results():
    batch = simulate(_make_batch_simulator(), PRIOR, 40, seed=2, simulation_batch_size=8, **QUIET)
    single = simulate(
        _make_single_simulator(), PRIOR, 40, seed=2, simulation_batch_size=8, **QUIET
    )
    assert torch.equal(batch[0], single[0])
    assert torch.equal(batch[1], single[1])


def test_detection_of_the_simulator_kind():
    calls = []

    def batch(theta):
        calls.append(tuple(theta.shape))
        return theta * 2

    simulate(batch, PRIOR, 25, seed=0, simulation_batch_size=10, **QUIET)
    assert calls == [(2, 2), (10, 2), (10, 2), (5, 2)]  # probe, then whole chunks
    calls.clear()
    single = _make_failing_simulator(threshold=2.0)  # raises on a batch
    theta, x = simulate(single, PRIOR, 7, seed=0, **QUIET)
    torch.testing.assert_close(x, 2 * theta)
    calls.clear()
    simulate(batch, PRIOR, 4, seed=0, vectorized=False, **QUIET)  # no probe when told
    assert calls == [(2,)] * 4


def test_results_do_not_depend_on_num_workers():
    sim = _make_single_simulator()
    one = simulate(sim, PRIOR, 60, seed=7, num_workers=1, **QUIET)
    two = simulate(sim, PRIOR, 60, seed=7, num_workers=2, **QUIET)
    assert torch.equal(one[0], two[0])
    assert torch.equal(one[1], two[1])


def test_batch_size_is_part_of_the_seed_contract():
    sim = _make_batch_simulator()
    a = simulate(sim, PRIOR, 40, seed=7, simulation_batch_size=10, **QUIET)
    b = simulate(sim, PRIOR, 40, seed=7, simulation_batch_size=10, num_workers=2, **QUIET)
    c = simulate(sim, PRIOR, 40, seed=7, simulation_batch_size=20, **QUIET)
    assert torch.equal(a[1], b[1])
    assert torch.equal(a[0], c[0])  # θ depends only on the seed
    assert not torch.equal(a[1], c[1])  # x draws depend on the chunking (documented)


# ---------------------------------------------------------------------------------- numpy


def test_numpy_simulator():
    theta, x = simulate(_make_numpy_simulator(), PRIOR, 30, seed=0, **QUIET)
    assert x.shape == (30, 4) and x.dtype == torch.float32
    assert torch.allclose(x[:, :2], theta, atol=0.6)
    again = simulate(_make_numpy_simulator(), PRIOR, 30, seed=0, num_workers=2, **QUIET)
    assert torch.equal(x, again[1])


def test_list_outputs_are_accepted():
    theta, x = simulate(lambda t: [float(t[0]), 1.0], PRIOR, 6, seed=0, vectorized=False, **QUIET)
    assert x.shape == (6, 2)
    torch.testing.assert_close(x[:, 0], theta[:, 0])


# ---------------------------------------------------------------------------- invalid x


def _nan_every_tenth(theta):
    x = theta.clone()
    x[::10, 1] = float("nan")
    if x.shape[0] > 5:
        x[5, 0] = float("inf")
    return x


def test_invalid_simulations_are_dropped_with_a_counted_warning():
    with pytest.warns(SimulationWarning, match="dropped 11 of 100 simulations with NaN or inf"):
        theta, x = simulate(_nan_every_tenth, PRIOR, 100, seed=0, **QUIET)
    assert theta.shape == (89, 2) and x.shape == (89, 2)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, theta)  # the surviving rows stay paired


def test_invalid_simulations_kept_on_request(recwarn):
    theta, x = simulate(_nan_every_tenth, PRIOR, 100, seed=0, exclude_invalid_x=False, **QUIET)
    assert theta.shape == (100, 2) and x.shape == (100, 2)
    assert (~torch.isfinite(x)).any(dim=1).sum() == 11
    assert not [w for w in recwarn if issubclass(w.category, SimulationWarning)]


# ------------------------------------------------------------------------ failing simulator


def test_failure_names_theta_and_keeps_completed_simulations():
    with pytest.raises(SimulationError, match=r"ValueError on theta\[\d+\] = \[") as info:
        simulate(_make_failing_simulator(0.9), PRIOR, 200, seed=1, **QUIET)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert isinstance(err.__cause__, ValueError) and "unstable solver" in str(err.__cause__)
    assert err.failed_theta.shape == (2,) and err.failed_theta[0] > 0.9
    assert f"{float(err.failed_theta[0]):.6g}" in str(err)
    # Everything before the failing θ was simulated and kept, paired.
    assert err.theta.shape[0] == err.index and err.x.shape == (err.index, 2)
    assert (err.theta[:, 0] <= 0.9).all()
    torch.testing.assert_close(err.x, 2 * err.theta)
    # ... and the rows are those the same seed draws.
    theta, _ = simulate(lambda t: t, PRIOR, 200, seed=1, vectorized=False, **QUIET)
    assert torch.equal(err.theta, theta[: err.index])
    assert torch.equal(err.failed_theta, theta[err.index])


def test_failure_in_a_worker_keeps_the_cause_and_its_traceback():
    with pytest.raises(SimulationError) as info:
        simulate(_make_failing_simulator(0.9), PRIOR, 200, seed=1, num_workers=2, **QUIET)
    err = info.value
    assert isinstance(err.__cause__, ValueError)
    assert any("Traceback in the worker" in note for note in err.__cause__.__notes__)
    assert err.x.shape[0] == err.theta.shape[0]
    torch.testing.assert_close(err.x, 2 * err.theta)


def test_failure_of_a_batch_simulator_names_the_batch():
    def simulator(theta):
        if (theta[:, 0] > 0.95).any():
            raise FloatingPointError("overflow")
        return theta

    with pytest.raises(SimulationError, match=r"on the batch theta\[\d+:\d+\]") as info:
        simulate(simulator, PRIOR, 400, seed=0, simulation_batch_size=50, vectorized=True, **QUIET)
    err = info.value
    assert err.failed_theta.ndim == 2 and (err.failed_theta[:, 0] > 0.95).any()
    assert err.index % 50 == 0 and err.theta.shape == (err.index, 2)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_simulations": 0}, ValueError, "num_simulations"),
        ({"num_simulations": -3}, ValueError, "num_simulations"),
        ({"num_simulations": 2.5}, TypeError, "num_simulations"),
        ({"num_workers": 0}, ValueError, "num_workers"),
        ({"simulation_batch_size": 0}, ValueError, "simulation_batch_size"),
        ({"seed": -1}, ValueError, "seed"),
        ({"backend": "ray"}, ValueError, "backend"),
        ({"vectorized": "yes"}, TypeError, "vectorized"),
        ({"prior_or_proposal": object()}, TypeError, "prior_or_proposal"),
        ({"simulator": 3}, TypeError, "simulator"),
        ({"client": "not a client"}, TypeError, "client"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {
        "simulator": lambda t: t,
        "prior_or_proposal": PRIOR,
        "num_simulations": 10,
        **QUIET,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        simulate(**args)


def test_bad_simulator_outputs():
    with pytest.raises(ValueError, match=r"shape \[B, L\].*got shape \[5, 2, 2\]"):
        simulate(lambda t: t[:, :, None].expand(-1, 2, 2), PRIOR, 5, seed=0, **QUIET)
    with pytest.raises(ValueError, match=r"shape \[L\]"):
        simulate(lambda t: torch.zeros(2, 2), PRIOR, 5, seed=0, vectorized=False, **QUIET)
    with pytest.raises(ValueError, match="same L"):
        simulate(
            lambda t: torch.zeros(2 if t[0] > 0.5 else 3), PRIOR, 30, vectorized=False, **QUIET
        )
    with pytest.raises(TypeError, match="tensor or array of numbers"):
        simulate(lambda t: "x", PRIOR, 5, seed=0, vectorized=False, **QUIET)


def test_bad_prior_samples():
    class Matrix:
        def sample(self, sample_shape):
            return torch.zeros(*sample_shape, 2, 2)

    with pytest.raises(ValueError, match=r"shape \[4, D\]"):
        simulate(lambda t: t, Matrix(), 4, **QUIET)


def test_progress_bar_can_be_silenced(capsys):
    simulate(lambda t: t, PRIOR, 20, seed=0, show_progress_bar=False)
    assert capsys.readouterr().err == ""
    simulate(lambda t: t, PRIOR, 20, seed=0, show_progress_bar=True)
    assert "Simulations" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ Dask


def test_dask_client_gives_the_same_results_as_joblib():
    distributed = pytest.importorskip("distributed")
    sim = _make_batch_simulator()
    reference = simulate(sim, PRIOR, 60, seed=9, simulation_batch_size=15, **QUIET)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        on_dask = simulate(
            sim, PRIOR, 60, seed=9, simulation_batch_size=15, client=client, **QUIET
        )
        with pytest.raises(SimulationError) as info:
            simulate(_make_failing_simulator(0.9), PRIOR, 100, seed=1, client=client, **QUIET)
        assert client.status == "running"  # a user's client is left open
    assert torch.equal(reference[0], on_dask[0])
    assert torch.equal(reference[1], on_dask[1])
    assert isinstance(info.value.__cause__, ValueError)
    torch.testing.assert_close(info.value.x, 2 * info.value.theta)


def test_dask_backend_makes_and_closes_its_own_cluster():
    pytest.importorskip("distributed")
    sim = _make_single_simulator()
    reference = simulate(sim, PRIOR, 20, seed=4, **QUIET)
    on_dask = simulate(sim, PRIOR, 20, seed=4, backend="dask", num_workers=1, **QUIET)
    assert torch.equal(reference[1], on_dask[1])


def test_dask_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'sbi_vi\[distributed\]'"):
        simulate(lambda t: t, PRIOR, 5, backend="dask", **QUIET)


# ----------------------------------------------------------------------------------- tasks


def test_two_moons_task_simulator():
    task = get_task("two_moons")
    theta, x = simulate(task.simulator, task.prior, 300, seed=0, **QUIET)
    assert theta.shape == (300, 2) and x.shape == (300, 2)
    assert torch.isfinite(task.likelihood.log_prob(x, theta)).all()
    parallel = simulate(task.simulator, task.prior, 300, seed=0, num_workers=2, **QUIET)
    assert torch.equal(x, parallel[1])
    # The task's own seeded simulator draws the same law: compare the radius of the moons.
    radius = (x - task._shift(theta) - torch.tensor([0.25, 0.0])).norm(dim=-1)
    assert abs(radius.mean().item() - 0.1) < 0.003


class _LockedSimulator:
    """A batch simulator holding a lock: it runs here but cannot be pickled to a worker."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()

    def __call__(self, theta):
        with self.lock:
            return theta * 2.0


@pytest.mark.parametrize("num_workers", [2])
def test_an_unpicklable_simulator_is_named_before_any_worker_starts(num_workers):
    simulator = _LockedSimulator()
    with pytest.raises(TypeError) as info:
        simulate(simulator, PRIOR, 20, num_workers=num_workers, simulation_batch_size=5, **QUIET)
    message = str(info.value)
    assert "_LockedSimulator" in message and "cannot be pickled" in message
    assert "lock" in message and "num_workers=1" in message and "module-level" in message
    assert info.value.__cause__ is not None
    theta, x = simulate(simulator, PRIOR, 20, num_workers=1, simulation_batch_size=5, **QUIET)
    torch.testing.assert_close(x, 2.0 * theta)
