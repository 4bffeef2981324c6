"""Priors and the support <-> unconstrained maps."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import (
    Beta,
    Exponential,
    Gamma,
    Independent,
    LogNormal,
    MultivariateNormal,
    Normal,
    Uniform,
)

from sbi_vi.priors import (
    BoxUniform,
    MultipleIndependent,
    link_transform,
    process_prior,
    theta_transform,
)


def test_box_uniform_density_and_support():
    prior = BoxUniform(torch.tensor([0.0, -1.0]), torch.tensor([2.0, 1.0]))
    samples = prior.sample((10_000,))
    assert samples.shape == (10_000, 2)
    assert bool(((samples >= prior.low) & (samples < prior.high)).all())
    torch.testing.assert_close(samples.mean(0), torch.tensor([1.0, 0.0]), atol=0.05, rtol=0)
    assert prior.log_prob(torch.tensor([1.0, 0.0])) == pytest.approx(-torch.log(torch.tensor(4.0)))


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [
        (torch.zeros(2), torch.zeros(2), "larger"),
        (torch.zeros(2), torch.ones(3), "shape"),
        (torch.zeros(2, 2), torch.ones(2, 2), "1-D"),
    ],
)
def test_box_uniform_errors(low, high, match):
    with pytest.raises(ValueError, match=match):
        BoxUniform(low, high)


def test_multiple_independent_joint():
    prior = MultipleIndependent(
        [Normal(0.0, 1.0), Gamma(2.0, 1.0), Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)]
    )
    samples = prior.sample((20_000,))
    assert samples.shape == (20_000, 4)
    expected = torch.tensor([0.0, 2.0, 0.5, 0.5])
    torch.testing.assert_close(samples.mean(0), expected, atol=0.05, rtol=0)
    lp = prior.log_prob(samples[:3])
    manual = (
        Normal(0.0, 1.0).log_prob(samples[:3, 0])
        + Gamma(2.0, 1.0).log_prob(samples[:3, 1])
        + Uniform(torch.zeros(2), torch.ones(2)).log_prob(samples[:3, 2:]).sum(-1)
    )
    torch.testing.assert_close(lp, manual)
    assert bool(prior.support.check(samples).all())
    assert not bool(prior.support.check(torch.tensor([0.0, -1.0, 0.5, 0.5])))


def test_multiple_independent_errors():
    with pytest.raises(ValueError, match="non-empty"):
        MultipleIndependent([])
    with pytest.raises(TypeError, match="dists\\[0\\]"):
        MultipleIndependent([3.0])


PRIORS = {
    "box": BoxUniform(-torch.ones(3), 2 * torch.ones(3)),
    "gaussian": MultivariateNormal(torch.zeros(2), torch.eye(2)),
    "lognormal": Independent(LogNormal(torch.zeros(2), torch.ones(2)), 1),
    "mixed": MultipleIndependent([Normal(0.0, 1.0), Exponential(1.0), Beta(2.0, 3.0)]),
}


@pytest.mark.parametrize("name", PRIORS)
def test_theta_transform_is_a_bijection_with_correct_log_det(name):
    prior = PRIORS[name]
    transform = theta_transform(prior)
    theta = prior.sample((200,))
    u = transform(theta)
    assert torch.isfinite(u).all()
    torch.testing.assert_close(transform.inv(u), theta, atol=1e-4, rtol=1e-4)
    # log-det against autograd's Jacobian of the link at one point
    link = link_transform(prior)
    u0 = u[0].clone()
    jac = torch.autograd.functional.jacobian(link, u0)
    expected = torch.linalg.slogdet(jac).logabsdet
    ladj = link.log_abs_det_jacobian(u0, link(u0))
    torch.testing.assert_close(ladj.sum() if ladj.ndim else ladj, expected, atol=1e-4, rtol=1e-4)
    # any unconstrained point lands in the support
    assert bool(prior.support.check(link(5 * torch.randn(100, theta.shape[-1]))).all())


def test_process_prior():
    normal = process_prior(Normal(torch.zeros(3), torch.ones(3)))
    assert normal.event_shape == (3,) and normal.batch_shape == ()
    with pytest.raises(ValueError, match="scalar"):
        process_prior(Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="sample"):
        process_prior("uniform")
    with pytest.raises(ValueError, match="event shape"):
        process_prior(Independent(Normal(torch.zeros(2, 2), 1.0), 1))
