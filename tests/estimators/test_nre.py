"""NRE: the contrastive loss and its special cases, accuracy, posterior and persistence."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sbi_vi import VIPosterior
from sbi_vi.estimators import NRE, NRE_A, NRE_B, NRE_C, ContrastiveLoss, LogitRatio


class Bilinear(nn.Module):
    """A user classifier: logits ``[B, 1]`` from ``(theta, x)``, no ``log_ratio``."""

    def __init__(self, a=1.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, theta, x):
        return (self.a * theta * x).sum(-1, keepdim=True)


def permuted(rows, offsets, b):
    return torch.cat([rows, (rows + offsets) % b], -1)


def test_contrastive_loss_special_cases():
    torch.manual_seed(0)
    net = LogitRatio(Bilinear(0.7))
    theta, x = torch.randn(32, 2), torch.randn(32, 2)
    # K = 1, gamma = 1: binary cross-entropy of the pair against one contrast
    g = torch.Generator().manual_seed(3)
    loss = ContrastiveLoss(1, 1.0)(net, theta, x, generator=g)
    offset = torch.randperm(31, generator=torch.Generator().manual_seed(3))[:1] + 1
    contrast = theta[(torch.arange(32) + offset) % 32]
    bce = 0.5 * (
        F.softplus(-net(theta, x)).mean()  # -log σ(f(θ_i, x_i))
        + F.softplus(net(contrast, x)).mean()  # -log(1 - σ(f(θ_j, x_i)))
    )
    torch.testing.assert_close(loss, bce)
    # gamma = inf: softmax cross-entropy over the K candidates (NRE-B)
    k = 4
    loss = ContrastiveLoss(k, math.inf)(net, theta, x, generator=torch.Generator().manual_seed(5))
    offsets = torch.randperm(31, generator=torch.Generator().manual_seed(5))[:k] + 1
    index = permuted(torch.arange(32).unsqueeze(-1), offsets, 32)[:, :k]
    logits = net(theta[index].reshape(-1, 2), x.repeat_interleave(k, 0)).reshape(32, k)
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.zeros(32, dtype=torch.long)))
    # a large gamma approaches the limit
    big = ContrastiveLoss(k, 1e8)(net, theta, x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(big, loss, atol=1e-4, rtol=0)


def test_contrastive_loss_is_minimal_at_the_true_ratio():
    """For x = θ + noise, the exact log-ratio beats scaled versions of it."""
    torch.manual_seed(0)
    sigma = 0.5
    theta = torch.randn(4000, 1)
    x = theta + sigma * torch.randn(4000, 1)
    marginal = torch.distributions.Normal(0.0, (1 + sigma**2) ** 0.5)

    class Exact(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def log_ratio(self, t, xx):
            lik = torch.distributions.Normal(t, sigma).log_prob(xx).sum(-1)
            return self.scale * (lik - marginal.log_prob(xx).sum(-1))

        def forward(self, t, xx):
            return self.log_ratio(t, xx)

    loss = ContrastiveLoss(5, 1.0)
    values = {}
    for scale in (0.8, 1.0, 1.25):
        g = torch.Generator().manual_seed(1)
        blocks = (theta.reshape(20, 200, 1), x.reshape(20, 200, 1))
        values[scale] = float(loss(Exact(scale), *blocks, g))
    assert values[1.0] < values[0.8] and values[1.0] < values[1.25]


def test_validation_is_deterministic_and_blocks_must_fit():
    net = LogitRatio(Bilinear())
    theta, x = torch.randn(50, 2), torch.randn(50, 2)
    loss = ContrastiveLoss(5, 1.0)
    assert loss.validation(net, theta, x, 20) == loss.validation(net, theta, x, 20)
    with pytest.raises(ValueError, match="larger than `num_classes=5`"):
        loss(net, theta[:5], x[:5])
    with pytest.raises(ValueError, match="num_classes"):
        ContrastiveLoss(0)
    with pytest.raises(ValueError, match="gamma"):
        ContrastiveLoss(2, -1.0)


def test_variants_and_arguments(linear_gaussian):
    assert NRE_C is NRE
    a, b = NRE_A(show_progress_bars=False), NRE_B(show_progress_bars=False, num_atoms=7)
    assert (a._loss.num_classes, a._loss.gamma) == (1, 1.0)
    assert (b._loss.num_classes, b._loss.gamma) == (7, math.inf)
    with pytest.raises(ValueError, match="classifier"):
        NRE(classifier="cnn")
    with pytest.raises(TypeError, match="configure a named"):
        NRE(classifier=lambda t, x: Bilinear(), hidden_features=4)
    theta, x = linear_gaussian.theta[:300], linear_gaussian.x[:300]
    nre = NRE(linear_gaussian.prior, "mlp", show_progress_bars=False)
    with pytest.raises(ValueError, match="larger than `num_classes=5`"):
        nre.append_simulations(theta, x).train(training_batch_size=4, max_num_epochs=1)


def test_user_classifier_is_wrapped_with_log_ratio(linear_gaussian):
    theta, x = linear_gaussian.theta[:400], linear_gaussian.x[:400]
    nre = NRE(linear_gaussian.prior, lambda t, xx: Bilinear(0.0), show_progress_bars=False)
    net = nre.append_simulations(theta, x).train(max_num_epochs=20, learning_rate=0.05, seed=0)
    assert isinstance(net, LogitRatio)
    assert net.log_ratio(theta[:3], x[0]).shape == (3,)
    assert float(net.net.a) > 0.5  # positively correlated θ and x are recognised


@pytest.mark.slow
@pytest.mark.parametrize(
    ("classifier", "num_classes", "gamma"),
    [("resnet", 5, 1.0), ("mlp", 1, 1.0), ("mlp", 10, math.inf)],
)
def test_implied_posterior_matches_the_exact_one(linear_gaussian, classifier, num_classes, gamma):
    lg = linear_gaussian
    nre = NRE(lg.prior, classifier, show_progress_bars=False, num_classes=num_classes, gamma=gamma)
    r = nre.append_simulations(lg.theta, lg.x).train(max_num_epochs=150, seed=0)
    axis = torch.linspace(-3.5, 3.5, 141)
    grid = torch.cartesian_prod(axis, axis)
    for x_o in (torch.tensor([0.5, -0.3]), torch.tensor([-1.0, 1.2])):
        with torch.no_grad():
            w = torch.softmax(r.log_ratio(grid, x_o) + lg.prior.log_prob(grid), 0)
        mean = (w[:, None] * grid).sum(0)
        std = (w[:, None] * (grid - mean) ** 2).sum(0).sqrt()
        true_mean, true_std = lg.exact_posterior(x_o)
        torch.testing.assert_close(mean, true_mean, atol=0.1, rtol=0)
        torch.testing.assert_close(std, torch.full((2,), true_std), atol=0.08, rtol=0)
    if not math.isinf(gamma):  # NRE-A/C learn the normalised ratio: E_prior[r] = 1
        with torch.no_grad():
            z = r.log_ratio(lg.prior.sample((20000,)), torch.tensor([0.5, -0.3])).exp().mean()
        assert float(z) == pytest.approx(1.0, abs=0.15)


def test_build_posterior_uses_the_ratio(linear_gaussian):
    theta, x = linear_gaussian.theta[:500], linear_gaussian.x[:500]
    nre = NRE(linear_gaussian.prior, "mlp", show_progress_bars=False)
    r = nre.append_simulations(theta, x).train(max_num_epochs=2, seed=0)
    posterior = nre.build_posterior(vi_parameters={"q": "gaussian"})
    assert isinstance(posterior, VIPosterior)
    x_o = torch.tensor([0.5, -0.3])
    posterior.set_default_x(x_o)
    with torch.no_grad():
        lp = posterior.potential_fn.set_x(x_o)(theta[:4])
    expected = r.log_ratio(theta[:4], x_o) + linear_gaussian.prior.log_prob(theta[:4])
    torch.testing.assert_close(lp, expected)
    torch.manual_seed(0)
    posterior.train(max_num_iters=30, show_progress_bar=False, quality_control=False)
    samples = posterior.sample((50,))
    assert samples.shape == (50, 2)
    restored = pickle.loads(pickle.dumps(posterior))
    torch.testing.assert_close(restored.log_prob(samples), posterior.log_prob(samples))
    nre2 = pickle.loads(pickle.dumps(nre))
    torch.testing.assert_close(nre2._neural_net.log_ratio(theta, x), r.log_ratio(theta, x))
