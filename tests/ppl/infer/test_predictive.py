"""Predictive: prior and posterior predictive draws, vectorised, in plain shapes."""

from __future__ import annotations

import pytest
import torch
from ppl_infer_models import gaussian_data, gaussian_model, gaussian_posterior, local_model
from torch.distributions import Normal, constraints

from sbi_vi.ppl import param, sample
from sbi_vi.ppl.infer import SVI, AutoNormal, Predictive


def test_prior_predictive_draws_every_site_at_full_plates(local_data):
    draws = Predictive(local_model, num_samples=200)(local_data, seed=0)
    shapes = {k: tuple(v.shape) for k, v in draws.items()}
    assert shapes == {
        "mu": (200,),
        "tau": (200,),
        "w": (200, 3),
        "theta": (200, 12),
        "shifted": (200, 12),
        "y": (200, 12),
    }
    assert abs(float(draws["mu"].std()) - 3.0) < 0.5  # the prior of mu
    again = Predictive(local_model, num_samples=200)(local_data, seed=0)
    assert torch.equal(again["y"], draws["y"])


def test_posterior_predictive_from_a_guide_and_from_samples():
    x = gaussian_data()
    result = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05).run(
        400, x, seed=0, show_progress_bar=False
    )
    mean, sd = gaussian_posterior(x)
    draws = Predictive(gaussian_model, guide=result.guide, num_samples=2000)(x, seed=1)
    assert set(draws) == {"x"} and draws["x"].shape == (2000, 20)
    # x_new = mu + noise: mean ~ posterior mean, variance ~ sd² + 1
    assert abs(float(draws["x"].mean()) - mean) < 0.05
    assert abs(float(draws["x"][:, 0].var()) - (sd**2 + 1)) < 0.15
    samples = {"mu": torch.full((50,), 7.0)}
    fixed = Predictive(gaussian_model, samples, return_sites=["x", "mu"])(x, seed=0)
    assert torch.equal(fixed["mu"], samples["mu"]) and abs(float(fixed["x"].mean()) - 7) < 0.2


def test_predictive_with_a_user_guide_and_params():
    x = gaussian_data()

    def guide(x):
        loc = param("loc", torch.tensor(0.0))
        sample(
            "mu", Normal(loc, param("scale", torch.tensor(0.1), constraint=constraints.positive))
        )

    params = {"loc": torch.tensor(-4.0), "scale": torch.tensor(0.01)}
    draws = Predictive(gaussian_model, guide=guide, params=params, num_samples=100)(x)
    assert abs(float(draws["x"].mean()) + 4) < 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        Predictive(gaussian_model)
    with pytest.raises(ValueError, match="not both"):
        Predictive(gaussian_model, {"mu": torch.zeros(3)}, guide=gaussian_model)
    with pytest.raises(ValueError, match="same number"):
        Predictive(gaussian_model, {"mu": torch.zeros(3), "nu": torch.zeros(4)})
    with pytest.raises(ValueError, match="not a latent site"):
        Predictive(gaussian_model, {"nu": torch.zeros(3)})(gaussian_data())
    with pytest.raises(ValueError, match="no sample site"):
        Predictive(gaussian_model, num_samples=2, return_sites=["nope"])(gaussian_data())
