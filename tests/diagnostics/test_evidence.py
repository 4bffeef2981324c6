"""``log_evidence_from_log_weights``: the one evidence estimator every front end calls."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal

from sbi_vi.diagnostics import LogEvidence, log_evidence_from_log_weights, log_mean_weight, psis


def gaussian_log_weights(n: int, log_z: float, q_scale: float, seed: int) -> torch.Tensor:
    """Weights of q = N(0, q_scale²) for the target exp(log_z) N(0, 1): evidence exp(log_z)."""
    g = torch.Generator().manual_seed(seed)
    theta = q_scale * torch.randn(n, generator=g, dtype=torch.float64)
    target = Normal(0.0, 1.0).log_prob(theta) + log_z
    return target - Normal(0.0, q_scale).log_prob(theta)


def test_estimate_value_khat_and_stderr_are_those_of_the_weights():
    log_w = gaussian_log_weights(5000, 1.5, 1.3, seed=0)
    est = log_evidence_from_log_weights(log_w)
    assert est.value == pytest.approx(float(log_mean_weight(log_w)))
    assert est.khat == pytest.approx(float(psis(log_w).khat))
    w = log_w.exp()
    assert est.stderr == pytest.approx(float(w.std() / w.mean()) / math.sqrt(5000))
    assert est.n_particles == 5000 and est.reliable and abs(est.value - 1.5) < 4 * est.stderr


def test_the_standard_error_is_the_spread_of_the_estimate_over_replicates():
    estimates = [
        log_evidence_from_log_weights(gaussian_log_weights(500, 0.0, 1.3, s)) for s in range(200)
    ]
    values = torch.tensor([e.value for e in estimates])
    mean_se = sum(e.stderr for e in estimates) / len(estimates)
    assert float(values.std()) == pytest.approx(mean_se, rel=0.2)
    assert abs(float(values.mean())) < 3 * mean_se / math.sqrt(200) + mean_se**2  # bias ~ se²/2


def test_a_batch_is_estimated_column_by_column():
    columns = [gaussian_log_weights(300, z, 1.2, s) for s, z in enumerate((0.0, -2.0, 3.0))]
    batched = log_evidence_from_log_weights(torch.stack(columns, 1))
    assert batched.value.shape == batched.stderr.shape == batched.khat.shape == (3,)
    for b, column in enumerate(columns):
        single = log_evidence_from_log_weights(column)
        assert float(batched.value[b]) == pytest.approx(single.value)
        assert float(batched.stderr[b]) == pytest.approx(single.stderr)
        assert float(batched.khat[b]) == pytest.approx(single.khat, abs=1e-9)
    assert batched.reliable.shape == (3,) and batched == log_evidence_from_log_weights(
        torch.stack(columns, 1)
    )


def test_all_zero_weights_give_minus_inf_with_an_infinite_error():
    log_w = torch.stack([torch.full((10,), -math.inf), torch.zeros(10)], 1)
    est = log_evidence_from_log_weights(log_w)
    assert est.value[0] == -math.inf and est.stderr[0] == math.inf and not est.reliable[0]
    assert est.value[1] == 0.0 and est.stderr[1] == 0.0


def test_bad_weights_are_refused():
    with pytest.raises(TypeError, match="`log_w` must be a tensor"):
        log_evidence_from_log_weights([0.0, 1.0])
    with pytest.raises(ValueError, match="at least 2 particles"):
        log_evidence_from_log_weights(torch.zeros(1))
    with pytest.raises(ValueError, match="NaN"):
        log_evidence_from_log_weights(torch.tensor([0.0, math.nan]))


def test_every_front_end_uses_the_same_class():
    from sbi_vi.ppl.infer import LogEvidence as PPLLogEvidence
    from sbi_vi.ppl.infer.evidence import LogEvidence as InferLogEvidence

    assert PPLLogEvidence is LogEvidence and InferLogEvidence is LogEvidence
    pyro_interop = pytest.importorskip("sbi_vi.ppl.pyro")
    log_w = gaussian_log_weights(400, 0.5, 1.2, seed=1).float()
    khat, evidence = pyro_interop._evidence(log_w)
    assert evidence == log_evidence_from_log_weights(log_w.double()) and khat == evidence.khat


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 50),
    batch=st.lists(st.integers(1, 3), max_size=2),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_shapes_follow_the_batch(n, batch, dtype):
    log_w = torch.randn(n, *batch, dtype=dtype)
    est = log_evidence_from_log_weights(log_w)
    if batch:
        assert est.value.shape == est.stderr.shape == est.khat.shape == tuple(batch)
        assert bool(torch.isfinite(est.value).all()) and bool((est.stderr >= 0).all())
    else:
        assert isinstance(est.value, float) and isinstance(est.stderr, float)
        assert math.isfinite(est.value) and est.stderr >= 0
    assert isinstance(est, LogEvidence) and est.n_particles == n
