"""Shared data of the estimator tests: a linear-Gaussian simulator with a known likelihood."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal


@pytest.fixture(scope="session")
def linear_gaussian() -> SimpleNamespace:
    """θ ~ N(0, I₂), x ~ N(θ, σ² I₂) with σ = 0.5; 3000 seeded simulations."""
    sigma = 0.5
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))

    def simulate(theta, generator=None):
        return theta + sigma * torch.randn(theta.shape, generator=generator)

    def log_likelihood(x, theta):
        return Normal(theta, sigma).log_prob(x).sum(-1)

    def exact_posterior(x_o):
        return x_o / (1 + sigma**2), (sigma**2 / (1 + sigma**2)) ** 0.5

    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(3000, 2, generator=generator)
    return SimpleNamespace(
        sigma=sigma,
        prior=prior,
        simulate=simulate,
        log_likelihood=log_likelihood,
        exact_posterior=exact_posterior,
        theta=theta,
        x=simulate(theta, generator),
    )
