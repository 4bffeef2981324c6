"""Fuzz the PPL's public entry points with bad and odd data: a clear error or a finite answer.

Every case ends in one of two ways: a ``ValueError``/``TypeError`` whose message names the
site (or the argument) at fault, or a fit whose losses, parameters and posterior summaries
are finite and have the documented shapes. Shapes, dtypes and NaN/inf entries of the
observations are drawn by hypothesis; each property keeps its examples few so the module
stays within ~20 s.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch.distributions import HalfNormal, Independent, Normal, Poisson

from sbi_vi.ppl import plate, sample
from sbi_vi.ppl.infer import SVI, AutoDelta, AutoMultivariateNormal, AutoNormal, Predictive

N = 4
FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def normal_model(y):
    mu = sample("mu", Normal(0.0, 2.0))
    with plate("data", N):
        sample("y", Normal(mu, 1.0), obs=y)


def vector_model(y):
    mu = sample("mu", Independent(Normal(torch.zeros(2), 2.0), 1))
    with plate("data", N):
        sample("y", Independent(Normal(mu, 1.0), 1), obs=y)


def scale_model(y):
    s = sample("s", HalfNormal(2.0))
    with plate("data", N):
        sample("y", HalfNormal(s), obs=y)


def count_model(y):
    rate = sample("rate", HalfNormal(5.0))
    with plate("data", N):
        sample("y", Poisson(rate), obs=y)


def subsampled_model(y):
    mu = sample("mu", Normal(0.0, 2.0))
    with plate("data", y.shape[0] if y.dim() else 1, subsample_size=2) as idx:
        sample("y", Normal(mu, 1.0), obs=y[idx] if y.dim() else y)


MODELS = {
    "normal": (normal_model, (N,)),
    "vector": (vector_model, (N, 2)),
    "scale": (scale_model, (N,)),
    "count": (count_model, (N,)),
    "subsampled": (subsampled_model, (N,)),
}
DTYPES = [torch.float32, torch.float64, torch.int64, torch.int32, torch.bool]


@st.composite
def observations(draw):
    """A model and data: the right shape or a perturbed one, any dtype, maybe NaN/inf."""
    name = draw(st.sampled_from(sorted(MODELS)))
    _, shape = MODELS[name]
    shape = list(shape)
    change = draw(st.sampled_from(["none", "none", "grow", "shrink", "extra", "drop"]))
    if change == "grow":
        shape[0] += draw(st.integers(1, 3))
    elif change == "shrink":
        shape[0] = draw(st.integers(0, shape[0] - 1))
    elif change == "extra":
        shape.append(draw(st.integers(2, 3)))
    elif change == "drop" and len(shape) > 1:
        shape.pop()
    dtype = draw(st.sampled_from(DTYPES))
    values = np.asarray(
        draw(st.lists(st.integers(0, 6), min_size=math.prod(shape), max_size=math.prod(shape)))
    ).reshape(shape)
    y = torch.as_tensor(values).to(dtype)
    special = draw(st.sampled_from(["none", "none", "nan", "inf", "-inf", "negative"]))
    if y.numel() and special != "none":
        flat = y.reshape(-1).clone() if y.is_floating_point() else y.reshape(-1).double()
        index = draw(st.integers(0, flat.numel() - 1))
        flat[index] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "negative": -1.5}[
            special
        ]
        y = flat.reshape(y.shape)
    return name, y


def _clear_error(err: Exception, names: tuple[str, ...]) -> None:
    """The error is a ValueError/TypeError that names one of ``names``."""
    assert isinstance(err, ValueError | TypeError), f"{type(err).__name__}: {err}"
    text = str(err)
    assert any(f"'{n}'" in text or f"`{n}`" in text for n in names), text


def _run(model, guide_cls, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svi = SVI(model, guide_cls(model), lr=0.05)
        return svi.run(15, y, seed=0, show_progress_bar=False, quality_control=False)


@FUZZ
@given(case=observations(), guide=st.sampled_from([AutoNormal, AutoDelta]))
def test_svi_on_fuzzed_data_gives_a_clear_error_or_a_finite_fit(case, guide):
    name, y = case
    model = MODELS[name][0]
    try:
        result = _run(model, guide, y)
    except (ValueError, TypeError) as err:
        _clear_error(err, ("y", "data"))
        event(f"{name}: refused")
        return
    event(f"{name}: fitted")
    assert bool(torch.isfinite(y.double()).all())  # never a fit on NaN/inf data
    assert result.num_skipped == 0 and bool(torch.isfinite(result.losses).all())
    assert all(bool(torch.isfinite(v).all()) for v in result.params.values())
    summary = result.sample_posterior(num_samples=20, seed=0)
    assert all(np.isfinite(v).all() for v in summary["means"].values())


@FUZZ
@given(case=observations())
def test_evidence_and_predictive_on_fuzzed_data(case):
    name, y = case
    model = MODELS[name][0]
    if name == "subsampled":
        return
    try:
        result = _run(model, AutoMultivariateNormal, y)
        evidence = result.log_evidence(num_samples=50, seed=0)
    except (ValueError, TypeError) as err:
        _clear_error(err, ("y", "data"))
        return
    assert math.isfinite(evidence.value)
    draws = Predictive(model, guide=result.guide, num_samples=6)(y, seed=0)
    assert draws["y"].shape[0] == 6 and bool(torch.isfinite(draws["y"].double()).all())


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    return_sites=st.one_of(
        st.none(),
        st.just("mu"),
        st.lists(st.sampled_from(["mu", "y", "theta", "nope"]), max_size=3),
    ),
    return_observed=st.sampled_from([False, True, 1]),
    num_samples=st.sampled_from([1, 3, 0, -1, 2.5]),
    batch_size=st.sampled_from([None, 1, 3, 0]),
)
def test_sample_posterior_arguments_give_a_clear_error_or_the_documented_shapes(
    fitted_normal, return_sites, return_observed, num_samples, batch_size
):
    result, y = fitted_normal
    try:
        out = result.sample_posterior(
            return_sites=return_sites, return_observed=return_observed, num_samples=num_samples,
            batch_size=batch_size, return_samples=True, seed=0,
        )  # fmt: skip
    except (ValueError, TypeError) as err:
        _clear_error(
            err, ("return_sites", "return_observed", "num_samples", "batch_size", "y", "nope")
        )
        return
    shapes = {"mu": (), "y": (N,)}
    for site, draws in out["posterior_samples"].items():
        assert draws.shape == (num_samples, *shapes[site]) and np.isfinite(draws).all()
        assert out["means"][site].shape == shapes[site]
    if return_sites is not None and "y" in return_sites:
        assert return_observed is True
        assert not np.array_equal(out["posterior_samples"]["y"][0], y.numpy())


@pytest.fixture(scope="module")
def fitted_normal():
    y = torch.tensor([0.5, 1.0, 1.5, 2.0])
    return _run(normal_model, AutoNormal, y), y
