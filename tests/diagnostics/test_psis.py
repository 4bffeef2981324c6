"""Tests of sbi_vi.diagnostics.psis: k-hat, ESS, log-evidence, edge cases."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from sbi_vi.diagnostics import PSISResult, khat_threshold, khat_verdict, psis


def _log_weights(q_scale: float, n: int, seed: int, log_c: float = 0.0) -> torch.Tensor:
    """log w for target c·N(0, 1) and proposal N(0, q_scale²), particles from the proposal."""
    theta = q_scale * torch.randn(n, generator=torch.Generator().manual_seed(seed))
    log_p = log_c + Normal(0.0, 1.0).log_prob(theta)
    return log_p - Normal(0.0, q_scale).log_prob(theta)


def test_wide_proposal_gives_small_khat():
    result = psis(_log_weights(1.5, 4000, seed=0))
    assert isinstance(result, PSISResult)
    assert isinstance(result.khat, float)
    assert result.khat < 0.5
    assert result.reliable is True


def test_narrow_proposal_gives_large_khat():
    # Weights exp(c θ²) under a too-narrow q have a Pareto tail with k = 1 − σ_q² (0.94 here).
    result = psis(_log_weights(0.25, 10_000, seed=0))
    assert result.khat > 0.7
    assert result.reliable is False


def test_batched_equals_column_by_column():
    columns = [_log_weights(s, 2000, seed=i) for i, s in enumerate([1.5, 1.0, 0.5, 0.3])]
    log_w = torch.stack(columns, dim=1).reshape(2000, 2, 2)
    batched = psis(log_w)
    assert batched.khat.shape == (2, 2)
    assert batched.log_weights.shape == log_w.shape
    assert batched.reliable.dtype == torch.bool
    flat_k = batched.khat.reshape(-1)
    flat_lw = batched.log_weights.reshape(2000, -1)
    for j, column in enumerate(columns):
        single = psis(column)
        assert flat_k[j].item() == pytest.approx(single.khat, abs=1e-12)
        assert batched.ess.reshape(-1)[j].item() == pytest.approx(single.ess, rel=1e-10)
        assert batched.log_evidence.reshape(-1)[j].item() == pytest.approx(single.log_evidence)
        torch.testing.assert_close(flat_lw[:, j], single.log_weights)


def test_log_evidence_matches_known_normaliser():
    log_c = 2.5
    log_w = _log_weights(1.5, 4000, seed=1, log_c=log_c)
    result = psis(log_w)
    w = torch.exp(log_w - log_w.max())
    standard_error = (w.std() / w.mean() / math.sqrt(len(w))).item()  # delta method on log Ẑ
    assert abs(result.log_evidence - log_c) < 4 * standard_error


def test_weights_normalised_and_ess_in_range():
    result = psis(_log_weights(1.5, 3000, seed=2))
    assert torch.exp(result.log_weights).sum().item() == pytest.approx(1.0)
    assert 1.0 <= result.ess <= 3000
    # A good proposal keeps most of the sample size.
    assert result.ess > 0.5 * 3000
    narrow = psis(_log_weights(0.25, 3000, seed=2))
    assert 1.0 <= narrow.ess < result.ess


def test_equal_weights_give_full_ess():
    result = psis(torch.zeros(500))
    assert result.ess == pytest.approx(500.0)
    assert result.log_evidence == pytest.approx(0.0)


def test_numpy_input_and_dtype_kept():
    log_w = _log_weights(1.5, 1000, seed=3)
    from_numpy = psis(log_w.numpy())
    assert from_numpy.log_weights.dtype == torch.float64
    assert psis(log_w).log_weights.dtype == torch.float32
    assert from_numpy.khat == pytest.approx(psis(log_w).khat, abs=1e-5)


def test_minus_inf_entries_are_zero_weights():
    log_w = _log_weights(1.5, 2000, seed=4).double()
    log_w[::10] = -math.inf  # 10 % zero weights
    result = psis(log_w)
    assert math.isfinite(result.khat)
    assert torch.all(torch.exp(result.log_weights[::10]) == 0)
    assert torch.exp(result.log_weights).sum().item() == pytest.approx(1.0)
    kept = log_w[torch.isfinite(log_w)]
    expected = torch.logsumexp(kept, 0).item() - math.log(2000)
    assert result.log_evidence == pytest.approx(expected)


def test_all_minus_inf_column():
    log_w = _log_weights(1.5, 500, seed=5)[:, None].repeat(1, 3)
    log_w[:, 1] = -math.inf
    result = psis(log_w)
    assert math.isinf(result.khat[1].item())
    assert math.isfinite(result.khat[0].item()) and math.isfinite(result.khat[2].item())
    assert result.ess[1].item() == 0.0
    assert result.log_evidence[1].item() == -math.inf
    assert result.reliable.tolist() == [True, False, True]
    assert not torch.isnan(result.log_weights).any()

    single = psis(torch.full((100,), -math.inf))
    assert single.khat == math.inf and single.reliable is False


def test_nan_and_bad_inputs_raise():
    log_w = torch.zeros(100)
    log_w[3] = math.nan
    with pytest.raises(ValueError, match="log_w"):
        psis(log_w)
    with pytest.raises(ValueError, match="log_w"):
        psis(torch.tensor([0.0, math.inf, 1.0]))
    with pytest.raises(ValueError, match="log_w"):
        psis(torch.tensor(1.0))
    with pytest.raises(ValueError, match="log_w"):
        psis(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="log_w"):
        psis("not weights")
    with pytest.raises(ValueError, match="reff"):
        psis(torch.zeros(10), reff=0.0)


def test_khat_threshold():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(10**6) == 0.7
    assert khat_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert khat_threshold(1) == -math.inf
    with pytest.raises(ValueError, match="n_particles"):
        khat_threshold(0)


@pytest.mark.parametrize(
    ("khat", "n_particles", "start"),
    [
        (0.2, None, "good"),
        (0.5, None, "good"),
        (0.6, None, "ok"),
        (0.7, None, "ok"),
        (0.71, None, "unreliable"),
        (math.inf, None, "unreliable"),
        (0.6, 100, "unreliable"),  # bound 0.5 for 100 particles
        (0.6, 10_000, "ok"),
        (0.45, 50, "unreliable"),  # below 0.5, but above the bound 1 − 1/log10(50) ≈ 0.41
        (0.40, 50, "good"),
    ],
)
def test_khat_verdict(khat, n_particles, start):
    assert khat_verdict(khat, n_particles=n_particles).startswith(start)


def test_khat_verdict_inputs():
    assert khat_verdict(torch.tensor(0.3)).startswith("good")
    assert khat_verdict(np.array([0.9])).startswith("unreliable")
    with pytest.raises(ValueError, match="khat"):
        khat_verdict(torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="khat"):
        khat_verdict(math.nan)
