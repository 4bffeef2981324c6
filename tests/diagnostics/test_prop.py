"""Tests of sbi_vi.diagnostics.prop (sbi's `prop` quality metric)."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from sbi_vi.diagnostics import PropResult, prop_metric


def _particles(n: int = 4000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def _naive_r2(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """The metric computed literally on exp(log density), for moderate values only."""
    x, y = log_q.double().exp(), log_p.double().exp()
    slope = (x * y).sum() / (x * x).sum()
    return (1 - ((y - slope * x) ** 2).sum() / ((y - y.mean()) ** 2).sum()).item()


def test_proportional_q_is_good():
    theta = _particles()
    log_q = Normal(0.0, 1.0).log_prob(theta)
    result = prop_metric(log_q + 7.0, log_q)
    assert isinstance(result, PropResult)
    assert result.value == pytest.approx(1.0, abs=1e-9)
    assert result.good is True
    assert result.interpretation.startswith("good")
    assert result.n_particles == 4000


def test_mismatched_q_is_clearly_worse():
    theta = _particles()
    log_q = Normal(0.0, 1.0).log_prob(theta)
    close = prop_metric(Normal(0.0, 1.2).log_prob(theta), log_q).value
    far = prop_metric(Normal(1.0, 0.5).log_prob(theta), log_q)
    assert close > 0.5
    assert far.value < 0.5 and far.value < close - 0.4
    assert far.good is False
    assert far.interpretation.startswith("bad")


def test_matches_literal_formula_and_is_shift_invariant():
    theta = _particles(2000, seed=1)
    log_q = Normal(0.0, 1.0).log_prob(theta).double()
    log_p = Normal(0.3, 0.8).log_prob(theta).double() + 1.0
    expected = _naive_r2(log_p, log_q)
    assert prop_metric(log_p, log_q).value == pytest.approx(expected, rel=1e-9)
    # Huge normalisers would overflow exp(); the metric does not change.
    assert prop_metric(log_p + 1000.0, log_q - 800.0).value == pytest.approx(expected, rel=1e-9)


def test_batched_matches_columns():
    theta = _particles(1000, seed=2)
    log_q = Normal(0.0, 1.0).log_prob(theta)
    log_p = torch.stack([Normal(m, 1.0).log_prob(theta) for m in (0.0, 0.2, 2.0)], dim=1)
    result = prop_metric(log_p, log_q[:, None].expand(-1, 3))
    assert result.value.shape == (3,)
    for j in range(3):
        assert result.value[j].item() == pytest.approx(prop_metric(log_p[:, j], log_q).value)
    assert result.good.tolist() == [True, True, False]
    assert "2 of 3" in result.interpretation


def test_numpy_inputs_and_zero_target_density():
    theta = _particles(500, seed=3)
    log_q = Normal(0.0, 1.0).log_prob(theta).numpy()
    log_p = log_q.copy()
    log_p[:10] = -np.inf  # outside the support of the target
    value = prop_metric(log_p, log_q).value
    assert math.isfinite(value) and value < 1.0


def test_bad_inputs_raise():
    log_q = torch.zeros(10)
    with pytest.raises(ValueError, match="log_p"):
        prop_metric(torch.full((10,), math.nan), log_q)
    with pytest.raises(ValueError, match="log_q"):
        prop_metric(torch.zeros(10), torch.full((10,), math.inf))
    with pytest.raises(ValueError, match="log_p"):
        prop_metric(torch.full((10,), -math.inf), log_q)
    with pytest.raises(ValueError, match="same shape"):
        prop_metric(torch.zeros(10), torch.zeros(11))
    with pytest.raises(TypeError, match="log_p"):
        prop_metric([0.0, 1.0], log_q)
