"""Fuzz the SBI front end: shapes, dtypes, NaN/inf through VIPosterior (every family, both
modes), potentials, simulate and NLE/NRE append_simulations.

The rule everywhere: a ``ValueError``/``TypeError`` whose message names the argument, or a
correct answer (right shape, q's dtype, no NaN, finite where the input is moderate).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.distributions import MultivariateNormal, Normal

from sbi_vi import BoxUniform, VIPosterior
from sbi_vi.estimators import NLE, NRE
from sbi_vi.potentials import LikelihoodBasedPotential
from sbi_vi.simulate import simulate
from sbi_vi.vi.families import FAMILY_NAMES

PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
BOX = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
D = 2
FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SPECIAL = [float("nan"), float("inf"), -float("inf")]
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]


def likelihood(theta, x):
    return Normal(theta, 0.5).log_prob(x).sum(-1)


def elements(dtype):
    if np.issubdtype(dtype, np.integer):
        return st.integers(-3, 3)
    width = np.dtype(dtype).itemsize * 8
    moderate = st.floats(-3, 3, width=width)
    return st.one_of(moderate, moderate, moderate, st.sampled_from(SPECIAL))


@st.composite
def arrays(draw, last=(1, 2, 3), max_rows=4):
    """Arrays of shape ``[L]``, ``[N, L]`` or ``[K, N, L]`` in assorted dtypes with NaN/inf."""
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.sampled_from([(), (draw(st.integers(0, max_rows)),), (2, 2)]))
    shape = (*lead, draw(st.sampled_from(last)))
    value = draw(hnp.arrays(dtype, shape, elements=elements(dtype)))
    return torch.from_numpy(value) if draw(st.booleans()) else value


def as_float(value):
    return torch.as_tensor(value).to(torch.float64)


def names_argument(err, *names):
    message = str(err)
    assert any(f"`{name}`" in message for name in names), message


def expect(call, names, check):
    """Run ``call``: a clear error naming one of ``names``, or ``check`` of its result."""
    try:
        out = call()
    except (ValueError, TypeError) as err:
        names_argument(err, *names)
        return
    check(out)


def train_quickly(posterior):
    return posterior.train(
        max_num_iters=1, warm_up_rounds=0, annealing_iters=0, n_particles=4,
        show_progress_bar=False, quality_control=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def posteriors():
    torch.manual_seed(0)
    out = {}
    for q in FAMILY_NAMES:
        posterior = VIPosterior(
            LikelihoodBasedPotential(likelihood, PRIOR, torch.zeros(1, D)),
            q=q, num_transforms=1, hidden_features=8,
        )  # fmt: skip
        out[q] = train_quickly(posterior)
    boxed = VIPosterior(LikelihoodBasedPotential(likelihood, BOX, torch.zeros(1, D)), q="maf")
    out["box"] = train_quickly(boxed)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(64, D, generator=g)
    amortized = VIPosterior(LikelihoodBasedPotential(likelihood, PRIOR), PRIOR)
    out["amortized"] = amortized.train_amortized(
        theta, theta + 0.5 * torch.randn(64, D, generator=g), flow_type="nsf",
        num_transforms=1, hidden_features=8, max_num_iters=1, batch_size=8, n_particles=4,
        show_progress_bar=False,
    )  # fmt: skip
    return out


POSTERIOR_KEYS = [*FAMILY_NAMES, "box", "amortized"]


def check_log_prob(theta):
    def check(out):
        t = as_float(theta)
        assert t.shape[-1] == D and out.shape == t.shape[:-1]
        assert out.dtype == torch.float32
        assert not torch.isnan(out).any()
        assert not (out == float("inf")).any()
        if out.numel() and bool((t.abs() <= 3).all()):
            assert torch.isfinite(out).all()

    return check


@FUZZ
@given(theta=arrays(), key=st.sampled_from(POSTERIOR_KEYS))
def test_log_prob(posteriors, theta, key):
    posterior = posteriors[key]
    x = torch.zeros(1, D) if key == "amortized" else None
    expect(lambda: posterior.log_prob(theta, x=x), ["theta"], check_log_prob(theta))


@FUZZ
@given(theta=arrays(max_rows=3), x=arrays(max_rows=3))
def test_amortized_log_prob_with_x(posteriors, theta, x):
    posterior = posteriors["amortized"]
    t, xs = as_float(theta), as_float(x)
    batch = xs.shape[0] if xs.ndim == 2 else 1

    def check(out):
        assert t.shape[-1] == D and xs.shape[-1] == D and xs.ndim <= 2
        assert out.dtype == torch.float32 and not torch.isnan(out).any()
        if t.ndim == 2 and batch > 1:
            assert out.shape == (max(t.shape[0], batch),)

    expect(lambda: posterior.log_prob(theta, x=x), ["theta", "x"], check)


@FUZZ
@given(
    shape=st.one_of(
        st.integers(-2, 3),
        st.lists(st.integers(-1, 3), max_size=3).map(tuple),
        st.just((2.5,)),
        st.just("10"),
    ),
    key=st.sampled_from(POSTERIOR_KEYS),
)
def test_sample(posteriors, shape, key):
    posterior = posteriors[key]
    x = torch.zeros(1, D) if key == "amortized" else None

    def check(out):
        expected = (shape,) if isinstance(shape, int) else shape
        assert out.shape == (*expected, D)
        assert torch.isfinite(out).all()
        if key == "box":
            assert bool((out.abs() <= 2).all())

    expect(lambda: posterior.sample(shape, x=x), ["sample_shape"], check)


@settings(max_examples=10, deadline=None)
@given(inits=arrays(max_rows=3), key=st.sampled_from(["gaussian", "maf", "box", "amortized"]))
def test_map_with_given_inits(posteriors, inits, key):
    posterior = posteriors[key]
    x = torch.zeros(1, D) if key == "amortized" else None

    def check(out):
        assert out.shape == (D,) and out.dtype == torch.float32 and torch.isfinite(out).all()

    expect(
        lambda: posterior.map(x=x, init_method=inits, num_iter=2, force_update=True),
        ["theta", "init_method"],
        check,
    )


@FUZZ
@given(x=arrays(), theta=arrays(max_rows=3))
def test_potentials(x, theta):
    potential = LikelihoodBasedPotential(likelihood, PRIOR)
    try:
        potential.set_x(x)
    except (ValueError, TypeError) as err:
        names_argument(err, "x_o")
        return
    xs = as_float(x)
    assert xs.ndim <= 2 and bool(torch.isfinite(xs).all())
    t = torch.as_tensor(theta).float()
    if t.shape[-1] != D or xs.shape[-1] != D or t.ndim > 2 or not torch.isfinite(t).all():
        return  # the potential is an inner part: θ is checked by VIPosterior (above)
    out = potential(t)
    assert out.shape == t.shape[:-1] and torch.isfinite(out).all()


@settings(max_examples=15, deadline=None)
@given(
    n=st.one_of(st.integers(-2, 12), st.just(2.0), st.just("3")),
    batch=st.one_of(st.none(), st.integers(-1, 5)),
    seed=st.one_of(st.none(), st.integers(-1, 3)),
    cut=st.sampled_from([None, -0.5, 0.0, 0.5, 10.0]),
)
def test_simulate(n, batch, seed, cut):
    def simulator(theta):  # NaN where θ₀ > cut: invalid simulations to drop and count
        x = theta + 0.1
        if cut is not None:
            x[theta[:, 0] > cut, 0] = float("nan")
        return x

    options = {"simulation_batch_size": batch, "seed": seed, "vectorized": True}

    def check(out):
        theta, x = out
        assert theta.shape[1:] == (D,) and x.shape == theta.shape and theta.shape[0] <= n
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, theta.float() + 0.1)
        if seed is not None:  # the same seed draws the same θ: exactly the valid ones are kept
            all_theta, _ = simulate(lambda t: t, PRIOR, n, show_progress_bar=False, **options)
            keep = all_theta[:, 0] <= cut if cut is not None else slice(None)
            torch.testing.assert_close(theta, all_theta[keep])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect(
            lambda: simulate(simulator, PRIOR, n, show_progress_bar=False, **options),
            ["num_simulations", "simulation_batch_size", "seed"],
            check,
        )


@FUZZ
@given(theta=arrays(max_rows=6), x=arrays(max_rows=6), kind=st.sampled_from(["NLE", "NRE"]))
def test_append_simulations(theta, x, kind):
    estimator = NLE(PRIOR, show_progress_bars=False) if kind == "NLE" else NRE(PRIOR)

    def check(out):
        t, xs = as_float(theta), as_float(x)
        assert t.ndim == 2 and xs.ndim == 2 and t.shape[0] == xs.shape[0] > 0
        assert t.shape[1] == D and torch.isfinite(t).all()
        stored_theta, stored_x = out.get_simulations()
        valid = torch.isfinite(xs).all(-1)
        assert stored_x.shape[0] == int(valid.sum()) > 0
        torch.testing.assert_close(stored_x, xs[valid].float())
        torch.testing.assert_close(stored_theta, t[valid].float())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect(lambda: estimator.append_simulations(theta, x), ["theta", "x"], check)
