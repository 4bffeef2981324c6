"""Plates: dims, broadcasting, subsampling and its scaling, local parameters."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal

from sbi_vi.ppl import ParamStore, Plate, current_stack, param, plate, sample
from sbi_vi.ppl.handlers import param_store, seed, substitute, trace
from sbi_vi.ppl.plate import _subsample_indices


def test_plate_without_handlers_yields_indices_and_broadcasts():
    with plate("N", 10) as idx:
        x = sample("x", Normal(0.0, 1.0))
    assert idx.tolist() == list(range(10)) and x.shape == (10,)
    assert current_stack() == ()


def test_nested_plates_allocate_dims_from_the_right():
    def m():
        with plate("a", 3), plate("b", 2), plate("c", 4, dim=-4):
            return sample("x", Normal(0.0, 1.0))

    tr = trace(m).get_trace()
    assert {f.name: f.dim for f in tr["x"].cond_indep_stack} == {"a": -1, "b": -2, "c": -4}
    assert tr["x"].plates == ("c", "b", "a")  # innermost first
    assert tr["x"].value.shape == (4, 1, 2, 3)


def test_dim_collisions_are_errors_naming_both_plates():
    with pytest.raises(ValueError, match=r"'b' uses dim -1.*'a'"), plate("a", 3, dim=-1):
        plate("b", 2, dim=-1)
    outer = plate("a", 3)
    with pytest.raises(ValueError, match=r"'a' uses dim -1.*'a'"), outer, outer:
        pass
    inner = plate("b", 2)  # built outside, entered inside a plate on the same dim
    with pytest.raises(ValueError, match=r"'b' uses dim -1.*'a'"), plate("a", 3), inner:
        pass
    assert current_stack() == ()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("p", 0), "positive"),
        (("p", 3, 4), "must not exceed"),
        (("p", 3, None, 0), "negative int"),
        (("p", 3, None, 1.5), "negative int"),
        ((3, 3), "name must be a str"),
    ],
)
def test_bad_plate_arguments(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        plate(*args)


def test_batch_shape_that_does_not_broadcast_is_an_error_naming_the_site():
    with pytest.raises(ValueError, match=r"site 'x'.*batch shape \(5,\).*plate 'data'.*size 10"):
        with plate("data", 10):
            sample("x", Normal(torch.zeros(5), 1.0))
    with plate("data", 10):  # matching or size-1 batch shapes are fine
        assert sample("y", Normal(torch.zeros(10), 1.0)).shape == (10,)
        assert sample("z", Normal(torch.zeros(3, 1), 1.0)).shape == (3, 10)


def test_replaced_or_substituted_indices_are_checked():
    def m(n=None):
        with plate("data", 10, subsample_size=n) as idx:
            return idx

    assert substitute(m, data={"data": torch.tensor([1, 3])})(2).tolist() == [1, 3]
    assert substitute(m, data={"data": torch.tensor([1, 3])})().tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"'data'.*2 indices.*subsample_size 3"):
        substitute(m, data={"data": torch.tensor([1, 3])})(3)
    with pytest.raises(ValueError, match="1-D integer"):
        substitute(m, data={"data": torch.tensor([1.0, 3.0])})(2)


def test_subsampled_log_densities_are_scaled_by_size_over_subsample_size():
    y = torch.randn(12)

    def m():
        with plate("outer", 3, subsample_size=1), plate("data", 12, subsample_size=4) as idx:
            sample("y", Normal(0.0, 1.0), obs=y[idx])

    tr = trace(m).get_trace()
    site = tr["y"]
    assert site.scale == pytest.approx(3.0 * 3.0)
    tr.compute_log_prob()
    assert torch.allclose(site.log_prob, 9.0 * Normal(0.0, 1.0).log_prob(site.value))
    assert torch.allclose(site.unscaled_log_prob, Normal(0.0, 1.0).log_prob(site.value))


@pytest.mark.slow
def test_scaled_subsampled_log_likelihood_is_unbiased():
    data = torch.randn(50) * 2.0 + 1.0
    full = Normal(0.5, 1.5).log_prob(data).sum()

    def m():
        with plate("data", 50, subsample_size=7) as idx:
            sample("y", Normal(0.5, 1.5), obs=data[idx])

    seeded = seed(m, rng_seed=0)
    estimates = torch.stack([trace(seeded).get_trace().log_prob_sum() for _ in range(3000)])
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - full) < 4 * stderr
    assert estimates.std() > 0  # the subsamples do differ


def test_local_params_are_indexed_by_the_subsample():
    store = ParamStore()
    init = torch.arange(20.0).reshape(10, 2)

    def m():
        with plate("data", 10, subsample_size=3) as idx:
            return idx, param("loc", init, event_dim=1), param("g", torch.zeros(2))

    with param_store(store=store):
        idx, loc, g = m()
    assert loc.shape == (3, 2) and torch.equal(loc, init[idx]) and g.shape == (2,)
    assert store.unconstrained("loc").shape == (10, 2)
    loc.sum().backward()
    grad = store.unconstrained("loc").grad
    assert grad[idx].eq(1).all() and grad.sum() == 6

    def wrong():
        with plate("data", 10, subsample_size=3):
            param("bad", torch.zeros(4, 2), event_dim=1)

    with pytest.raises(ValueError, match=r"param\('bad'.*event_dim=1.*full plate size 10"):
        param_store(wrong, store=store)()


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 60),
    frac=st.floats(0.01, 1.0),
    seed_=st.integers(0, 2**16),
)
def test_subsample_indices_are_distinct_and_scale_is_size_over_n(size, frac, seed_):
    n = max(1, round(frac * size))

    def m():
        with plate("data", size, subsample_size=n) as idx:
            sample("x", Normal(0.0, 1.0))
        return idx

    tr = trace(seed(m, rng_seed=seed_)).get_trace()
    idx = tr["data"].value
    assert idx.shape == (n,) and idx.unique().numel() == n
    assert 0 <= int(idx.min()) and int(idx.max()) < size
    assert tr["x"].value.shape == (n,) and tr["x"].scale == pytest.approx(size / n)


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_nested_plates_give_the_reversed_shape(sizes):
    def m():
        with contextlib.ExitStack() as stack:
            for i, size in enumerate(sizes):
                stack.enter_context(plate(f"p{i}", size))
            return sample("x", Normal(0.0, 1.0))

    x = trace(m).get_trace()["x"]
    assert x.value.shape == tuple(reversed(sizes))
    assert [f.dim for f in x.cond_indep_stack] == [-k for k in range(len(sizes), 0, -1)]


def test_large_plates_subsample_without_a_full_permutation():
    torch.manual_seed(0)
    idx = _subsample_indices(100_000, 500)
    assert idx.shape == (500,) and idx.unique().numel() == 500 and int(idx.max()) < 100_000
    counts = torch.zeros(20_000)
    for _ in range(200):
        idx = _subsample_indices(20_000, 100)
        assert idx.unique().numel() == 100
        counts[idx] += 1
    per_bin = counts.reshape(10, 2000).sum(-1)  # 2000 expected per bin, sd about 45
    assert (per_bin - 2000).abs().max() < 250
    assert isinstance(plate("p", 5), Plate)
