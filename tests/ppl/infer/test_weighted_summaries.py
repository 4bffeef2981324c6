"""PSIS-weighted summaries of ``sample_posterior``: against closed forms, and their flags."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ppl_infer_models import (
    gaussian_data,
    gaussian_model,
    gaussian_posterior,
    local_model,
    make_local_data,
)
from scipy import stats

from sbi_vi.errors import QualityWarning
from sbi_vi.ppl.infer import SVI, AutoNormal
from sbi_vi.ppl.infer.summary import weighted_quantile, weighted_summaries

Z05 = stats.norm.ppf(0.05)


@pytest.fixture(scope="module")
def off_fit():
    """A conjugate model whose guide is moved 0.6 posterior sd off and made 1.3x too wide."""
    x = gaussian_data(20)
    guide = AutoNormal(gaussian_model)
    result = SVI(gaussian_model, guide, lr=0.05).run(
        500, x, seed=0, show_progress_bar=False, quality_control=False
    )
    mean, sd = gaussian_posterior(x)
    with torch.no_grad():
        loc, raw = guide.family.params
        loc.fill_(mean + 0.6 * sd)
        raw.fill_(math.log(math.expm1(1.3 * sd)))  # softplus^-1
    return result, mean, sd


def test_weighted_summaries_are_closer_to_the_posterior_than_the_guide(off_fit):
    result, mean, sd = off_fit
    q95 = mean - Z05 * sd
    errors = {"none": [], "psis": []}
    for seed in range(5):
        plain = result.sample_posterior(num_samples=2000, seed=seed)
        out = result.sample_posterior(num_samples=2000, seed=seed, importance_weighted=True)
        assert out["weighting"] == "psis" and out["khat"] <= 0.7
        assert "weighting" not in plain
        for key, res in (("none", plain), ("psis", out)):
            errors[key].append(
                (
                    abs(float(res["means"]["mu"]) - mean) / sd,
                    abs(float(res["stds"]["mu"]) / sd - 1),
                    abs(float(res["q95"]["mu"]) - q95) / sd,
                )
            )
    none, weighted = np.mean(errors["none"], 0), np.mean(errors["psis"], 0)
    assert none[0] > 0.5 and none[1] > 0.2  # the guide is off by construction
    assert (weighted < 0.1).all(), weighted  # weighted: back on the posterior
    assert (weighted < none / 4).all()


def test_no_weighting_when_khat_is_too_large(off_fit):
    result, mean, sd = off_fit
    guide = result.guide
    with torch.no_grad():
        loc, raw = guide.family.params
        saved = loc.clone(), raw.clone()
        loc.fill_(mean + 3 * sd)
        raw.fill_(math.log(math.expm1(0.5 * sd)))  # far off and too narrow: k-hat >> 0.7
    try:
        with pytest.warns(QualityWarning, match="k-hat = .* > 0.7"):
            out = result.sample_posterior(num_samples=500, seed=0, importance_weighted=True)
        plain = result.sample_posterior(num_samples=500, seed=0)
    finally:
        with torch.no_grad():
            loc.copy_(saved[0])
            raw.copy_(saved[1])
    assert out["khat"] > 0.7 and out["weighting"].startswith("none (k-hat")
    assert out["means"]["mu"] == plain["means"]["mu"]


def test_local_latents_weighted_whole_and_flagged_when_chunked():
    y = make_local_data()
    result = SVI(local_model, AutoNormal(local_model), lr=0.05).run(
        300, y, seed=0, show_progress_bar=False, quality_control=False
    )
    whole = result.sample_posterior(
        num_samples=300, seed=0, importance_weighted=True, return_samples=True
    )
    assert whole["khat"] is not None and np.isfinite(whole["khat"])
    if whole["weighting"] == "psis":
        w = whole["importance_weights"]
        assert w.shape == (300,) and np.isclose(w.sum(), 1.0)
        theta = whole["posterior_samples"]["theta"]
        assert np.allclose(whole["means"]["theta"], (w[:, None] * theta).sum(0), atol=1e-4)
    assert whole["means"]["theta"].shape == (12,)
    chunked = result.sample_posterior(
        num_samples=300, seed=0, batch_size=5, importance_weighted=True
    )
    assert chunked["weighting"].startswith("none (batch_size") and chunked["khat"] is None
    assert chunked["means"]["theta"].shape == (12,)
    custom = result.sample_posterior(
        num_samples=50, seed=0, summary_fun={"median": np.median}, importance_weighted=True
    )
    assert custom["weighting"].startswith("none (a custom summary_fun")
    assert set(custom) == {"median", "weighting", "khat"}


def test_importance_weighted_must_be_a_bool(off_fit):
    with pytest.raises(TypeError, match="importance_weighted"):
        off_fit[0].sample_posterior(num_samples=10, importance_weighted="yes")


def test_weighted_quantile_matches_closed_forms():
    rng = np.random.default_rng(0)
    # draws from N(0, 1) reweighted to N(1, 1): w ∝ exp(x - 1/2)
    x = rng.standard_normal(200_000)
    w = np.exp(x - x.max())
    w /= w.sum()
    for level in (0.05, 0.5, 0.95):
        assert abs(weighted_quantile(x, w, level) - (1 + stats.norm.ppf(level))) < 0.03
    s = weighted_summaries(x[:, None], w)
    assert abs(s["means"][0] - 1) < 0.02 and abs(s["stds"][0] - 1) < 0.02


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 60),
    shape=st.lists(st.integers(1, 3), max_size=2),
    level=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**16),
)
def test_weighted_summaries_shapes_and_equal_weights(n, shape, level, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    equal = np.full(n, 1.0 / n)
    s = weighted_summaries(x, equal)
    assert all(v.shape == tuple(shape) and v.dtype == np.float32 for v in s.values())
    assert np.allclose(s["means"], x.mean(0), atol=1e-5)
    assert np.allclose(s["stds"], x.std(0), atol=1e-5)
    q = weighted_quantile(x.astype(np.float64), equal, level)
    assert (q >= x.min(0) - 1e-9).all() and (q <= x.max(0) + 1e-9).all()
    hazen = np.quantile(x.astype(np.float64), level, axis=0, method="hazen")
    assert np.allclose(q, hazen, atol=1e-6)
