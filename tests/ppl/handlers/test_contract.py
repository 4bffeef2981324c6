"""Every handler: context manager, wrapper and decorator; safe unwinding; composition."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from sbi_vi.ppl import ParamStore, current_stack, param, plate, sample
from sbi_vi.ppl.handlers import (
    block,
    condition,
    mask,
    param_store,
    replay,
    scale,
    seed,
    substitute,
    trace,
)

HANDLERS = {
    "block": lambda fn=None: block(fn, hide=["nothing"]),
    "condition": lambda fn=None: condition(fn, data={}),
    "mask": lambda fn=None: mask(fn, mask=True),
    "param_store": lambda fn=None: param_store(fn, store=ParamStore()),
    "replay": lambda fn=None: replay(fn, trace={}),
    "scale": lambda fn=None: scale(fn, scale=1.0),
    "seed": lambda fn=None: seed(fn, rng_seed=0),
    "substitute": lambda fn=None: substitute(fn, data={}),
    "trace": lambda fn=None: trace(fn),
}


def model():
    param("w", torch.zeros(()))
    with plate("data", 2):
        return sample("x", Normal(0.0, 1.0))


def raising():
    model()
    raise OSError("boom")


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_every_handler_is_a_wrapper_a_context_manager_and_a_decorator(name):
    make = HANDLERS[name]
    assert make(model)().shape == (2,)
    with make():
        assert model().shape == (2,)
        assert len(current_stack()) == 1
    decorated = make()(model)
    assert decorated().shape == (2,) and decorated.__name__ == "model"
    assert current_stack() == ()


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_every_handler_unwinds_when_the_model_raises(name):
    state = torch.get_rng_state()
    with pytest.raises(OSError, match="boom"):
        trace(HANDLERS[name](raising))()
    with pytest.raises(OSError, match="boom"), HANDLERS[name](), plate("outer", 3):
        raising()
    assert current_stack() == ()
    if name == "seed":  # the only handler that owns the RNG: it must hand it back
        assert torch.equal(torch.get_rng_state(), state)


def composed_model():
    a = sample("a", Normal(0.0, 1.0))
    b = sample("b", Normal(a, 1.0))
    with plate("data", 3):
        sample("y", Normal(b, 1.0), obs=torch.zeros(3))


def test_handlers_compose():
    keep = torch.tensor([True, False, True])
    inner = trace(condition(seed(composed_model, rng_seed=0), data={"a": 1.0}))
    program = trace(
        block(
            scale(mask(substitute(inner, data={"b": torch.tensor(2.0)}), mask=keep), scale=0.5),
            hide=["a"],
        )
    )
    tr = program.get_trace()
    assert list(tr) == ["b", "data", "y"]  # "a" is hidden from the outer trace ...
    assert inner.trace["a"].is_observed and inner.trace["a"].value == 1.0  # ... not the inner
    assert tr["b"].value == 2.0 and not tr["b"].is_observed
    assert tr["y"].scale == 0.5 and tr["y"].mask is keep
    expected = 0.5 * torch.where(keep, Normal(2.0, 1.0).log_prob(torch.zeros(3)), 0.0)
    assert torch.allclose(tr.batch_log_prob(["data"], lambda n, m: n == "y"), expected)
    again = program.get_trace()
    assert torch.equal(again["b"].value, tr["b"].value)
    assert current_stack() == ()
