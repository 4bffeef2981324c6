"""trace: recorded sites, per-site log densities, sums and batch log densities."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from sbi_vi.ppl import plate, sample
from sbi_vi.ppl.handlers import Trace, TraceMessenger, mask, substitute, trace

Y = torch.tensor([0.5, -1.0, 2.0])


def model():
    a = sample("a", Normal(0.0, 1.0))
    with plate("data", 3):
        sample("y", Normal(a, 1.0), obs=Y)
    return a


def test_each_call_gets_a_fresh_trace_of_live_messages():
    traced = trace(model)
    first = traced.get_trace()
    second = traced.get_trace()
    assert isinstance(first, Trace) and first is not second
    assert list(first) == ["a", "data", "y"]
    assert isinstance(traced, TraceMessenger)


def test_compute_log_prob_caches_scaled_and_unscaled_site_log_densities():
    tr = trace(model).get_trace()
    tr.compute_log_prob()
    a = tr["a"].value
    assert torch.allclose(tr["y"].log_prob, Normal(a, 1.0).log_prob(Y))
    assert tr["y"].log_prob.shape == (3,) and tr["a"].log_prob.shape == ()
    assert tr["y"].unscaled_log_prob is tr["y"].log_prob
    expected = Normal(0.0, 1.0).log_prob(a) + Normal(a, 1.0).log_prob(Y).sum()
    assert torch.allclose(tr.log_prob_sum(), expected)
    only_y = tr.log_prob_sum(site_filter=lambda name, msg: name == "y")
    assert torch.allclose(only_y, Normal(a, 1.0).log_prob(Y).sum())
    assert torch.allclose(tr.batch_log_prob(), expected)
    assert tr.batch_log_prob(["data"], lambda n, m: n == "y").shape == (3,)


def test_empty_selections_give_zeros_of_the_plate_shape():
    tr = trace(model).get_trace()
    none = lambda name, msg: False  # noqa: E731
    assert tr.log_prob_sum(none) == 0
    assert torch.equal(tr.batch_log_prob(["data"], none), torch.zeros(3))
    assert tr.plate_sites == ["data"]
    with pytest.raises(ValueError, match=r"no plate 'other'.*\['data'\]"):
        tr.batch_log_prob(["other"], none)


def test_masked_entries_add_zero():
    keep = torch.tensor([True, False, True])
    tr = trace(mask(model, mask=keep)).get_trace()
    per_obs = tr.batch_log_prob(["data"], lambda n, m: n == "y")
    assert per_obs[1] == 0 and per_obs[0] != 0


def test_a_value_the_distribution_cannot_score_names_the_site():
    tr = trace(substitute(model, data={"y": torch.zeros(7)})).get_trace()
    with pytest.raises(ValueError, match="site 'y'"):
        tr.log_prob_sum()
