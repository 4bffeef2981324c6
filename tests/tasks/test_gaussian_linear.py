"""Gaussian linear: simulator moments, exact likelihood, closed-form posterior vs reference.

Tolerances are 5 standard errors of the estimate; everything is seeded.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal

from sbi_vi.tasks import GaussianLinear

D = 10
VARIANCE = 0.1


@pytest.fixture(scope="module")
def task() -> GaussianLinear:
    return GaussianLinear()


def test_prior_is_n_0_01(task: GaussianLinear) -> None:
    assert torch.allclose(task.prior.mean, torch.zeros(D))
    assert torch.allclose(task.prior.variance, torch.full((D,), VARIANCE))


def test_simulator_mean_and_covariance(task: GaussianLinear) -> None:
    n = 50_000
    theta = torch.linspace(-0.6, 0.6, D, dtype=torch.float64)
    x = task.simulator(theta.expand(n, D), seed=0)
    mean = x.mean(0)
    cov = torch.cov(x.T)
    # mean: SE sqrt(σ²/n); variance: SE σ² sqrt(2/(n-1)); covariance: SE σ²/sqrt(n)
    assert torch.all((mean - theta).abs() < 5 * math.sqrt(VARIANCE / n))
    assert torch.all((cov.diagonal() - VARIANCE).abs() < 5 * VARIANCE * math.sqrt(2 / (n - 1)))
    off_diagonal = cov - torch.diag(cov.diagonal())
    assert off_diagonal.abs().max() < 5 * VARIANCE / math.sqrt(n)


def test_expected_log_likelihood_is_minus_entropy(task: GaussianLinear) -> None:
    """E[log p(x|θ)] = -D/2 log(2πeσ²); the log-likelihood of a draw is -D/2 log(2πσ²) - χ²_D/2."""
    n = 20_000
    theta = torch.zeros(D, dtype=torch.float64)
    x = task.simulator(theta.expand(n, D), seed=1)
    log_lik = task._log_likelihood(theta, x)
    entropy = 0.5 * D * math.log(2 * math.pi * math.e * VARIANCE)
    standard_error = math.sqrt(D / 2) / math.sqrt(n)  # std of χ²_D / 2 is sqrt(D/2)
    assert abs(log_lik.mean().item() + entropy) < 5 * standard_error


def test_log_likelihood_matches_torch_multivariate_normal(task: GaussianLinear) -> None:
    torch.manual_seed(2)
    theta = task.prior.sample((6, 4)).double()
    x = task.simulator(task.prior.sample((3,))).double()
    expected = (
        MultivariateNormal(theta.unsqueeze(-2), VARIANCE * torch.eye(D, dtype=torch.float64))
        .log_prob(x)
        .sum(-1)
    )
    assert torch.allclose(task.log_likelihood(theta, x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_iid", [1, 3])
def test_true_posterior_matches_bayes_rule(task: GaussianLinear, n_iid: int) -> None:
    """Closed form vs the general Gaussian update computed with matrix inverses."""
    x_o = task.simulator(torch.zeros(n_iid, D), seed=3).double()
    prior_precision = torch.eye(D, dtype=torch.float64) / VARIANCE
    noise_precision = torch.eye(D, dtype=torch.float64) / VARIANCE
    cov = torch.linalg.inv(prior_precision + n_iid * noise_precision)
    loc = cov @ (noise_precision @ x_o.sum(0))
    posterior = task.true_posterior(x_o if n_iid > 1 else x_o[0])
    assert torch.allclose(posterior.loc, loc, atol=1e-12)
    assert torch.allclose(posterior.covariance_matrix, cov, atol=1e-12)


@pytest.mark.parametrize("n_iid", [1, 3])
def test_potential_equals_true_posterior_up_to_a_constant(
    task: GaussianLinear, n_iid: int
) -> None:
    """log p(x_o|θ) + log p(θ) - log p(θ|x_o) = log p(x_o) for every θ."""
    x_o = task.simulator(torch.full((n_iid, D), 0.2), seed=4).double()
    posterior = task.true_posterior(x_o)
    torch.manual_seed(5)
    theta = (task.prior.sample((200,)) * 3).double()
    log_evidence = task.potential(x_o=x_o)(theta) - posterior.log_prob(theta)
    assert log_evidence.std() < 1e-5  # the prior's parameters are float32
    # and the constant is the marginal likelihood: x_o ~ N(0, (σ0² + σ²) I) for one row
    if n_iid == 1:
        marginal = MultivariateNormal(
            torch.zeros(D, dtype=torch.float64), 2 * VARIANCE * torch.eye(D, dtype=torch.float64)
        )
        assert torch.allclose(log_evidence, marginal.log_prob(x_o[0]), atol=1e-5)


def test_reference_samples_match_closed_form_posterior(task: GaussianLinear) -> None:
    """For every observation: reference mean, variances, covariances within 5 SE of exact."""
    n = 10_000
    for i in range(1, 11):
        ref = task.get_reference_posterior_samples(i).double()
        posterior = task.true_posterior(task.get_observation(i).double())
        var = posterior.covariance_matrix[0, 0].item()
        assert torch.allclose(posterior.covariance_matrix, var * torch.eye(D, dtype=ref.dtype))
        cov = torch.cov(ref.T)
        assert torch.all((ref.mean(0) - posterior.loc).abs() < 5 * math.sqrt(var / n)), i
        assert torch.all((cov.diagonal() - var).abs() < 5 * var * math.sqrt(2 / (n - 1))), i
        off_diagonal = cov - torch.diag(cov.diagonal())
        assert off_diagonal.abs().max() < 5 * var / math.sqrt(n), i
        # the squared Mahalanobis distances of exact samples are χ²_D: KS test
        maha = (ref - posterior.loc).square().sum(-1) / var
        assert stats.kstest(maha.numpy(), stats.chi2(D).cdf).pvalue > 1e-4, i


def test_true_posterior_rejects_bad_x_o(task: GaussianLinear) -> None:
    with pytest.raises(ValueError, match="`x_o`"):
        task.true_posterior(torch.zeros(D + 1))
