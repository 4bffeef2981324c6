"""What SVI refuses or reports about a fit: a guide for another model, diverged or unreliable
fits, observed sites in summaries, and fitted objects that copy and pickle."""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from ppl_infer_models import (
    gaussian_data,
    gaussian_guide,
    gaussian_model,
    gaussian_posterior,
    local_model,
    make_local_data,
)
from torch.distributions import Normal

from sbi_vi.errors import DivergedWarning, QualityWarning
from sbi_vi.posteriors.quality import is_reliable
from sbi_vi.ppl import factor, plate, sample
from sbi_vi.ppl.infer import SVI, AutoDelta, AutoFlow, AutoMultivariateNormal, AutoNormal
from sbi_vi.ppl.infer.quality import check_diverged, nonfinite_sites


def _run(svi, steps, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QualityWarning)
        return svi.run(steps, *args, show_progress_bar=False, **kwargs)


# --- a guide built for another model ------------------------------------------------------


def grown_model(x, extra=True):
    mu = sample("mu", Normal(0.0, 2.0))
    shift = sample("shift", Normal(0.0, 1.0)) if extra else 0.0
    with plate("data", x.shape[0]):
        sample("x", Normal(mu + shift, 1.0), obs=x)


def renamed_model(x):
    loc = sample("loc", Normal(0.0, 2.0))
    with plate("data", x.shape[0]):
        sample("x", Normal(loc, 1.0), obs=x)


@pytest.mark.parametrize("guide_cls", [AutoNormal, AutoMultivariateNormal, AutoDelta])
def test_a_guide_built_for_another_model_is_refused_naming_the_sites(guide_cls):
    x = gaussian_data()
    with pytest.raises(ValueError, match=r"in the model but not in the guide: \['shift'\]"):
        _run(SVI(grown_model, guide_cls(gaussian_model), lr=0.01), 2, x)
    with pytest.raises(ValueError, match=r"in the guide but not in the model: \['shift'\]"):
        _run(SVI(gaussian_model, guide_cls(grown_model), lr=0.01), 2, x)
    with pytest.raises(ValueError, match=r"model but not in the guide: \['loc'\].*guide but not"):
        _run(SVI(renamed_model, guide_cls(gaussian_model), lr=0.01), 2, x)


def test_a_guide_set_up_earlier_is_checked_against_the_model_arguments_of_the_run():
    x = gaussian_data()
    guide = AutoNormal(grown_model).setup(x, extra=False)
    with pytest.raises(ValueError, match=r"model but not in the guide: \['shift'\]"):
        _run(SVI(grown_model, guide, lr=0.01), 2, x, extra=True)
    # a later run whose arguments add a site is refused when the model asks for it
    svi = SVI(grown_model, AutoNormal(grown_model), lr=0.01)
    _run(svi, 2, x, extra=False)
    with pytest.raises(ValueError, match=r"latent site 'shift' has no value from the guide"):
        _run(svi, 2, x, extra=True)


def test_the_guide_of_the_same_model_passes_and_trains():
    x = gaussian_data()
    guide = AutoNormal(gaussian_model).setup(x)
    result = _run(SVI(gaussian_model, guide, lr=0.05), 300, x, seed=0)
    mean, _ = gaussian_posterior(x)
    assert abs(float(result.params["mu_auto_loc"]) - mean) < 0.1


# --- diverged fits ------------------------------------------------------------------------


def half_nan_model():
    mu = sample("mu", Normal(0.0, 1.0))
    factor("cliff", torch.where(mu > 0, torch.nan, 0.0))


def kink_model():
    """A finite log density whose gradient is NaN for mu > 0 (0 · ∞: exp overflows there)."""
    mu = sample("mu", Normal(0.0, 1.0))
    factor("kink", torch.exp(-torch.exp(100 * mu + 89.0)))


def test_a_run_with_many_skipped_steps_warns_and_records_the_count():
    svi = SVI(kink_model, AutoNormal(kink_model, init_scale=1.0), lr=1e-3)
    with pytest.warns(DivergedWarning, match=r"of 200 steps were skipped.*num_skipped"):
        result = svi.run(200, seed=0, show_progress_bar=False)
    assert 40 < result.num_skipped < 160  # about half of the draws fall right of the kink
    assert result.num_skipped == int(torch.isnan(result.losses).sum()) == svi.num_skipped
    assert result.quality is None  # no PSIS on a diverged fit
    svi.step()
    assert svi.num_skipped - result.num_skipped in (0, 1)


def test_the_warning_names_the_sites_that_are_not_finite():
    svi = SVI(half_nan_model, AutoNormal(half_nan_model, init_scale=1.0), lr=0.01)
    _run(svi, 2, seed=0, quality_control=False)
    assert nonfinite_sites(svi, (), {}) == ["'cliff' (log density)"]
    assert nonfinite_sites(SVI(gaussian_model, AutoNormal(gaussian_model)), (), {}) == []


def test_non_finite_parameters_are_a_divergence_and_the_warning_can_be_an_error():
    x = gaussian_data()
    svi = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05)
    result = _run(svi, 50, x, seed=0)
    assert result.num_skipped == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergedWarning)
        assert not check_diverged(svi, (x,), {}, 0, 50)
        with torch.no_grad():
            next(iter(svi.guide.parameters())).fill_(math.nan)
        with pytest.raises(DivergedWarning, match=r"parameters are not all finite.*'mu' \(value"):
            check_diverged(svi, (x,), {}, 0, 50)


# --- quality control ----------------------------------------------------------------------


def test_an_unconverged_fit_gets_a_quality_warning_and_the_opt_out_silences_it():
    x = gaussian_data()
    svi = SVI(gaussian_model, AutoNormal(gaussian_model, init_scale=0.01), lr=1e-3)
    with pytest.warns(QualityWarning, match=r"PSIS k-hat = .*quality_control=False"):
        result = svi.run(3, x, seed=0, show_progress_bar=False)
    assert not is_reliable(result.quality)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QualityWarning)
        quiet = svi.run(3, x, seed=0, show_progress_bar=False, quality_control=False)
    assert quiet.quality is None


def test_a_converged_fit_passes_quality_control_without_moving_the_rng():
    x = gaussian_data()
    results, after = [], []
    for qc in (True, False):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", QualityWarning)
            svi = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05)
            results.append(svi.run(500, x, show_progress_bar=False, quality_control=qc))
        after.append(torch.rand(3))
    assert results[0].quality.khat < 0.5 and is_reliable(results[0].quality)
    assert torch.equal(after[0], after[1])  # the QC draws leave the caller's stream alone
    assert torch.equal(results[0].losses, results[1].losses)


def test_point_mass_guides_skip_quality_control():
    result = _run(SVI(gaussian_model, AutoDelta(gaussian_model), lr=0.05), 20, gaussian_data())
    assert result.quality is None


# --- observed sites in sample_posterior ---------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_fit():
    x = gaussian_data()
    return _run(SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05), 400, x, seed=0), x


def test_observed_sites_need_return_observed(gaussian_fit):
    result, _ = gaussian_fit
    with pytest.raises(ValueError, match=r"observed site\(s\) \['x'\].*return_observed=True"):
        result.sample_posterior(return_sites=["x"], num_samples=10)
    with pytest.raises(ValueError, match=r"\['x'\].*return_observed"):
        result.sample_posterior(return_sites=["mu", "x"], num_samples=10, batch_size=5)
    default = result.sample_posterior(num_samples=10, seed=0)
    assert set(default["means"]) == {"mu"}


def test_return_observed_gives_posterior_predictive_draws(gaussian_fit):
    """x_rep_i = mu + ε_i with mu ~ q = N(m, s²): mean m, sd √(s² + 1), every column."""
    result, x = gaussian_fit
    n = 4000
    out = result.sample_posterior(
        return_sites=["x"], return_observed=True, num_samples=n, return_samples=True, seed=1
    )
    draws = out["posterior_samples"]["x"]
    assert draws.shape == (n, x.shape[0]) and out["means"]["x"].shape == x.shape
    m = float(result.params["mu_auto_loc"])
    sd = math.sqrt(float(result.params["mu_auto_scale"]) ** 2 + 1.0)
    assert np.abs(draws.mean(0) - m).max() < 4.5 * sd / math.sqrt(n)
    assert np.abs(draws.std(0) / sd - 1).max() < 0.08
    assert not np.allclose(draws.mean(0), x.numpy(), atol=0.3)  # not the data


def test_posterior_predictive_of_a_local_site_in_chunks_matches_its_latents():
    y = make_local_data()
    result = _run(SVI(local_model, AutoNormal(local_model), lr=0.05), 200, y, seed=0)
    out = result.sample_posterior(
        return_sites=["theta", "y"], return_observed=True, num_samples=3000,
        return_samples=True, batch_size=5, seed=0,
    )  # fmt: skip
    theta, y_rep = out["posterior_samples"]["theta"], out["posterior_samples"]["y"]
    assert theta.shape == y_rep.shape == (3000, 12)
    residual = y_rep - theta  # y_i ~ N(theta_i, 0.5²) from the same draw of theta
    assert np.abs(residual.std(0) / 0.5 - 1).max() < 0.1
    assert np.abs(residual.mean(0)).max() < 4.5 * 0.5 / math.sqrt(3000)


# --- copies -------------------------------------------------------------------------------

COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda obj: pickle.loads(pickle.dumps(obj))}
FITS = [
    (gaussian_model, AutoNormal, gaussian_data),
    (gaussian_model, AutoMultivariateNormal, gaussian_data),
    (gaussian_model, AutoFlow, gaussian_data),
    (gaussian_model, AutoDelta, gaussian_data),
    (gaussian_model, lambda model: gaussian_guide, gaussian_data),
    (local_model, AutoNormal, make_local_data),
]


@pytest.mark.parametrize("how", sorted(COPIES))
@pytest.mark.parametrize(("model", "guide", "data"), FITS)
def test_a_trained_result_copies_and_the_copy_draws_the_same_samples(how, model, guide, data):
    y = data()
    svi = SVI(model, guide(model), lr=0.02)
    result = _run(svi, 20, y, seed=0)
    svi.step(y)  # a step after the run leaves nothing behind either
    clone = COPIES[how](result)
    assert clone.svi is not svi and clone.num_skipped == result.num_skipped
    draws = [
        r.sample_posterior(num_samples=50, seed=3, return_samples=True)["posterior_samples"]
        for r in (result, clone)
    ]
    assert draws[0].keys() == draws[1].keys()
    for site in draws[0]:
        np.testing.assert_array_equal(draws[0][site], draws[1][site])
    before = {k: v.clone() for k, v in svi.get_params().items()}
    _run(clone.svi, 5, y, seed=1)  # the copy trains on its own
    after = svi.get_params()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_copy_of_a_result_evaluates_like_the_original():
    x = gaussian_data()
    result = _run(SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05), 50, x, seed=0)
    result.evaluate(num_samples=100, seed=0)
    clone = copy.deepcopy(result)
    assert clone.log_evidence(num_samples=100, seed=2) == result.log_evidence(
        num_samples=100, seed=2
    )
