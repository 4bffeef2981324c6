"""``sbi_vi.ppl.pyro.sample_posterior`` on users' own Pyro models and guides.

Checked against a slow, obviously-correct loop (one draw at a time, full data), against the
closed-form evidence of a conjugate Gaussian model, and against sbi_vi's own PSIS.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pyro = pytest.importorskip("pyro")
dist = pytest.importorskip("pyro.distributions")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pyro import poutine  # noqa: E402
from pyro.infer.autoguide import AutoNormal  # noqa: E402

from sbi_vi.diagnostics import psis  # noqa: E402
from sbi_vi.ppl.pyro import sample_posterior  # noqa: E402

N = 40
TAU = 2.0  # prior sd of the global mean


def model(x):
    """mu ~ N(0, TAU²); z_i ~ N(mu, 1); x_i ~ N(z_i, 1): one global, one latent per x_i."""
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), TAU))
    with pyro.plate("obs", len(x)) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.deterministic("z_sq", z**2)
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def exact_posterior(x):
    """Mean and sd of p(mu | x), and the closed-form log p(x)."""
    n = len(x)
    prec = 1.0 / TAU**2 + n / 2.0  # x_i | mu ~ N(mu, 2)
    mean = (x.sum() / 2.0) / prec
    cov = 2.0 * torch.eye(n, dtype=x.dtype) + TAU**2 * torch.ones(n, n, dtype=x.dtype)
    log_px = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=x.dtype), cov)
    return float(mean), float(prec**-0.5), float(log_px.log_prob(x))


def make_guide(x, *, widen=1.0, shift=0.0, subsample_size=None):
    """The exact posterior q(mu) q(z | mu) (widen=1, shift=0), or a perturbed one."""
    mean, sd, _ = exact_posterior(x)

    def guide(x):
        mu = pyro.sample("mu", dist.Normal(x.new_tensor(mean + shift), sd * widen))
        with pyro.plate("obs", len(x), subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Normal((mu + x[idx]) / 2.0, 0.5**0.5))

    return guide


def slow_loop(model, guide, x, num_samples):
    """One joint draw at a time on the full data: values and log weights."""
    draws, log_w = {"mu": [], "z": [], "z_sq": []}, []
    for _ in range(num_samples):
        gt = poutine.trace(guide).get_trace(x)
        mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(x)
        for name in draws:
            draws[name].append(mt.nodes[name]["value"])
        log_w.append(mt.log_prob_sum() - gt.log_prob_sum())
    return {k: torch.stack(v).numpy() for k, v in draws.items()}, torch.stack(log_w)


@pytest.fixture(autouse=True, scope="module")
def _clean_param_store():
    """Pyro's parameter store is global: leave it as empty as we found it."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(0)
    mu = 1.5
    return (mu + torch.randn(N, generator=g) + torch.randn(N, generator=g)).double()


def _close(a, b, se, z=5.0):
    """Every entry of a - b within z combined Monte Carlo standard errors."""
    a, b, se = map(np.asarray, (a, b, se))
    assert a.shape == b.shape
    assert np.all(np.abs(a - b) <= z * se + 1e-9), np.max(np.abs(a - b) / se)


@pytest.mark.parametrize("batch_size", [None, 7, N, 1000])
def test_exact_guide_gives_the_closed_form_evidence_with_every_chunking(x, batch_size):
    # With the exact posterior as guide every log weight equals log p(x): the weights are
    # constant only if every chunk's z is drawn given the same mu (a joint draw) and each
    # site's log density is counted once, unscaled.
    _, _, log_px = exact_posterior(x)
    out = sample_posterior(model, make_guide(x), x, num_samples=300, batch_size=batch_size, seed=1)
    np.testing.assert_allclose(out["log_weights"], log_px, rtol=0, atol=1e-8)
    assert out["log_evidence"].value == pytest.approx(log_px, abs=1e-8)
    assert out["log_evidence"].stderr < 1e-8


def test_evidence_of_an_inexact_guide_is_within_its_stderr_of_the_closed_form(x):
    _, _, log_px = exact_posterior(x)
    out = sample_posterior(
        model, make_guide(x, widen=1.3, shift=0.1), x, num_samples=4000, batch_size=9, seed=2
    )
    ev = out["log_evidence"]
    assert out["khat"] < 0.5 and ev.khat == out["khat"] and ev.n_particles == 4000
    assert 0 < ev.stderr < 0.05
    assert abs(ev.value - log_px) < 4 * ev.stderr
    # An inexact guide has varying weights (the check above is not the constant case).
    assert np.std(out["log_weights"]) > 0.01


def test_khat_and_evidence_are_sbi_vi_psis_of_the_returned_log_weights(x):
    out = sample_posterior(model, make_guide(x, widen=0.7), x, num_samples=500, seed=3)
    ref = psis(torch.as_tensor(out["log_weights"]))
    assert out["khat"] == pytest.approx(ref.khat, abs=1e-12)
    assert out["log_evidence"].value == pytest.approx(ref.log_evidence, abs=1e-12)
    w = np.exp(out["log_weights"] - out["log_weights"].max())
    assert out["log_evidence"].stderr == pytest.approx(
        np.std(w, ddof=1) / math.sqrt(500) / w.mean(), rel=1e-9
    )


def test_matches_the_slow_loop_in_shape_and_distribution(x):
    guide = make_guide(x, widen=1.2, shift=0.2)
    s = 2000
    torch.manual_seed(4)
    ref, ref_log_w = slow_loop(model, guide, x, 300)
    out = sample_posterior(
        model, guide, x, num_samples=s, batch_size=11, return_samples=True, seed=5
    )
    samples = out["posterior_samples"]
    assert set(samples) == set(ref) == set(out["means"])
    for name, r in ref.items():
        assert samples[name].shape == (s, *r.shape[1:])
        for key in ("means", "stds", "q05", "q95"):
            assert out[key][name].shape == r.shape[1:]
        sd = r.std(0)
        se = sd * math.sqrt(1 / 300 + 1 / s)
        _close(out["means"][name], r.mean(0), se)
        _close(out["stds"][name], r.std(0), sd * math.sqrt(0.5 / 300 + 0.5 / s) * 1.5)
        _close(out["q05"][name], np.quantile(r, 0.05, axis=0), 2.5 * se)
        _close(out["q95"][name], np.quantile(r, 0.95, axis=0), 2.5 * se)
    # z and mu are drawn jointly: the correlation of mu with z_i matches the loop's.
    corr = np.corrcoef(samples["mu"], samples["z"].mean(1))[0, 1]
    ref_corr = np.corrcoef(ref["mu"], ref["z"].mean(1))[0, 1]
    assert abs(corr - ref_corr) < 0.1 and corr > 0.7
    # The same log weights, in distribution.
    lw = out["log_weights"]
    _close(lw.mean(), ref_log_w.mean(), lw.std() * math.sqrt(1 / 300 + 1 / s))


def test_minibatching_equals_one_batch(x):
    guide = make_guide(x, widen=1.1)
    full = sample_posterior(model, guide, x, num_samples=3000, seed=6, return_samples=True)
    again = sample_posterior(model, guide, x, num_samples=3000, seed=6, batch_size=N)
    chunked = sample_posterior(model, guide, x, num_samples=3000, seed=7, batch_size=6)
    for name in ("mu", "z", "z_sq"):
        # The same seed and one chunk: identical numbers.
        np.testing.assert_array_equal(again["means"][name], full["means"][name])
        np.testing.assert_array_equal(again["q95"][name], full["q95"][name])
        # Chunks of 6: the same distribution (the draws cannot align across layouts).
        se = full["posterior_samples"][name].std(0) * math.sqrt(2 / 3000)
        _close(chunked["means"][name], full["means"][name], se)


def test_autonormal_with_minibatches_and_observed_sites(x):
    guide = AutoNormal(model, init_scale=0.3)
    out = sample_posterior(
        model, guide, x, num_samples=400, batch_size=13, return_observed=True, seed=8
    )
    assert guide.create_plates is None  # the hook is removed afterwards
    assert out["means"]["z"].shape == (N,) and out["means"]["x"].shape == (N,)
    assert out["means"]["mu"].shape == ()
    # x is drawn from the posterior predictive, not returned as the data.
    assert np.all(out["stds"]["x"] > 0.5)
    assert np.isfinite(out["log_evidence"].value)


def test_summary_fun_and_return_sites(x):
    out = sample_posterior(
        model,
        make_guide(x),
        x,
        num_samples=50,
        return_sites=["z"],
        summary_fun={"median": np.median},
        seed=0,
    )
    assert set(out) == {"median", "log_weights", "khat", "log_evidence"}
    assert list(out["median"]) == ["z"] and out["median"]["z"].shape == (N,)


def test_seed_reproduces_and_leaves_the_global_rng_alone(x):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sample_posterior(model, make_guide(x), x, num_samples=20, seed=9, return_samples=True)
    after = torch.rand(1)
    b = sample_posterior(model, make_guide(x), x, num_samples=20, seed=9, return_samples=True)
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a["posterior_samples"]["z"], b["posterior_samples"]["z"])


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 12),
    num_samples=st.integers(2, 9),
    batch_size=st.one_of(st.none(), st.integers(1, 15)),
)
def test_shapes_for_any_chunking(n, num_samples, batch_size):
    x = torch.randn(n).double()
    out = sample_posterior(
        model,
        make_guide(x, widen=1.1),
        x,
        num_samples=num_samples,
        batch_size=batch_size,
        return_samples=True,
        return_observed=True,
        seed=0,
    )
    shapes = {k: v.shape for k, v in out["posterior_samples"].items()}
    assert shapes == {
        "mu": (num_samples,),
        "z": (num_samples, n),
        "z_sq": (num_samples, n),
        "x": (num_samples, n),
    }
    np.testing.assert_allclose(
        out["posterior_samples"]["z_sq"], out["posterior_samples"]["z"] ** 2, rtol=1e-12
    )
    assert out["log_weights"].shape == (num_samples,)


def test_a_model_with_plates_on_two_dims():
    # Genes on dim -1 (global per gene), cells on dim -2 (the observation plate).
    x = torch.randn(9, 3).double()

    def model2(x):
        with pyro.plate("genes", 3, dim=-1):
            g = pyro.sample("g", dist.Normal(0.0, 1.0))
            with pyro.plate("cells", 9, dim=-2) as idx:
                c = pyro.sample("c", dist.Normal(g, 1.0))
                pyro.sample("x", dist.Normal(c, 1.0), obs=x[idx])

    guide = AutoNormal(model2)
    out = sample_posterior(
        model2,
        guide,
        x,
        num_samples=30,
        batch_size=4,
        obs_plate="cells",
        seed=0,
        return_samples=True,
    )
    assert out["posterior_samples"]["g"].shape == (30, 3)
    assert out["posterior_samples"]["c"].shape == (30, 9, 3)


def test_bad_input_is_refused_with_the_remedy(x):
    guide = make_guide(x)
    with pytest.raises(ValueError, match="not a site of the model"):
        sample_posterior(model, guide, x, num_samples=5, return_sites=["nope"])
    with pytest.raises(ValueError, match="return_observed=True"):
        sample_posterior(model, guide, x, num_samples=5, return_sites=["x"])
    with pytest.raises(TypeError, match="return_sites"):
        sample_posterior(model, guide, x, num_samples=5, return_sites="z")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="batch_size"):
            sample_posterior(model, guide, x, num_samples=5, batch_size=bad)
    with pytest.raises(TypeError, match="batch_size"):
        sample_posterior(model, guide, x, num_samples=5, batch_size=2.5)
    with pytest.raises(ValueError, match="num_samples"):
        sample_posterior(model, guide, x, num_samples=1)
    with pytest.raises(ValueError, match=r"plate 'cells'.*'obs'"):
        sample_posterior(model, guide, x, num_samples=5, obs_plate="cells")
    with pytest.raises(TypeError, match="summary_fun"):
        sample_posterior(model, guide, x, num_samples=5, summary_fun={"m": 3})

    def no_plate(y):
        pyro.sample("y", dist.Normal(pyro.sample("m", dist.Normal(0.0, 1.0)), 1.0), obs=y)

    def no_plate_guide(y):
        pyro.sample("m", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no plates"):
        sample_posterior(no_plate, no_plate_guide, x[0], num_samples=5, obs_plate="obs")
    with pytest.raises(ValueError, match="subsamples no plate"):
        sample_posterior(no_plate, no_plate_guide, x[0], num_samples=5, batch_size=2)


def test_a_model_that_ignores_the_plate_indices_is_refused(x):
    def model_full_data(x):
        mu = pyro.sample("mu", dist.Normal(0.0, TAU))
        with pyro.plate("obs", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)  # x, not x[idx]

    guide = AutoNormal(model_full_data)
    with pytest.raises(ValueError, match="indices the plate yields"):
        sample_posterior(model_full_data, guide, x, num_samples=5, batch_size=8, obs_plate="obs")


def subsampled_model(x):
    """``model`` written with Pyro's tutorial idiom: a fixed ``subsample_size``."""
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), TAU))
    with pyro.plate("obs", len(x), subsample_size=7) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def test_a_fixed_subsample_size_is_walked_in_padded_chunks(x):
    # 40 = 5 * 7 + 5: the last chunk is padded to 7 and the padding dropped. The exact
    # guide keeps every log weight at log p(x): padding counted once would break that.
    _, _, log_px = exact_posterior(x)
    out = sample_posterior(
        subsampled_model,
        make_guide(x, subsample_size=7),
        x,
        num_samples=50,
        return_samples=True,
        seed=0,
    )
    assert out["posterior_samples"]["z"].shape == (50, N)
    np.testing.assert_allclose(out["log_weights"], log_px, rtol=0, atol=1e-8)
    # AutoNormal fitted on the subsampled model: locals for every observation.
    guide = AutoNormal(subsampled_model)
    out = sample_posterior(subsampled_model, guide, x, num_samples=20, batch_size=7, seed=0)
    assert out["means"]["z"].shape == (N,) and np.isfinite(out["log_evidence"].value)
    with pytest.raises(ValueError, match="subsample_size=7"):
        sample_posterior(subsampled_model, guide, x, num_samples=20, batch_size=8)


def test_joint_and_point_mass_autoguides(x):
    from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal

    guide = AutoDiagonalNormal(model)
    out = sample_posterior(model, guide, x, num_samples=30, seed=0)
    assert out["means"]["z"].shape == (N,) and np.isfinite(out["khat"])
    with pytest.raises(ValueError, match="draws every latent jointly"):
        sample_posterior(model, guide, x, num_samples=30, batch_size=8)
    # A point mass has no density: no weights to diagnose, but the summaries stand.
    out = sample_posterior(model, AutoDelta(model), x, num_samples=5, batch_size=8, seed=0)
    assert out["khat"] is None and out["log_evidence"] is None
    assert out["stds"]["z"].shape == (N,) and np.all(out["stds"]["z"] < 1e-6)
