"""block: hiding sites from outer handlers."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from sbi_vi.ppl import ParamStore, param, plate, sample
from sbi_vi.ppl.handlers import block, param_store, trace


def model():
    param("w", torch.zeros(()))
    sample("a", Normal(0.0, 1.0))
    with plate("data", 2):
        sample("b", Normal(0.0, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({}, []),
        ({"hide": ["a"]}, ["w", "data", "b"]),
        ({"expose": ["a", "w"]}, ["w", "a"]),
        ({"expose_types": ["param"]}, ["w"]),
        ({"hide_fn": lambda msg: msg.type == "sample"}, ["w", "data"]),
    ],
)
def test_block_hides_the_selected_sites(kwargs, shown):
    assert list(trace(block(model, **kwargs)).get_trace()) == shown


def test_block_rejects_a_bare_string_and_keeps_the_store():
    with pytest.raises(TypeError, match=r"\['a'\]"):
        block(model, hide="a")
    store = ParamStore()
    with param_store(store=store):
        block(model)()
    assert list(store) == ["w"]
