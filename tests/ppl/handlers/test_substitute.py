"""substitute and condition."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from sbi_vi.ppl import deterministic, param, plate, sample
from sbi_vi.ppl.handlers import condition, substitute, trace


def model():
    w = param("w", torch.zeros(()))
    a = sample("a", Normal(w, 1.0))
    with plate("data", 10, subsample_size=2) as idx:
        pass
    deterministic("d", a + 1)
    return idx


def test_substitute_fixes_sample_param_plate_and_deterministic_sites():
    data = {
        "w": torch.tensor(3.0),
        "a": torch.tensor(1.0),
        "data": torch.tensor([4, 5]),
        "d": torch.tensor(-1.0),
    }
    tr = trace(substitute(model, data=data)).get_trace()
    assert all(torch.equal(tr[name].value, value) for name, value in data.items())
    assert not tr["a"].is_observed


def test_substitute_fn_sees_the_message():
    tr = trace(
        substitute(model, substitute_fn=lambda msg: torch.tensor(9.0) if msg.name == "a" else None)
    ).get_trace()
    assert tr["a"].value == 9.0 and tr["w"].value == 0.0


def test_condition_observes_sample_sites():
    tr = trace(condition(model, data={"a": 2.0, "w": 5.0})).get_trace()
    assert tr["a"].is_observed and tr["a"].value == torch.tensor(2.0)
    assert tr["w"].value == 0.0  # condition only touches sample sites
    tr = trace(condition(model, condition_fn=lambda msg: torch.tensor(0.5))).get_trace()
    assert tr["a"].value == 0.5 and tr["a"].is_observed


def test_the_outermost_value_setter_wins():
    inner_condition = substitute(condition(model, data={"a": 1.0}), data={"a": torch.tensor(5.0)})
    tr = trace(inner_condition).get_trace()
    assert tr["a"].value == 5.0 and tr["a"].is_observed
    tr = trace(condition(substitute(model, data={"a": torch.tensor(5.0)}), data={"a": 1.0}))
    assert tr.get_trace()["a"].value == 1.0


@pytest.mark.parametrize("handler", [substitute, condition])
def test_exactly_one_source_of_values(handler):
    with pytest.raises(ValueError, match="exactly one"):
        handler(model)
    with pytest.raises(ValueError, match="exactly one"):
        handler(model, {"a": 1.0}, lambda msg: None)
    with pytest.raises(TypeError, match="mapping"):
        handler(model, data=[1.0])
