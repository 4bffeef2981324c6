"""sample_posterior, evaluate (PSIS), log_evidence and to_inference_data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ppl_infer_models import (
    correlated_data,
    correlated_model,
    gaussian_data,
    gaussian_log_evidence,
    gaussian_model,
    gaussian_posterior,
    local_model,
)
from torch.distributions import Independent, Normal

from sbi_vi.ppl import plate, sample
from sbi_vi.ppl.infer import SVI, AutoDelta, AutoMultivariateNormal, AutoNormal

LOCAL_SHAPES = {"mu": (), "tau": (), "w": (3,), "theta": (12,), "shifted": (12,)}


@pytest.fixture(scope="module")
def local_fit():
    from ppl_infer_models import make_local_data

    y = make_local_data()
    svi = SVI(local_model, AutoNormal(local_model), lr=0.05)
    return svi.run(300, y, seed=0, show_progress_bar=False)


@pytest.mark.parametrize("batch_size", [None, 5, 12, 40])
def test_sample_posterior_shapes_for_global_event_and_local_sites(local_fit, batch_size):
    out = local_fit.sample_posterior(num_samples=64, batch_size=batch_size, return_samples=True)
    assert set(out) == {"means", "stds", "q05", "q95", "posterior_samples"}
    for key in ("means", "stds", "q05", "q95"):
        assert {k: v.shape for k, v in out[key].items()} == LOCAL_SHAPES
        assert all(isinstance(v, np.ndarray) for v in out[key].values())
    samples = out["posterior_samples"]
    assert {k: v.shape for k, v in samples.items()} == {
        k: (64, *s) for k, s in LOCAL_SHAPES.items()
    }
    assert np.allclose(samples["w"].sum(-1), 1.0, atol=1e-5)
    assert (samples["tau"] > 0).all()
    assert np.allclose(samples["shifted"], samples["theta"] + samples["w"][:, :1], atol=1e-5)
    assert (out["q05"]["theta"] < out["q95"]["theta"]).all()


def test_globals_are_drawn_once_and_locals_follow_their_data(local_fit):
    out = local_fit.sample_posterior(num_samples=400, batch_size=5, return_samples=True, seed=0)
    samples = out["posterior_samples"]
    # deterministic site of every chunk uses the same global draw
    assert np.allclose(samples["shifted"] - samples["theta"], samples["w"][:, :1], atol=1e-5)
    params = local_fit.guide.named_site_params()
    loc, scale = params["theta_auto_loc"].numpy(), params["theta_auto_scale"].numpy()
    se = scale / math.sqrt(400)  # theta has the identity link: its mean is the guide's loc
    assert (np.abs(out["means"]["theta"] - loc) < 4.5 * se).all()
    again = local_fit.sample_posterior(num_samples=400, batch_size=5, seed=0)
    assert np.array_equal(again["means"]["theta"], out["means"]["theta"])
    unbatched = local_fit.sample_posterior(num_samples=400, seed=0)
    assert (np.abs(unbatched["means"]["theta"] - out["means"]["theta"]) < 6 * se).all()


def test_summary_fun_return_sites_and_observed(local_fit):
    out = local_fit.sample_posterior(
        num_samples=50,
        return_sites=["theta", "y"],
        return_observed=True,
        summary_fun={"median": np.median, "iqr": lambda x, axis: np.subtract(
            *np.quantile(x, [0.75, 0.25], axis=axis))},
    )  # fmt: skip
    assert set(out) == {"median", "iqr"}
    assert set(out["median"]) == {"theta", "y"} and out["median"]["y"].shape == (12,)
    default = local_fit.sample_posterior(num_samples=50, return_observed=True, batch_size=5)
    assert default["means"]["y"].shape == (12,)
    # the posterior predictive of y is centred on the data it was fitted to
    y = local_fit.args[0].numpy()
    assert np.corrcoef(default["means"]["y"], y)[0, 1] > 0.8
    with pytest.raises(ValueError, match="not sites of the model"):
        local_fit.sample_posterior(return_sites=["nope"])
    with pytest.raises(TypeError, match="summary_fun"):
        local_fit.sample_posterior(summary_fun={"m": 3})
    with pytest.raises(ValueError, match="batch_size"):
        local_fit.sample_posterior(batch_size=0)
    with pytest.raises(ValueError, match="obs_plate"):
        local_fit.sample_posterior(obs_plate="nope")
    with pytest.raises(TypeError, match="use_gpu"):
        local_fit.sample_posterior(use_gpu=1.5)


def test_batch_size_needs_an_observation_plate():
    def model():
        sample("a", Normal(0.0, 1.0))
        sample("b", Normal(0.0, 1.0), obs=torch.tensor(0.3))

    result = SVI(model, AutoNormal(model), lr=0.05).run(5, show_progress_bar=False)
    assert result.sample_posterior(num_samples=10)["means"]["a"].shape == ()
    with pytest.raises(ValueError, match="observation plate"):
        result.sample_posterior(num_samples=10, batch_size=2)


@settings(max_examples=12, deadline=None)
@given(
    size=st.integers(2, 15),
    frac=st.floats(0.1, 1.0),
    batch=st.one_of(st.none(), st.integers(1, 20)),
    event=st.integers(1, 3),
    num_samples=st.integers(1, 7),
)
def test_sample_posterior_shapes_property(size, frac, batch, event, num_samples):
    subsample = max(1, round(frac * size))
    data = torch.randn(size, event)

    def model(data):
        mu = sample("mu", Independent(Normal(torch.zeros(event), 1.0), 1))
        with plate("data", size, subsample_size=subsample) as idx:
            z = sample("z", Independent(Normal(mu, 1.0), 1))
            sample("x", Independent(Normal(z, 1.0), 1), obs=data[idx])

    svi = SVI(model, AutoNormal(model), lr=0.01)
    result = svi.run(1, data, show_progress_bar=False)
    out = result.sample_posterior(
        num_samples=num_samples, batch_size=batch, return_samples=True, return_observed=True
    )
    samples = out["posterior_samples"]
    assert samples["mu"].shape == (num_samples, event)
    assert samples["z"].shape == (num_samples, size, event)
    assert samples["x"].shape == (num_samples, size, event)
    assert out["means"]["z"].shape == (size, event)


def test_evaluate_flags_a_bad_guide_and_passes_a_good_one():
    y = correlated_data()
    good = SVI(correlated_model, AutoMultivariateNormal(correlated_model), lr=0.05, n_particles=4)
    good_result = good.run(500, y, seed=0, show_progress_bar=False)
    assert good_result.evaluate(num_samples=2000, seed=0).khat < 0.7
    bad = SVI(correlated_model, AutoNormal(correlated_model), lr=0.05, n_particles=4)
    bad_result = bad.run(500, y, seed=0, show_progress_bar=False)
    assert bad_result.evaluate(num_samples=2000, seed=0).khat > 0.7
    # a guide much narrower than the posterior is flagged, untrained
    narrow = SVI(gaussian_model, AutoNormal(gaussian_model, init_scale=0.01))
    narrow.setup(gaussian_data())
    from sbi_vi.ppl.infer.evidence import evaluate

    assert evaluate(narrow, (gaussian_data(),), {}, num_samples=2000, seed=0).khat > 0.7


def test_log_evidence_matches_the_closed_form():
    x = gaussian_data()
    svi = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05, n_particles=8)
    result = svi.run(400, x, seed=0, show_progress_bar=False)
    estimate = result.log_evidence(num_samples=4000, seed=1)
    exact = gaussian_log_evidence(x)
    assert estimate.khat < 0.7 and 0 < estimate.stderr < 0.05
    assert abs(estimate.value - exact) < 4 * estimate.stderr + 1e-3
    mean, sd = gaussian_posterior(x)
    draws = result.sample_posterior(num_samples=4000, return_samples=True, seed=2)
    assert abs(float(draws["means"]["mu"]) - mean) < 0.1 * sd
    assert abs(float(draws["stds"]["mu"]) / sd - 1) < 0.1


def test_evaluate_uses_the_full_data_when_training_subsampled(local_fit):
    result = local_fit.evaluate(num_samples=300, seed=0)
    assert result.n_particles == 300 and math.isfinite(result.khat)
    full = local_fit.log_evidence(num_samples=300, seed=0)
    assert math.isfinite(full.value) and full.value < 0


def test_point_masses_have_no_importance_weights():
    result = SVI(gaussian_model, AutoDelta(gaussian_model), lr=0.05).run(
        2, gaussian_data(), show_progress_bar=False
    )
    with pytest.raises(ValueError, match="point mass"):
        result.evaluate()


def test_to_inference_data(local_fit):
    idata = local_fit.to_inference_data(num_samples=30, seed=0)
    assert set(idata.groups()) >= {"posterior", "observed_data"}
    assert idata.posterior["theta"].shape == (1, 30, 12)
    assert idata.posterior["w"].shape == (1, 30, 3)
    assert idata.observed_data["y"].shape == (12,)
