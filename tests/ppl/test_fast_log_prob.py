"""The fast log densities agree with torch's; validation_off restores torch's setting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import (
    Distribution,
    Gamma,
    HalfCauchy,
    HalfNormal,
    Independent,
    Normal,
)

from sbi_vi.ppl.fast_log_prob import log_prob, validation_off

shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)


def _builders(scale: torch.Tensor, loc: torch.Tensor) -> list[Distribution]:
    return [
        Normal(loc, scale, validate_args=False),
        HalfNormal(scale, validate_args=False),
        HalfCauchy(scale, validate_args=False),
        Independent(Normal(loc, scale, validate_args=False), 1)
        if loc.dim()
        else Normal(loc, scale, validate_args=False),
    ]


@settings(max_examples=25, deadline=None)
@given(shape=shapes, lead=shapes, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fast_densities_equal_torch(shape, lead, dtype):
    g = torch.Generator().manual_seed(hash((shape, lead)) % 2**31)
    loc = torch.randn(shape, generator=g, dtype=dtype)
    scale = torch.rand(shape, generator=g, dtype=dtype) * 3 + 0.05
    for d in _builders(scale, loc):
        value = torch.randn(lead + shape, generator=g, dtype=dtype) * 2
        expected = d.log_prob(value)
        got = log_prob(d, value)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, equal_nan=True)


def test_half_distributions_are_minus_inf_below_zero():
    value = torch.tensor([-1.0, 0.0, 1.0])
    for d in (HalfNormal(2.0, validate_args=False), HalfCauchy(2.0, validate_args=False)):
        got = log_prob(d, value)
        assert got[0] == -torch.inf
        torch.testing.assert_close(got[1:], d.log_prob(value)[1:])


def test_gradients_equal_torch():
    loc = torch.tensor([0.3, -1.0], requires_grad=True)
    scale = torch.tensor([0.5, 2.0], requires_grad=True)
    value = torch.tensor([1.0, 0.5], requires_grad=True)
    for fast in (True, False):
        d = Normal(loc, scale, validate_args=False)
        lp = log_prob(d, value) if fast else d.log_prob(value)
        grads = torch.autograd.grad(lp.sum(), (loc, scale, value))
        if fast:
            fast_grads = grads
    for a, b in zip(fast_grads, grads, strict=True):
        torch.testing.assert_close(a, b)


def test_validating_and_other_distributions_use_torch():
    d = Normal(0.0, 1.0, validate_args=True)
    with pytest.raises(ValueError):  # torch's support check still applies
        log_prob(d, torch.tensor(float("nan")))
    g = Gamma(2.0, 3.0, validate_args=False)
    torch.testing.assert_close(log_prob(g, torch.tensor(0.5)), g.log_prob(torch.tensor(0.5)))


def test_validation_off_restores_the_setting_even_on_error():
    before = Distribution._validate_args
    with pytest.raises(RuntimeError), validation_off():
        assert Distribution._validate_args is False
        Normal(0.0, -1.0)  # no argument check inside
        raise RuntimeError("boom")
    assert Distribution._validate_args is before
