"""Primitives: plain calls without handlers, sites in traces, module, factor, subsample."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal, constraints

from sbi_vi.ppl import (
    ParamStore,
    Unit,
    current_stack,
    deterministic,
    factor,
    module,
    param,
    plate,
    sample,
    subsample,
)
from sbi_vi.ppl.handlers import param_store, substitute, trace


def model(y):
    loc = param("loc", torch.zeros(2))
    s = param("s", lambda: torch.ones(2), constraint=constraints.positive)
    with plate("data", 4) as idx:
        z = sample("z", Normal(loc[0], s[0]))
        sample("y", Normal(z, 1.0), obs=y)
    deterministic("d", 2 * z)
    factor("f", z.sum())
    return idx, z, loc, s


def test_a_plain_call_without_handlers_is_a_plain_torch_program():
    idx, z, loc, s = model(torch.zeros(4))
    assert idx.tolist() == [0, 1, 2, 3] and z.shape == (4,)
    assert torch.equal(loc, torch.zeros(2)) and torch.equal(s, torch.ones(2))
    assert current_stack() == ()
    torch.manual_seed(1)
    a = sample("x", Normal(0.0, 1.0))
    torch.manual_seed(1)
    assert torch.equal(a, Normal(0.0, 1.0).sample())
    assert sample("x", Normal(0.0, 1.0), obs=[1.0, 2.0]).tolist() == [1.0, 2.0]
    assert sample("x", Normal(0.0, 1.0), sample_shape=(3,)).shape == (3,)
    data = torch.arange(3.0)
    assert deterministic("d", data) is data and subsample(data, event_dim=0) is data
    assert factor("f", torch.tensor(1.0)) is None


def test_sample_is_reparameterised_and_checks_its_distribution():
    loc = torch.zeros((), requires_grad=True)
    with trace():
        x = sample("x", Normal(loc, 1.0))
    x.backward()
    assert loc.grad == 1.0
    with pytest.raises(TypeError, match=r"'x'.*Distribution"):
        sample("x", torch.zeros(2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="site name"), trace():
        sample(3, Normal(0.0, 1.0))  # type: ignore[arg-type]


def test_trace_records_every_kind_of_site():
    tr = trace(model).get_trace(torch.zeros(4))
    assert list(tr) == ["loc", "s", "data", "z", "y", "d", "f"]
    assert [tr[n].type for n in tr] == [
        "param",
        "param",
        "plate",
        "sample",
        "sample",
        "deterministic",
        "sample",
    ]
    assert tr["y"].is_observed and not tr["z"].is_observed
    assert torch.equal(tr["d"].value, 2 * tr["z"].value)
    f = tr["f"]
    assert isinstance(f.fn, Unit) and f.is_observed and f.infer == {"is_auxiliary": True}
    assert f.value.shape == (0,)
    assert tr.latent_sites == ["z"] and tr.observed_sites == ["y", "f"]
    assert tr.param_sites == ["loc", "s"]


def test_factor_adds_its_log_factor_scaled_by_plates():
    def one():
        factor("f", torch.tensor(2.5))

    assert trace(one).get_trace().log_prob_sum() == 2.5

    def local():
        with plate("data", 10, subsample_size=2):
            factor("f", torch.tensor([1.0, 3.0]))

    tr = trace(local).get_trace()
    assert tr["f"].fn.batch_shape == (2,)
    assert tr.log_prob_sum().item() == pytest.approx(4.0 * 5)


def test_unit_distribution_shapes():
    unit = Unit(torch.zeros(3))
    assert unit.sample((2,)).shape == (2, 3, 0)
    assert unit.expand((4, 3)).batch_shape == (4, 3)
    assert unit.log_prob(unit.sample()).shape == (3,)


def test_duplicate_sample_or_deterministic_names_are_errors_naming_the_site():
    def twice():
        sample("x", Normal(0.0, 1.0))
        sample("x", Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"'x' occurs twice.*unique|own name"):
        trace(twice).get_trace()

    def mixed():
        sample("x", Normal(0.0, 1.0))
        deterministic("x", torch.zeros(()))

    with pytest.raises(ValueError, match=r"'x'.*sample.*deterministic"):
        trace(mixed).get_trace()


def test_param_may_be_read_twice_and_needs_an_initial_value():
    def reads():
        return param("w", torch.ones(1)) + param("w")

    store = ParamStore()
    with param_store(store=store):
        tr = trace(reads).get_trace()
    assert list(tr) == ["w"]
    with pytest.raises(ValueError, match=r"'v'.*init_value"):
        param("v")
    with pytest.raises(ValueError, match=r"'v'.*init_value"), trace():
        param("v")
    with pytest.raises(ValueError, match="event_dim"), trace():
        param("v", torch.zeros(1), event_dim=-1)


def test_sample_shape_is_folded_into_the_batch_shape_inside_plates():
    def m():
        with plate("p", 2, dim=-2):
            return sample("x", Normal(0.0, 1.0), sample_shape=(3,))

    tr = trace(m).get_trace()
    assert tr["x"].value.shape == (2, 3) and tr["x"].fn.batch_shape == (2, 3)
    assert tr["x"].kwargs["sample_shape"] == ()


def test_module_registers_parameters_in_the_store_and_shares_them():
    net = nn.Linear(3, 2)
    store = ParamStore()
    with param_store(store=store), trace() as tr:
        assert module("net", net) is net
    assert set(store) == {"net$$$weight", "net$$$bias"} == set(tr.param_sites)
    assert store.unconstrained("net$$$weight") is net.weight
    net(torch.ones(1, 3)).sum().backward()
    before = net.bias.detach().clone()
    with torch.no_grad():  # a gradient step on the store's leaves trains the module
        for leaf in store.parameters():
            leaf -= leaf.grad
    assert not torch.equal(net.bias, before)

    other = nn.Linear(3, 2)  # a second instance gets the stored parameters
    with param_store(store=store):
        module("net", other)
    assert other.weight is net.weight and other.bias is net.bias


def test_module_takes_substituted_values_and_is_a_no_op_without_handlers():
    net = nn.Sequential(nn.Linear(3, 2))
    assert module("net", net) is net
    data = {"net$$$0.weight": torch.zeros(2, 3), "net$$$0.bias": torch.ones(2)}
    substitute(lambda: module("net", net), data=data)()
    assert torch.equal(net(torch.randn(4, 3)), torch.ones(4, 2))
    with pytest.raises(TypeError, match=r"nn.Module"):
        module("net", lambda x: x)  # type: ignore[arg-type]


def test_subsample_indexes_data_by_the_enclosing_subsampled_plates():
    data = torch.arange(20.0).reshape(10, 2)
    with plate("data", 10, subsample_size=3) as idx:
        assert torch.equal(subsample(data, event_dim=1), data[idx])
        assert torch.equal(subsample(data[:, 0], event_dim=0), data[idx, 0])
        with pytest.raises(ValueError, match=r"subsample\(\.\.\.\).*full plate size 10"):
            subsample(data[:4], event_dim=1)
    with plate("data", 10) as idx:
        assert torch.equal(subsample(data, event_dim=1), data)


def test_event_dims_stay_right_of_plate_dims():
    with plate("data", 5):
        x = sample("x", Independent(Normal(torch.zeros(3), 1.0), 1))
    assert x.shape == (5, 3)
