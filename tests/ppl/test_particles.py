"""Vectorised particles: an outer plate, and log densities as [particles, *batch]."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_vi.ppl import (
    PARTICLE_PLATE,
    ParamStore,
    guess_max_plate_nesting,
    param,
    plate,
    sample,
    vectorize_particles,
)
from sbi_vi.ppl.handlers import param_store, replay, trace

DATA = torch.randn(6, 2)


def model(data):
    mu = sample("mu", Independent(Normal(torch.zeros(2), 1.0), 1))
    with plate("data", 6, subsample_size=4) as idx:
        z = sample("z", Normal(0.0, 1.0))
        sample("x", Independent(Normal(mu + z.unsqueeze(-1), 1.0), 1), obs=data[idx])


def guide(data):
    loc = param("loc", torch.zeros(2))
    sample("mu", Independent(Normal(loc, 1.0), 1))
    with plate("data", 6, subsample_size=4):
        sample("z", Normal(param("z_loc", torch.zeros(6), event_dim=0), 1.0))


def run(n_particles=5):
    store = ParamStore()
    vguide = vectorize_particles(guide, n_particles, max_plate_nesting=1)
    vmodel = vectorize_particles(model, n_particles, max_plate_nesting=1)
    with param_store(store=store):
        guide_tr = trace(vguide).get_trace(DATA)
        model_tr = trace(replay(vmodel, trace=guide_tr)).get_trace(DATA)
    return guide_tr, model_tr


def test_sites_carry_the_particle_dim_left_of_every_plate():
    guide_tr, model_tr = run()
    assert model_tr["mu"].value.shape == (5, 1, 2)
    assert model_tr["z"].value.shape == (5, 4)
    assert model_tr["x"].fn.batch_shape == (5, 4)
    assert torch.equal(model_tr["data"].value, guide_tr["data"].value)
    assert model_tr["mu"].value is guide_tr["mu"].value


def test_batch_log_prob_per_particle_and_per_observation():
    guide_tr, model_tr = run()
    log_p = model_tr.batch_log_prob([PARTICLE_PLATE])
    assert log_p.shape == (5,)
    for k in range(5):  # particle k alone, by hand
        mu, z = model_tr["mu"].value[k, 0], model_tr["z"].value[k]
        x = DATA[model_tr["data"].value]
        expected = (
            Normal(0.0, 1.0).log_prob(mu).sum()
            + 1.5 * Normal(0.0, 1.0).log_prob(z).sum()
            + 1.5 * Normal(mu + z.unsqueeze(-1), 1.0).log_prob(x).sum()
        )
        assert torch.allclose(log_p[k], expected, atol=1e-5)

    local = model_tr.batch_log_prob(
        [PARTICLE_PLATE, "data"], site_filter=lambda name, msg: "data" in msg.plates
    )
    assert local.shape == (5, 4)
    glob = model_tr.batch_log_prob([PARTICLE_PLATE], lambda n, m: "data" not in m.plates)
    assert torch.allclose(local.sum(-1) + glob, log_p, atol=1e-5)
    swapped = model_tr.batch_log_prob(["data", PARTICLE_PLATE], lambda n, m: "data" in m.plates)
    assert torch.equal(swapped, local.T)
    unscaled = model_tr.batch_log_prob(
        [PARTICLE_PLATE, "data"], lambda n, m: "data" in m.plates, scaled=False
    )
    assert torch.allclose(unscaled * 1.5, local)
    with pytest.raises(ValueError, match=r"'mu' is not inside plate 'data'.*site_filter"):
        model_tr.batch_log_prob([PARTICLE_PLATE, "data"])
    assert guide_tr.batch_log_prob([PARTICLE_PLATE]).shape == (5,)


def test_guess_max_plate_nesting_leaves_outer_state_alone():
    state = torch.get_rng_state()
    with trace() as outer:
        assert guess_max_plate_nesting(model, DATA) == 1
    assert len(outer) == 0 and torch.equal(torch.get_rng_state(), state)

    def flat():
        sample("a", Normal(0.0, 1.0))

    def deep():
        with plate("a", 2), plate("b", 3), plate("c", 1, dim=-4):
            sample("x", Normal(0.0, 1.0))

    assert guess_max_plate_nesting(flat) == 0 and guess_max_plate_nesting(deep) == 4


def test_batch_dims_outside_plates_clash_with_particles_with_a_clear_error():
    def unplated():
        sample("w", Normal(torch.zeros(3), 1.0))

    with pytest.raises(ValueError, match=r"site 'w'.*plate '_particles'.*Independent"):
        vectorize_particles(unplated, 4, max_plate_nesting=0)()
    with pytest.raises(ValueError, match="n_particles"):
        vectorize_particles(unplated, 0, max_plate_nesting=0)
