"""seed: reproducible draws, continuing streams, and no leak into the caller's RNG."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from sbi_vi.ppl import plate, sample
from sbi_vi.ppl.handlers import seed, trace


def model():
    with plate("data", 100, subsample_size=5) as idx:
        return sample("x", Normal(0.0, 1.0)), idx


def test_same_seed_same_draws_and_indices():
    x1, i1 = seed(model, rng_seed=7)()
    x2, i2 = seed(model, rng_seed=7)()
    x3, _ = seed(model, rng_seed=8)()
    assert torch.equal(x1, x2) and torch.equal(i1, i2) and not torch.equal(x1, x3)


def test_the_stream_continues_across_calls_of_one_seeded_function():
    seeded = seed(model, rng_seed=0)
    first, second = seeded()[0], seeded()[0]
    assert not torch.equal(first, second)
    fresh = seed(model, rng_seed=0)
    assert torch.equal(fresh()[0], first) and torch.equal(fresh()[0], second)


def test_the_callers_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seed(model, rng_seed=0)()
    with seed(rng_seed=1):
        torch.rand(10)
    assert torch.equal(torch.rand(3), expected)


def test_the_rng_is_restored_when_the_model_raises():
    state = torch.get_rng_state()

    def bad():
        sample("x", Normal(0.0, 1.0))
        raise KeyError("boom")

    with pytest.raises(KeyError):
        seed(bad, rng_seed=0)()
    assert torch.equal(torch.get_rng_state(), state)


def test_nested_seeds_restore_the_outer_stream():
    def two():
        with seed(rng_seed=5):
            inner = sample("inner", Normal(0.0, 1.0))
        return inner, sample("outer", Normal(0.0, 1.0))

    tr1 = trace(seed(two, rng_seed=0)).get_trace()
    tr2 = trace(seed(lambda: (None, sample("outer", Normal(0.0, 1.0))), rng_seed=0)).get_trace()
    assert torch.equal(tr1["outer"].value, tr2["outer"].value)
    assert torch.equal(tr1["inner"].value, seed(lambda: torch.randn(()), rng_seed=5)())


def test_rng_seed_must_be_an_int():
    with pytest.raises(TypeError, match="rng_seed"):
        seed(model, rng_seed=1.5)  # type: ignore[arg-type]
