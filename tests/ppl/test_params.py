"""The explicit parameter store."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.distributions import constraints

from sbi_vi.ppl import ParamStore


def test_values_are_constrained_and_leaves_unconstrained():
    store = ParamStore()
    s = store.setdefault("s", torch.tensor([1.0, 2.0]), constraint=constraints.positive)
    p = store.setdefault("p", torch.tensor([0.2, 0.8]), constraint=constraints.simplex)
    r = store.setdefault("r", torch.tensor(0.3), constraint=constraints.interval(0.0, 1.0))
    assert torch.allclose(s, torch.tensor([1.0, 2.0]))
    assert torch.allclose(store.unconstrained("s"), torch.tensor([1.0, 2.0]).log())
    assert torch.allclose(p, torch.tensor([0.2, 0.8])) and store.unconstrained("p").shape == (1,)
    assert torch.allclose(r, torch.tensor(0.3))
    assert all(isinstance(x, nn.Parameter) and x.requires_grad for x in store.parameters())
    (s.sum() + p[0] + r).backward()
    assert all(x.grad is not None for x in store.parameters())
    assert store.constraint("s") is constraints.positive


def test_the_stored_value_wins_over_a_later_init_value():
    store = ParamStore()
    store.setdefault("w", torch.zeros(2))
    assert torch.equal(store.setdefault("w", torch.ones(2)), torch.zeros(2))
    assert torch.equal(store.get("w"), store["w"])
    calls = []
    store.setdefault("c", lambda: calls.append(1) or torch.ones(1))
    store.setdefault("c", lambda: calls.append(1) or torch.ones(1))
    assert calls == [1]


def test_bad_initial_values_and_unknown_names():
    store = ParamStore()
    with pytest.raises(ValueError, match=r"'s'.*outside its constraint"):
        store.setdefault("s", torch.tensor(-1.0), constraint=constraints.positive)
    with pytest.raises(ValueError, match=r"'m'.*no `init_value`"):
        store.setdefault("m", None)
    with pytest.raises(TypeError, match="constraint"):
        store.setdefault("t", torch.ones(1), constraint="positive")  # type: ignore[arg-type]
    store.setdefault("a", torch.zeros(1))
    with pytest.raises(KeyError, match=r"'b'.*'a'"):
        store.get("b")


def test_mapping_protocol_and_repr():
    store = ParamStore()
    store.setdefault("a", torch.zeros(2))
    store.setdefault("b", 1.5)
    assert "a" in store and len(store) == 2 and list(store) == ["a", "b"] == store.keys()
    assert [name for name, _ in store.named_parameters()] == ["a", "b"]
    assert set(store.constrained()) == {"a", "b"}
    assert repr(store) == "ParamStore(a: (2,), b: ())"
    store.clear()
    assert len(store) == 0


def test_state_dict_round_trip_through_torch_save():
    store = ParamStore()
    store.setdefault("s", torch.tensor([1.0, 2.0]), constraint=constraints.positive)
    store.setdefault("w", torch.zeros(3))
    buffer = io.BytesIO()
    torch.save(store.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh = ParamStore()
    fresh.load_state_dict(state)
    with pytest.raises(KeyError, match="constraint is known only once"):
        fresh.get("s")
    s = fresh.setdefault("s", torch.tensor([5.0, 5.0]), constraint=constraints.positive)
    assert torch.allclose(s, torch.tensor([1.0, 2.0]))
    assert torch.equal(fresh.setdefault("w", None), torch.zeros(3))

    leaf = store.unconstrained("w")
    store.load_state_dict({**state, "w": torch.ones(3)})  # in place: optimisers keep working
    assert store.unconstrained("w") is leaf and torch.equal(leaf, torch.ones(3))


def test_load_state_dict_checks_shapes_and_missing_names():
    store = ParamStore()
    store.setdefault("w", torch.zeros(3))
    with pytest.raises(ValueError, match=r"'w'.*\(3,\).*\(2,\)"):
        store.load_state_dict({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"lacks parameters \['w'\]"):
        store.load_state_dict({})
    store.load_state_dict({}, strict=False)
