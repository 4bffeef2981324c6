"""The NB log-likelihood from decoder logits: values against scipy, closed-form gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from sbi_vi.singlecell.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial
from sbi_vi.singlecell.softmax_nb import softmax_nb_log_likelihood


def _inputs(theta_shape: tuple[int, ...], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(3, 9, generator=g, dtype=torch.float64) * 6)
    logits = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    log_library = torch.randn(2, 3, generator=g, dtype=torch.float64) + 2.0
    theta = torch.rand(*theta_shape, generator=g, dtype=torch.float64) * 3 + 0.2
    return x, logits, log_library, theta


def _gamma_terms(x, theta):
    return torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)


@pytest.mark.parametrize("theta_shape", [(9,), (3, 9), (2, 3, 9)])
def test_values_match_scipy(theta_shape):
    x, logits, log_library, theta = _inputs(theta_shape)
    mu = log_library.exp().unsqueeze(-1) * logits.softmax(-1)
    theta_full = theta.expand(mu.shape)
    p = (theta_full / (theta_full + mu)).numpy()
    expected = stats.nbinom.logpmf(x.expand(mu.shape).numpy(), theta_full.numpy(), p).sum(-1)
    value = softmax_nb_log_likelihood(x, logits, log_library, theta)
    value = value + _gamma_terms(x, theta).sum(-1)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("theta_shape", [(9,), (3, 9), (2, 3, 9)])
@pytest.mark.parametrize("library_shape", [(2, 3), (3,)])
def test_closed_form_gradients_pass_gradcheck(theta_shape, library_shape):
    x, logits, _, theta = _inputs(theta_shape, seed=1)
    log_library = torch.randn(*library_shape, dtype=torch.float64) + 1.0
    args = (logits.requires_grad_(), log_library.requires_grad_(), theta.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda a, lib, t: softmax_nb_log_likelihood(x, a, lib, t), args
    )


@pytest.mark.parametrize("theta_shape", [(9,), (3, 9), (2, 3, 9)])
def test_zinb_values_match_the_scipy_mixture(theta_shape):
    x, logits, log_library, theta = _inputs(theta_shape, seed=5)
    x[:, ::2] = 0.0  # zeros on both branches of the mixture
    zi = torch.randn(2, 3, 9, dtype=torch.float64)
    mu = log_library.exp().unsqueeze(-1) * logits.softmax(-1)
    theta_full, xs = theta.expand(mu.shape).numpy(), x.expand(mu.shape).numpy()
    pi = torch.sigmoid(zi).numpy()
    nb = stats.nbinom.pmf(xs, theta_full, theta_full / (theta_full + mu.numpy()))
    expected = np.log(np.where(xs == 0, pi + (1 - pi) * nb, (1 - pi) * nb)).sum(-1)
    value = softmax_nb_log_likelihood(x, logits, log_library, theta, zi)
    value = value + _gamma_terms(x, theta).sum(-1)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("theta_shape", [(9,), (3, 9), (2, 3, 9)])
def test_zinb_closed_form_gradients_pass_gradcheck(theta_shape):
    x, logits, log_library, theta = _inputs(theta_shape, seed=6)
    x[:, 1::3] = 0.0
    zi = torch.randn(2, 3, 9, dtype=torch.float64)
    args = (
        logits.requires_grad_(),
        log_library.requires_grad_(),
        theta.requires_grad_(),
        zi.requires_grad_(),
    )
    assert torch.autograd.gradcheck(
        lambda a, lib, t, z: softmax_nb_log_likelihood(x, a, lib, t, z), args
    )


def test_gradient_of_a_subset_of_inputs_equals_the_full_gradient():
    x, logits, log_library, theta = _inputs((9,), seed=2)
    logits.requires_grad_()
    (only_logits,) = torch.autograd.grad(
        softmax_nb_log_likelihood(x, logits, log_library, theta).sum(), logits
    )
    args = (logits, log_library.requires_grad_(), theta.requires_grad_())
    full = torch.autograd.grad(softmax_nb_log_likelihood(x, *args).sum(), args)
    torch.testing.assert_close(only_logits, full[0])


def test_exact_where_the_float32_softmax_underflows():
    # softmax(logits)[1] is exactly 0 in float32; x log μ = x (log ℓ + a − lse) stays exact.
    x = torch.tensor([[0.0, 2.0]])
    logits = torch.tensor([[0.0, -120.0]])
    assert logits.softmax(-1)[0, 1] == 0
    value = softmax_nb_log_likelihood(x, logits, torch.tensor([3.0]), torch.ones(2))
    log_mu = 3.0 + np.array([0.0, -120.0]) - np.logaddexp(0.0, -120.0)
    # θ = 1: log NB(x; μ, 1) = x log μ − (1 + x) log(1 + μ); the gamma terms are 0.
    expected = (x.numpy()[0] * log_mu - (1 + x.numpy()[0]) * np.log1p(np.exp(log_mu))).sum()
    np.testing.assert_allclose(value.item(), expected, rtol=1e-6)


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_logits_parametrisation_equals_mean_parametrisation(zero_inflated):
    x, logits, log_library, theta = _inputs((9,), seed=3)
    mu = log_library.exp().unsqueeze(-1) * logits.softmax(-1)
    if zero_inflated:
        zi = torch.randn(2, 3, 9, dtype=torch.float64)
        by_mu = ZeroInflatedNegativeBinomial(mu, theta, zi)
        by_logits = ZeroInflatedNegativeBinomial(
            None, theta, zi, logits=logits, log_library=log_library
        )
    else:
        by_mu = NegativeBinomial(mu, theta)
        by_logits = NegativeBinomial(None, theta, logits=logits, log_library=log_library)
    torch.testing.assert_close(by_logits.mu, mu)
    torch.testing.assert_close(by_logits.scale, logits.softmax(-1))
    torch.testing.assert_close(by_logits.theta, by_mu.theta)
    torch.testing.assert_close(by_logits.variance, by_mu.variance)
    torch.testing.assert_close(by_logits.log_prob_sum(x), by_mu.log_prob_sum(x))
    torch.testing.assert_close(by_logits.log_prob(x), by_mu.log_prob(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mu": None},
        {"mu": torch.ones(3), "logits": torch.zeros(3), "log_library": torch.zeros(())},
        {"mu": None, "logits": torch.zeros(3)},
    ],
)
def test_parametrisation_errors_name_the_arguments(kwargs):
    mu = kwargs.pop("mu")
    with pytest.raises(ValueError, match="either `mu`, or `logits` and `log_library`"):
        NegativeBinomial(mu, torch.ones(3), **kwargs)


def _zinb_both_ways(x, logits, log_library, theta, zi):
    """The ZINB sum without gradients (inference form) and through the autograd node."""
    with torch.no_grad():
        inference = softmax_nb_log_likelihood(x, logits, log_library, theta, zi)
    logits = logits.clone().requires_grad_()
    with torch.enable_grad():
        autograd = softmax_nb_log_likelihood(x, logits, log_library, theta, zi)
    return inference, autograd.detach()


@pytest.mark.parametrize("theta_shape", [(9,), (3, 9), (2, 3, 9)])
@pytest.mark.parametrize(("zi_scale", "zi_shift"), [(1.0, 0.0), (8.0, 0.0), (3.0, -12.0)])
def test_zinb_inference_form_equals_the_autograd_form(theta_shape, zi_scale, zi_shift):
    x, logits, log_library, theta = _inputs(theta_shape, seed=7)
    x[:, 1::2] = 0.0
    g = torch.Generator().manual_seed(8)
    zi = torch.randn(2, 3, 9, generator=g, dtype=torch.float64) * zi_scale + zi_shift
    inference, autograd = _zinb_both_ways(x, logits, log_library, theta, zi)
    torch.testing.assert_close(inference, autograd, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("zi_shift", [-150.0, 150.0])
def test_zinb_inference_form_falls_back_outside_float_range(zi_shift):
    # e^{∓π} under/overflows (and, with a deep library, so does NB(0)): the exact form answers
    x, logits, log_library, theta = (t.float() for t in _inputs((9,), seed=9))
    x[:, ::2] = 0.0
    zi = torch.full((2, 3, 9), zi_shift)
    inference, autograd = _zinb_both_ways(x, logits, log_library + 10.0, theta, zi)
    assert torch.isfinite(inference).all()
    torch.testing.assert_close(inference, autograd)


def test_zinb_inference_form_in_float32_is_as_close_to_float64_as_the_autograd_form():
    g = torch.Generator().manual_seed(10)
    x = torch.poisson(torch.rand(16, 200, generator=g) * 3)
    x[:, ::3] = 0.0
    logits = torch.randn(4, 16, 200, generator=g) * 2
    log_library = torch.randn(16, generator=g) * 0.3 + 6.0
    theta = torch.rand(200, generator=g) * 5 + 0.3
    zi = torch.randn(4, 16, 200, generator=g) * 3 - 1
    exact = softmax_nb_log_likelihood(*(t.double() for t in (x, logits, log_library, theta, zi)))
    inference, autograd = _zinb_both_ways(x, logits, log_library, theta, zi)
    error_autograd = (autograd.double() - exact).abs().max()
    assert (inference.double() - exact).abs().max() <= 2 * error_autograd + 1e-3
