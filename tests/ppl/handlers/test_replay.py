"""replay: guide values and minibatch indices reach the model."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from sbi_vi.ppl import deterministic, plate, sample
from sbi_vi.ppl.handlers import replay, trace

Y = torch.randn(20)


def model():
    mu = sample("mu", Normal(0.0, 1.0))
    with plate("data", 20, subsample_size=5) as idx:
        z = sample("z", Normal(mu, 1.0))
        sample("y", Normal(z, 1.0), obs=Y[idx])
    return idx


def guide():
    sample("mu", Normal(0.0, 0.1), infer={"note": 1})
    with plate("data", 20, subsample_size=5):
        sample("z", Normal(0.0, 0.1))


def test_latent_values_and_subsample_indices_are_replayed():
    guide_tr = trace(guide).get_trace()
    model_tr = trace(replay(model, trace=guide_tr)).get_trace()
    assert torch.equal(model_tr["data"].value, guide_tr["data"].value)
    assert model_tr["mu"].value is guide_tr["mu"].value
    assert model_tr["z"].value is guide_tr["z"].value
    assert torch.equal(model_tr["y"].value, Y[guide_tr["data"].value])
    assert model_tr["mu"].infer == {"note": 1}
    assert model_tr["y"].scale == 4.0


def test_sites_missing_from_the_trace_run_as_usual():
    guide_tr = trace(lambda: sample("mu", Normal(0.0, 0.1))).get_trace()
    model_tr = trace(replay(model, trace=guide_tr)).get_trace()
    assert model_tr["z"].value.shape == (5,)


def test_mismatched_site_kinds_are_errors():
    observed = trace(lambda: sample("mu", Normal(0.0, 1.0), obs=torch.tensor(0.0))).get_trace()
    with pytest.raises(ValueError, match="'mu' is latent here but an observed"):
        replay(model, trace=observed)()
    det = trace(lambda: deterministic("mu", torch.tensor(0.0))).get_trace()
    with pytest.raises(ValueError, match="'mu' is latent here but a deterministic"):
        replay(model, trace=det)()
    not_a_plate = trace(lambda: sample("data", Normal(0.0, 1.0))).get_trace()
    with pytest.raises(ValueError, match="plate 'data' meets a sample site"):
        replay(model, trace=not_a_plate)()
    other_size = trace(lambda: plate("data", 30, subsample_size=5)).get_trace()
    with pytest.raises(ValueError, match=r"'data' has size 20 here but 30"):
        replay(model, trace=other_size)()
    with pytest.raises(TypeError, match="trace="):
        replay(model)
