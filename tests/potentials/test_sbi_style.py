"""sbi users' own code: sbi's potential objects and estimators in sbi_vi, amortised too.

sbi is not a dependency, so its surface is reproduced here as sbi 0.27 has it: a
``BasePotential`` with ``set_x(x_o, x_is_iid=True)``, an ``x_o`` property that raises
``ValueError`` when unset, ``return_x_o()``, and ``LikelihoodBasedPotential.__call__(theta,
track_gradients=True)`` that sums iid trials or pairs rows of θ ``[N, D]`` with x ``[N, L]``;
a ``ConditionalDensityEstimator`` with ``log_prob(input [S, B, L], condition [B, D])``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal
from torch.distributions.transforms import identity_transform

from sbi_vi import VIPosterior
from sbi_vi.potentials import (
    LikelihoodBasedPotential,
    SbiStylePotential,
    likelihood_estimator_based_potential,
    ratio_estimator_based_potential,
)

PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
SD = 0.5


class SbiDensityEstimator(nn.Module):
    """x | θ ~ N(θ, SD² I) with sbi's estimator interface."""

    input_shape = torch.Size([2])
    condition_shape = torch.Size([2])

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def log_prob(self, input, condition):
        assert input.ndim == 3 and condition.ndim == 2, "sbi shapes: [S, B, L], [B, D]"
        return Normal(condition + 0 * self.dummy, SD).log_prob(input).sum(-1)


class SbiBasePotential:
    def __init__(self, prior, x_o=None, device="cpu"):
        self.device, self.prior = device, prior
        self.set_x(x_o)

    def set_x(self, x_o, x_is_iid=True):
        if x_o is not None:
            x_o = torch.as_tensor(x_o, dtype=torch.float32)
            x_o = x_o.unsqueeze(0) if x_o.ndim == 1 else x_o
        self._x_o, self._x_is_iid = x_o, x_is_iid

    @property
    def x_o(self):
        if self._x_o is None:
            raise ValueError("No observed data is available. Use `potential_fn.set_x(x_o)`.")
        return self._x_o

    def return_x_o(self):
        return self._x_o

    @property
    def x_is_iid(self):
        return self._x_is_iid

    def to(self, device):
        self.device = device
        return self


class SbiLikelihoodBasedPotential(SbiBasePotential):
    def __init__(self, likelihood_estimator, prior, x_o=None, device="cpu"):
        super().__init__(prior, x_o, device)
        self.likelihood_estimator = likelihood_estimator

    def __call__(self, theta, track_gradients=True):
        assert theta.ndim == 2, "sbi's potentials take a flat batch of θ"
        with torch.set_grad_enabled(track_gradients):
            if self.x_is_iid:
                x = self.x_o.unsqueeze(1)  # [trials, 1, L]
                ll = self.likelihood_estimator.log_prob(x, condition=theta).sum(0)
            else:
                assert theta.shape[0] == self.x_o.shape[0], "Batch size mismatch"
                ll = self.likelihood_estimator.log_prob(self.x_o.unsqueeze(0), condition=theta)
            return ll + self.prior.log_prob(theta)


class NoPairing(SbiLikelihoodBasedPotential):
    def set_x(self, x_o):
        super().set_x(x_o)


def likelihood(theta, x):
    return Normal(theta, SD).log_prob(x).sum(-1)


def pairs(n=300):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(n, 2, generator=g)
    return theta, theta + SD * torch.randn(n, 2, generator=g)


AMORTIZED = {"flow_type": "gaussian", "max_num_iters": 8, "batch_size": 16, "n_particles": 8}
AMORTIZED |= {"show_progress_bar": False, "seed": 0}


def test_an_sbi_potential_object_trains_amortized_as_ours_does():
    theta, x = pairs()
    fits = []
    for potential in (
        SbiLikelihoodBasedPotential(SbiDensityEstimator(), PRIOR, x_o=None),
        LikelihoodBasedPotential(likelihood, PRIOR),
    ):
        torch.manual_seed(0)
        posterior = VIPosterior(potential)  # the prior comes from the potential
        fits.append(posterior.train_amortized(theta, x, **AMORTIZED))
    assert isinstance(fits[0].potential_fn, SbiStylePotential)
    assert isinstance(fits[0].potential_fn.likelihood_estimator, SbiDensityEstimator)
    probe, x_o = torch.tensor([[0.1, 0.2], [1.0, -1.0]]), torch.tensor([[0.3, -0.3]])
    torch.testing.assert_close(fits[0].log_prob(probe, x=x_o), fits[1].log_prob(probe, x=x_o))
    assert fits[0].sample((5,), x=torch.zeros(3, 2)).shape == (5, 3, 2)


def test_an_sbi_potential_object_trains_for_one_observation():
    x_o = torch.tensor([[0.5, -0.5], [0.7, -0.2]])  # two iid trials
    sbi_potential = SbiLikelihoodBasedPotential(SbiDensityEstimator(), PRIOR, x_o=x_o)
    ours = LikelihoodBasedPotential(likelihood, PRIOR, x_o)
    theta = torch.randn(7, 2)
    wrapped = SbiStylePotential(sbi_potential)
    torch.testing.assert_close(wrapped(theta), ours(theta))
    torch.testing.assert_close(wrapped(theta.reshape(7, 1, 2)), ours(theta).reshape(7, 1))
    posterior = VIPosterior(sbi_potential, q="gaussian")
    torch.testing.assert_close(posterior.default_x, x_o)
    settings = {"max_num_iters": 300, "show_progress_bar": False, "seed": 0}
    posterior.train(quality_control=False, **settings)
    # conjugate: posterior N(m, s² I) with precision 1 + 2 / SD²
    precision = 1 + 2 / SD**2
    torch.manual_seed(0)
    samples = posterior.sample((4000,))
    torch.testing.assert_close(samples.mean(0), x_o.sum(0) / SD**2 / precision, atol=0.05, rtol=0)
    torch.testing.assert_close(
        samples.std(0), torch.full((2,), precision**-0.5), atol=0.05, rtol=0
    )


def test_a_set_x_without_pairing_is_refused_for_amortized_vi():
    theta, x = pairs()
    posterior = VIPosterior(NoPairing(SbiDensityEstimator(), PRIOR))
    with pytest.raises(ValueError, match="cannot score θ paired with a batch"):
        posterior.train_amortized(theta, x, **AMORTIZED)


def test_our_factory_takes_sbi_estimators_and_looks_like_sbi():
    estimator = SbiDensityEstimator()
    potential, transform = likelihood_estimator_based_potential(estimator, PRIOR, x_o=None)
    assert potential.likelihood_estimator is estimator and potential.prior is not None
    theta, x = pairs(6)
    potential.set_x(x, x_is_iid=False)
    expected = likelihood(theta, x) + PRIOR.log_prob(theta)
    torch.testing.assert_close(potential(theta), expected)
    potential.set_x(x[:3])  # iid trials
    expected = likelihood(theta[:, None], x[:3]).sum(-1) + PRIOR.log_prob(theta)
    torch.testing.assert_close(potential(theta), expected)
    _, identity = likelihood_estimator_based_potential(estimator, PRIOR, enable_transform=False)
    assert identity is identity_transform and transform is not identity_transform


def test_an_sbi_classifier_in_our_ratio_potential():
    class Classifier(nn.Module):  # sbi's classifiers return logits [N, 1]
        def forward(self, theta, x):
            assert theta.ndim == 2 and x.ndim == 2
            return -((theta - x) ** 2).sum(-1, keepdim=True)

    potential, _ = ratio_estimator_based_potential(Classifier(), PRIOR)
    theta, x = pairs(5)
    potential.set_x(x[:2])
    expected = -((theta[:, None] - x[:2]) ** 2).sum((-1, -2)) + PRIOR.log_prob(theta)
    torch.testing.assert_close(potential(theta), expected)
    assert potential.ratio_estimator is not None


def test_a_wrapped_sbi_potential_copies_and_pickles():
    import copy
    import pickle

    theta, x = pairs()
    torch.manual_seed(0)
    posterior = VIPosterior(SbiLikelihoodBasedPotential(SbiDensityEstimator(), PRIOR))
    posterior.train_amortized(theta, x, **AMORTIZED)
    probe, x_o = torch.tensor([[0.1, 0.2]]), torch.tensor([[0.3, -0.3]])
    for other in (copy.deepcopy(posterior), pickle.loads(pickle.dumps(posterior))):
        torch.testing.assert_close(other.log_prob(probe, x=x_o), posterior.log_prob(probe, x=x_o))
        torch.manual_seed(2)
        a = other.sample((3,), x=x_o)
        torch.manual_seed(2)
        torch.testing.assert_close(a, posterior.sample((3,), x=x_o))
        assert isinstance(other.potential_fn.likelihood_estimator, SbiDensityEstimator)


def test_estimator_potentials_cast_to_the_network_dtype():
    class Net(nn.Module):  # a float32 network with our log_prob(x, theta)
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(SD))

        def log_prob(self, x, theta):
            assert x.dtype == theta.dtype == torch.float32
            return Normal(theta, self.scale).log_prob(x).sum(-1)

    potential = LikelihoodBasedPotential(Net(), PRIOR)
    theta, x = pairs(4)
    expected = potential.set_x(x[:2])(theta)
    torch.testing.assert_close(potential.set_x(x[:2].double())(theta.double()), expected)
