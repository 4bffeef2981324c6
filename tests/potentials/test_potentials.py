"""Potentials: custom, likelihood-based and ratio-based; iid observations; support."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from sbi_vi.potentials import (
    CallablePotential,
    LikelihoodBasedPotential,
    RatioBasedPotential,
    likelihood_estimator_based_potential,
    ratio_estimator_based_potential,
)
from sbi_vi.priors import BoxUniform

PRIOR = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))


class GaussianLikelihood:
    """x | θ ~ N(θ, 0.5² I), element-wise ``log_prob(x, theta)``."""

    def log_prob(self, x, theta):
        return Normal(theta, 0.5).log_prob(x).sum(-1)


class LogRatio:
    def log_ratio(self, theta, x):
        return Normal(theta, 0.5).log_prob(x).sum(-1)


def test_likelihood_potential_sums_iid_rows():
    x_o = torch.tensor([[0.5, 0.0], [0.3, -0.2], [0.1, 0.4]])
    potential, transform = likelihood_estimator_based_potential(GaussianLikelihood(), PRIOR, x_o)
    theta = PRIOR.sample((7,))
    manual = sum(Normal(theta, 0.5).log_prob(row).sum(-1) for row in x_o) + PRIOR.log_prob(theta)
    torch.testing.assert_close(potential(theta), manual)
    assert potential(theta.reshape(7, 1, 2)).shape == (7, 1)
    torch.testing.assert_close(transform.inv(transform(theta)), theta, atol=1e-5, rtol=0)


def test_plain_callable_likelihood_and_ratio_agree():
    x_o = torch.tensor([0.5, 0.0])
    lik = LikelihoodBasedPotential(lambda t, x: Normal(t, 0.5).log_prob(x).sum(-1), PRIOR, x_o)
    ratio, _ = ratio_estimator_based_potential(LogRatio(), PRIOR, x_o)
    theta = PRIOR.sample((5,))
    torch.testing.assert_close(lik(theta), ratio(theta))


def test_outside_support_is_minus_inf_not_nan():
    def nan_outside(theta, x):
        return torch.where(theta.abs().amax(-1) > 2, float("nan"), -theta.square().sum(-1))

    potential = LikelihoodBasedPotential(nan_outside, PRIOR, torch.zeros(2))
    out = potential(torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    assert out[0] == float("-inf") and torch.isfinite(out[1])


def test_unpaired_batch_of_observations():
    """x_is_iid=False pairs θ's last batch dim with the rows of x (amortised VI)."""
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 0.5]])
    potential = LikelihoodBasedPotential(GaussianLikelihood(), PRIOR).set_x(x, x_is_iid=False)
    theta = PRIOR.sample((4, 3))
    expected = Normal(theta, 0.5).log_prob(x).sum(-1) + PRIOR.log_prob(theta)
    torch.testing.assert_close(potential(theta), expected)


def test_gradients_flow_only_when_tracked():
    potential = LikelihoodBasedPotential(GaussianLikelihood(), PRIOR, torch.zeros(2))
    theta = torch.zeros(3, 2, requires_grad=True)
    assert potential(theta).requires_grad
    assert not potential(theta, track_gradients=False).requires_grad


def test_callable_potential_with_and_without_x():
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    with_x = CallablePotential(lambda t, x_o: -(t - x_o).square().sum(-1), prior, torch.ones(2))
    theta_only = CallablePotential(lambda t: -t.square().sum(-1), prior)
    theta = torch.ones(4, 2)
    assert torch.equal(with_x(theta), torch.zeros(4))
    assert torch.equal(theta_only(theta), -2 * torch.ones(4))
    bad = CallablePotential(lambda t, x: t.sum(), prior, torch.ones(2))
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        bad(theta)


def test_set_x_validation_and_missing_x():
    potential = LikelihoodBasedPotential(GaussianLikelihood(), PRIOR)
    with pytest.raises(ValueError, match="set_x"):
        potential(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="finite"):
        potential.set_x(torch.tensor([float("inf"), 0.0]))
    with pytest.raises(ValueError, match=r"\[L\] or \[N, L\]"):
        potential.set_x(torch.zeros(2, 2, 2))
    potential.x_o = torch.zeros(2)
    assert potential.x_o.shape == (1, 2)


def test_bad_estimators_are_type_errors():
    with pytest.raises(TypeError, match="likelihood_estimator"):
        LikelihoodBasedPotential(3, PRIOR)
    with pytest.raises(TypeError, match="ratio_estimator"):
        RatioBasedPotential("r", PRIOR)


def test_potentials_pickle():
    potential = LikelihoodBasedPotential(GaussianLikelihood(), PRIOR, torch.zeros(2))
    clone = pickle.loads(pickle.dumps(potential))
    theta = PRIOR.sample((3,))
    torch.testing.assert_close(clone(theta), potential(theta))
