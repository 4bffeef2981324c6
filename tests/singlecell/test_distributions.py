"""Count likelihoods against scipy, their sums on sparse counts, sampling moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from sbi_vi.singlecell.distributions import (
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
    log_nb,
    log_zinb,
    nb_log_likelihood,
)


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(6, 40, generator=g, dtype=torch.float64) * 20 + 0.01
    theta = torch.rand(40, generator=g, dtype=torch.float64) * 5 + 0.1
    x = torch.poisson(mu * torch.rand(6, 40, generator=g, dtype=torch.float64) * 2)
    logits = torch.randn(6, 40, generator=g, dtype=torch.float64)
    return x, mu, theta, logits


def test_nb_matches_scipy():
    x, mu, theta, _ = _params()
    p = (theta / (theta + mu)).numpy()  # scipy's nbinom(n=theta, p=theta / (theta + mu))
    expected = stats.nbinom.logpmf(x.numpy(), theta.numpy(), p)
    np.testing.assert_allclose(log_nb(x, mu, theta).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_zinb_matches_mixture():
    x, mu, theta, logits = _params(1)
    pi = torch.sigmoid(logits).numpy()
    nb = stats.nbinom.pmf(x.numpy(), theta.numpy(), (theta / (theta + mu)).numpy())
    expected = np.log(np.where(x.numpy() == 0, pi + (1 - pi) * nb, (1 - pi) * nb))
    np.testing.assert_allclose(
        log_zinb(x, mu, theta, logits).numpy(), expected, rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("zero_inflated", [False, True])
@pytest.mark.parametrize("per_gene_theta", [False, True])
def test_sparse_sum_equals_dense_sum_with_gradients(zero_inflated, per_gene_theta):
    x, mu, theta, logits = _params(2)
    x[:, ::3] = 0.0  # many zeros
    mu = mu.clone().requires_grad_(True)
    theta = (theta if per_gene_theta else theta.expand(6, 40).clone()).requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    zi = logits if zero_inflated else None
    dense = (log_zinb(x, mu, theta, logits) if zero_inflated else log_nb(x, mu, theta)).sum(-1)
    fast = nb_log_likelihood(x, mu, theta, zi)
    torch.testing.assert_close(fast, dense)
    inputs = (mu, theta, logits) if zero_inflated else (mu, theta)
    g_dense = torch.autograd.grad(dense.sum(), inputs)
    g_fast = torch.autograd.grad(fast.sum(), inputs)
    for a, b in zip(g_fast, g_dense, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_sum_with_leading_particle_dims_values_and_gradients(zero_inflated):
    x, mu, theta, logits = _params(3)
    scale = torch.linspace(0.5, 2, 4, dtype=torch.float64)[:, None, None]
    mu3 = (mu.expand(4, 6, 40) * scale).clone().requires_grad_(True)
    theta = theta.clone().requires_grad_(True)
    zi = (logits.expand(4, 6, 40) * scale).clone().requires_grad_(True) if zero_inflated else None
    if zero_inflated:
        dense = log_zinb(x, mu3, theta, zi).sum(-1)
    else:
        dense = log_nb(x, mu3, theta).sum(-1)
    fast = nb_log_likelihood(x, mu3, theta, zi)
    torch.testing.assert_close(fast, dense)
    inputs = (mu3, theta) + ((zi,) if zero_inflated else ())
    weights = torch.randn(4, 6, dtype=torch.float64)
    g_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    g_dense = torch.autograd.grad((dense * weights).sum(), inputs)
    for a, b in zip(g_fast, g_dense, strict=True):
        torch.testing.assert_close(a, b)


def test_sampling_moments():
    torch.manual_seed(0)
    mu, theta = torch.tensor([3.0, 30.0]), torch.tensor([2.0, 0.5])
    nb = NegativeBinomial(mu, theta)
    draws = nb.sample((200_000,))
    torch.testing.assert_close(draws.mean(0), mu, rtol=0.02, atol=0.0)
    torch.testing.assert_close(draws.var(0), nb.variance, rtol=0.05, atol=0.0)
    zinb = ZeroInflatedNegativeBinomial(mu, theta, torch.tensor([0.0, -1.0]))
    draws = zinb.sample((200_000,))
    torch.testing.assert_close(draws.mean(0), zinb.mean, rtol=0.02, atol=0.0)
    torch.testing.assert_close(draws.var(0), zinb.variance, rtol=0.06, atol=0.0)


def test_poisson_sum_and_names():
    x, mu, _, _ = _params(4)
    d = Poisson(mu, scale=mu / mu.sum(-1, keepdim=True))
    torch.testing.assert_close(d.log_prob_sum(x), d.log_prob(x).sum(-1))
    assert d.mu is d.rate and d.scale is not None


@pytest.mark.parametrize("lead", [(), (3,)])
def test_gamma_terms_table_across_its_edge_values_and_gradcheck(lead):
    from sbi_vi.singlecell.distributions import _TABLE_COUNTS, _gamma_terms

    g = torch.Generator().manual_seed(4)
    k = _TABLE_COUNTS
    x = torch.randint(0, 3 * k, (*lead, 5, 7), generator=g).to(torch.float64)
    x[..., 0, :3] = torch.tensor([k - 1, k, k + 1], dtype=torch.float64)  # both sides of it
    theta = (torch.rand(7, generator=g, dtype=torch.float64) * 4 + 0.05).requires_grad_()
    expected = (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)).sum(-1)
    torch.testing.assert_close(_gamma_terms(x, theta), expected)
    assert torch.autograd.gradcheck(lambda t: _gamma_terms(x, t), (theta,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gamma_sample_matches_scipy_and_is_reproducible(dtype):
    from sbi_vi.singlecell.distributions import gamma_sample

    concentration = torch.tensor([0.2, 1.0, 7.5], dtype=dtype)
    rate = torch.tensor([[2.0], [0.5]], dtype=dtype)  # broadcasts to [2, 3]
    torch.manual_seed(3)
    draws = gamma_sample(concentration, rate, (20_000,))
    assert draws.shape == (20_000, 2, 3) and draws.dtype == dtype
    for i in range(2):
        for j in range(3):
            a, r = float(concentration[j]), float(rate[i, 0])
            p = stats.kstest(draws[:, i, j].numpy(), stats.gamma(a, scale=1 / r).cdf).pvalue
            assert p > 1e-3, (a, r, p)
    torch.manual_seed(3)
    torch.testing.assert_close(gamma_sample(concentration, rate, (20_000,)), draws)
    assert not torch.equal(gamma_sample(concentration, rate, (20_000,)), draws)


def test_nb_sample_matches_the_scipy_pmf():
    torch.manual_seed(5)
    mu, theta = torch.tensor([0.05, 1.0, 12.0]), torch.tensor([0.3, 2.0, 0.8])
    draws = NegativeBinomial(mu, theta).sample((100_000,)).numpy()
    for j in range(3):
        m, t = float(mu[j]), float(theta[j])
        ks = np.arange(0, 40)
        pmf = stats.nbinom.pmf(ks, t, t / (t + m))
        expected = np.append(pmf, 1 - pmf.sum()) * draws.shape[0]
        observed = np.append([(draws[:, j] == k).sum() for k in ks], (draws[:, j] >= 40).sum())
        keep = expected > 5
        chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
        assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3, (m, t, chi2)


@pytest.mark.parametrize("theta_shape", [(6,), (4, 6)])
def test_gamma_terms_off_the_cpu_read_nothing_back_to_the_host(theta_shape):
    # the meta device has no data: `nonzero` (a host synchronisation on a GPU) would raise
    from sbi_vi.singlecell.distributions import _gamma_terms

    x = torch.poisson(torch.rand(4, 6) * 40)
    theta = torch.rand(*theta_shape) + 0.5
    assert _gamma_terms(x.to("meta"), theta.to("meta")).shape == (4,)
    direct = torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
    torch.testing.assert_close(_gamma_terms(x, theta), direct.sum(-1))
