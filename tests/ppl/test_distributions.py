"""sbi_vi.ppl.distributions: densities, moments and draws against scipy; shapes; supports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from torch.distributions import Normal, StudentT, biject_to, constraints

from sbi_vi.ppl.distributions import (
    FoldedDistribution,
    HalfCauchy,
    HalfNormal,
    HalfStudentT,
    ImproperUniform,
    InverseGamma,
    LKJCholesky,
    TruncatedNormal,
)
from sbi_vi.ppl.infer.sites import bijector

INF = math.inf
BOUNDS = [(-1.0, 2.0), (0.0, INF), (-INF, -0.5), (5.0, 7.0), (-9.0, -8.0), (-INF, INF), (30, 31)]


def _f64(*values):
    return [torch.as_tensor(v, dtype=torch.float64) for v in values]


# --- TruncatedNormal --------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high"), BOUNDS)
def test_truncated_normal_matches_scipy(low, high):
    loc, scale = 0.5, 1.5
    d = TruncatedNormal(*_f64(loc, scale, low, high), validate_args=False)
    ref = stats.truncnorm((low - loc) / scale, (high - loc) / scale, loc=loc, scale=scale)
    x = torch.as_tensor(ref.ppf(np.linspace(0.01, 0.99, 9)), dtype=torch.float64)
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref.logpdf(x.numpy()), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d.cdf(x).numpy(), ref.cdf(x.numpy()), atol=1e-9)
    np.testing.assert_allclose(float(d.mean), ref.mean(), rtol=1e-9)
    np.testing.assert_allclose(float(d.variance), ref.var(), rtol=1e-6)
    if math.isfinite(low):
        assert d.log_prob(torch.tensor(low - 0.1, dtype=torch.float64)) == -INF
    torch.manual_seed(0)
    draws = d.sample((4000,))
    assert bool(((draws >= low) & (draws <= high)).all())
    assert stats.kstest(draws.numpy(), ref.cdf).pvalue > 1e-3


def test_truncated_normal_far_tail_is_finite_in_float32():
    d = TruncatedNormal(0.0, 1.0, low=12.0, high=14.0)  # Z ≈ 1.8e-33: Φ(14) − Φ(12) is 0
    ref = stats.truncnorm(12.0, 14.0)
    x = torch.tensor([12.01, 12.5])
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref.logpdf(x.numpy()), rtol=1e-4)
    draws = d.sample((1000,))
    assert bool(torch.isfinite(draws).all()) and bool((draws >= 12).all())
    assert abs(float(draws.mean()) - ref.mean()) < 0.02


def test_truncated_normal_rsample_is_reparameterised():
    loc, scale, low = _f64(0.3, 1.2, 0.0)
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    torch.manual_seed(0)
    draws = TruncatedNormal(loc, scale, low=low).rsample((20_000,))
    draws.mean().backward()
    # d E[x] / d loc by central differences of the closed-form mean
    eps = 1e-5
    mean = lambda m: float(TruncatedNormal(m, 1.2, low=0.0).mean)  # noqa: E731
    expected = (mean(0.3 + eps) - mean(0.3 - eps)) / (2 * eps)
    assert loc.grad is not None and abs(float(loc.grad) - expected) < 0.03
    assert scale.grad is not None and bool(torch.isfinite(scale.grad))


def test_truncated_normal_gradients_are_finite_with_infinite_bounds():
    loc = torch.tensor(0.2, requires_grad=True)
    TruncatedNormal(loc, 1.0, low=-INF, high=1.0).log_prob(torch.tensor(0.5)).backward()
    assert bool(torch.isfinite(loc.grad))


def test_truncated_normal_support_follows_the_bounds():
    assert TruncatedNormal(0.0, 1.0).support is constraints.real
    assert isinstance(TruncatedNormal(0.0, 1.0, low=0.0).support, constraints.greater_than)
    assert isinstance(TruncatedNormal(0.0, 1.0, high=0.0).support, constraints.less_than)
    assert isinstance(TruncatedNormal(0.0, 1.0, -1.0, 1.0).support, constraints.interval)


def test_truncated_normal_rejects_bad_bounds():
    with pytest.raises(ValueError, match="`low` must be all finite or all"):
        TruncatedNormal(torch.zeros(2), 1.0, low=torch.tensor([0.0, -INF]))
    with pytest.raises(ValueError, match="`high` may be infinite only as inf"):
        TruncatedNormal(0.0, 1.0, high=-INF)
    with pytest.raises(ValueError, match="`low` must be below `high`"):
        TruncatedNormal(0.0, 1.0, low=1.0, high=0.0, validate_args=True)


# --- folded and half distributions --------------------------------------------------------


@pytest.mark.parametrize(("df", "scale"), [(1.0, 1.0), (3.0, 2.0), (30.0, 0.5)])
def test_half_student_t_matches_scipy(df, scale):
    d = HalfStudentT(*_f64(df, scale), validate_args=False)
    y = torch.linspace(0.01, 6.0, 13, dtype=torch.float64)
    ref = 2 * stats.t(df, scale=scale).pdf(y.numpy())
    np.testing.assert_allclose(d.log_prob(y).numpy(), np.log(ref), rtol=1e-10)
    assert float(d.log_prob(torch.tensor(-0.1, dtype=torch.float64))) == -INF
    half_t = stats.t(df, scale=scale)
    if df > 1:
        mean = 2 * integrate.quad(lambda v: v * half_t.pdf(v), 0, np.inf)[0]
        np.testing.assert_allclose(float(d.mean), mean, rtol=1e-6)
    if df > 2:
        second = 2 * integrate.quad(lambda v: v * v * half_t.pdf(v), 0, np.inf)[0]
        np.testing.assert_allclose(float(d.variance), second - mean**2, rtol=1e-5)
    torch.manual_seed(0)
    draws = d.sample((4000,)).numpy()
    assert draws.min() >= 0
    assert stats.kstest(draws, lambda v: 2 * half_t.cdf(v) - 1).pvalue > 1e-3


def test_half_student_t_moments_where_undefined():
    assert float(HalfStudentT(1.0).mean) == INF
    assert float(HalfStudentT(1.5).variance) == INF
    assert math.isnan(float(HalfStudentT(0.5).variance))


@pytest.mark.parametrize("loc", [0.0, 1.3])
def test_folded_normal_matches_scipy(loc):
    d = FoldedDistribution(Normal(*_f64(loc, 0.8)))
    ref = stats.foldnorm(loc / 0.8, scale=0.8)
    y = torch.linspace(0.0, 4.0, 9, dtype=torch.float64)
    np.testing.assert_allclose(d.log_prob(y).numpy(), ref.logpdf(y.numpy()), rtol=1e-9)
    torch.manual_seed(1)
    assert stats.kstest(d.rsample((4000,)).numpy(), ref.cdf).pvalue > 1e-3


def test_folded_half_student_t_agrees_with_the_generic_fold():
    y = torch.linspace(0.0, 5.0, 7, dtype=torch.float64)
    df, scale = _f64(4.0, 1.5)
    generic = FoldedDistribution(StudentT(df, torch.zeros(()).double(), scale))
    torch.testing.assert_close(HalfStudentT(df, scale).log_prob(y), generic.log_prob(y))


def test_folded_distribution_rejects_bad_bases():
    with pytest.raises(TypeError, match=r"`base` must be a torch\.distributions\.Distribution"):
        FoldedDistribution(1.0)
    with pytest.raises(ValueError, match="`base` must be univariate"):
        FoldedDistribution(torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)))


def test_torch_re_exports_match_scipy():
    y = torch.linspace(0.1, 4.0, 5, dtype=torch.float64)
    for ours, ref in [
        (HalfCauchy(torch.tensor(2.0).double()), stats.halfcauchy(scale=2.0)),
        (HalfNormal(torch.tensor(2.0).double()), stats.halfnorm(scale=2.0)),
        (InverseGamma(*_f64(3.0, 2.0)), stats.invgamma(3.0, scale=2.0)),
    ]:
        np.testing.assert_allclose(ours.log_prob(y).numpy(), ref.logpdf(y.numpy()), rtol=1e-9)


# --- ImproperUniform ----------------------------------------------------------------------


def test_improper_uniform_is_flat_on_its_support_and_cannot_be_sampled():
    d = ImproperUniform(constraints.positive, batch_shape=(3,), event_shape=(2,))
    assert d.support.event_dim == 1  # made independent over the event
    lp = d.log_prob(torch.ones(5, 3, 2))
    assert lp.shape == (5, 3) and bool((lp == 0).all())
    with pytest.raises(NotImplementedError, match=r"improper flat prior.*init_to_value"):
        d.sample()
    with pytest.raises(NotImplementedError, match="cannot be sampled"):
        d.rsample((2,))
    with pytest.raises(ValueError, match="within the support"):
        ImproperUniform(constraints.positive, validate_args=True).log_prob(torch.tensor(-1.0))
    assert ImproperUniform(constraints.real, (2,)).expand((4, 2)).log_prob(
        torch.zeros(2)
    ).shape == (
        4,
        2,
    )
    assert "GreaterThan(lower_bound=0.0)" in repr(d)


def test_improper_uniform_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"`support` must be a torch\.distributions\.constraints"):
        ImproperUniform("real")
    with pytest.raises(ValueError, match="`support` must be continuous"):
        ImproperUniform(constraints.nonnegative_integer)
    with pytest.raises(ValueError, match="has 1 event dim"):
        ImproperUniform(constraints.simplex, event_shape=())
    with pytest.raises(TypeError, match="`batch_shape` must be a tuple of ints"):
        ImproperUniform(constraints.real, batch_shape=2.5)


# --- shapes (fuzz) ------------------------------------------------------------------------

shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def _all(batch: tuple[int, ...]) -> list:
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    return [
        TruncatedNormal(zeros, ones, low=-ones),
        TruncatedNormal(zeros, ones, high=ones),
        HalfStudentT(3 * ones, ones),
        FoldedDistribution(Normal(zeros, ones)),
        ImproperUniform(constraints.interval(-2.0, 3.0), batch_shape=batch),
        LKJCholesky(3, 2 * ones),
    ]


@settings(max_examples=15, deadline=None)
@given(batch=shapes, extra=shapes, sample=shapes)
def test_expand_log_prob_and_draw_shapes(batch, extra, sample):
    for d in _all(batch):
        full = torch.Size(extra + batch)
        e = d.expand(full)
        assert e.batch_shape == full and e.event_shape == d.event_shape
        t = bijector(e.support)
        u = torch.randn((*sample, *t.inverse_shape(full + e.event_shape)))
        value = t(u)
        assert value.shape == (*sample, *full, *e.event_shape)
        assert bool(e.support.check(value).all())
        lp = e.log_prob(value)
        assert lp.shape == (*sample, *full) and bool(torch.isfinite(lp).all())
        if not isinstance(d, ImproperUniform):
            draw = e.sample(sample)
            assert draw.shape == value.shape and bool(e.support.check(draw).all())


@pytest.mark.parametrize("make", _all(()), ids=lambda d: type(d).__name__)
def test_every_support_has_a_bijection_from_unconstrained_space(make):
    t = biject_to(make.support)
    u = 3 * torch.randn(200, *t.inverse_shape(make.event_shape), dtype=torch.float64)
    x = t(u)
    assert bool(make.support.check(x).all())
    torch.testing.assert_close(t.inv(x), u, atol=1e-6, rtol=1e-6)
