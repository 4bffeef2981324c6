"""param_store: parameters come from an explicit store, never a global one."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import constraints

from sbi_vi.ppl import ParamStore, param
from sbi_vi.ppl.handlers import param_store, substitute, trace


def model_a():
    return param("w", torch.zeros(2))


def model_b():
    return param("w", torch.ones(3), constraint=constraints.positive)


def test_two_models_with_the_same_names_do_not_share_parameters():
    store_a, store_b = ParamStore(), ParamStore()
    wa = param_store(model_a, store=store_a)()
    wb = param_store(model_b, store=store_b)()
    assert wa.shape == (2,) and wb.shape == (3,)
    with torch.no_grad():
        store_a.unconstrained("w").add_(1.0)
    assert torch.equal(param_store(model_a, store=store_a)(), torch.ones(2))
    assert torch.allclose(param_store(model_b, store=store_b)(), torch.ones(3))
    assert torch.equal(model_a(), torch.zeros(2))  # no store: the initial value, nothing kept


def test_the_innermost_store_wins_and_substitute_beats_the_store():
    outer, inner = ParamStore(), ParamStore()
    with param_store(store=outer), param_store(store=inner):
        model_a()
    assert "w" in inner and "w" not in outer
    store = ParamStore()
    with param_store(store=store):
        tr = trace(substitute(model_a, data={"w": torch.full((2,), 7.0)})).get_trace()
    assert torch.equal(tr["w"].value, torch.full((2,), 7.0)) and "w" not in store


def test_param_store_needs_a_store():
    with pytest.raises(TypeError, match="ParamStore"):
        param_store(model_a)
