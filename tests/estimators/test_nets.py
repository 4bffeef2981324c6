"""Network builders: shapes, broadcasting, z-scoring, embeddings, normalisation, errors."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from torch import nn

from sbi_vi._zuko import zuko
from sbi_vi.estimators import (
    ConditionalFlow,
    FCEmbedding,
    IdentityEmbedding,
    RatioClassifier,
    Standardize,
    classifier_nn,
    likelihood_nn,
)

THETA = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
X = torch.cat([THETA, THETA[:, :1] ** 2], -1) * 3.0 + 10.0  # [300, 3], far from N(0, 1)


# ------------------------------------------------------------------ z-scoring, embeddings
def test_standardize_modes():
    z = Standardize(X, "independent")
    out = z(X)
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.inverse(out), X)
    assert z.log_abs_det() == pytest.approx(-X.std(0).log().sum().item(), rel=1e-5)
    s = Standardize(X, "structured")
    assert torch.unique(s.std).numel() == 1 and torch.unique(s.mean).numel() == 1
    n = Standardize(X, "none")
    assert n(X) is X and float(n.log_abs_det()) == 0.0


def test_standardize_ignores_non_finite_rows_and_constant_columns():
    batch = torch.tensor([[1.0, 5.0], [3.0, 5.0], [float("nan"), 5.0]])
    z = Standardize(batch)
    torch.testing.assert_close(z.mean, torch.tensor([2.0, 5.0]))
    assert z.std[1] == 1.0  # a constant column is centred, not divided by zero
    with pytest.raises(ValueError, match="z_score"):
        Standardize(batch, "bogus")


def test_embeddings():
    assert IdentityEmbedding()(X).shape == X.shape
    emb = FCEmbedding(3, output_dim=4, num_layers=3, enable_layer_norm=True)
    assert emb(X).shape == (300, 4)
    with pytest.raises(ValueError, match="num_layers"):
        FCEmbedding(3, num_layers=1)
    with pytest.raises(ValueError, match="output_dim"):
        FCEmbedding(3, output_dim=0)


# ------------------------------------------------------------------ flows
@pytest.mark.parametrize("model", ["maf", "nsf"])
def test_flow_shapes_and_broadcasting(model):
    q = likelihood_nn(model, hidden_features=16, num_transforms=2)(THETA, X)
    assert isinstance(q, ConditionalFlow)
    assert q.log_prob(X[:5], THETA[:5]).shape == (5,)
    assert q.log_prob(X[:4].reshape(2, 2, 3), THETA[:2].unsqueeze(1)).shape == (2, 2)
    assert q.log_prob(X[0], THETA[:7]).shape == (7,)  # one x against many θ
    assert q.loss(X[:5], THETA[:5]).shape == (5,)
    assert q.sample((6,), THETA[0]).shape == (6, 3)
    assert q.sample((6,), THETA[:4]).shape == (6, 4, 3)
    with pytest.raises(ValueError, match=r"`x` must have shape \[\*, 3\]"):
        q.log_prob(X[:, :2], THETA)
    with pytest.raises(ValueError, match="theta"):
        q.log_prob(X, THETA[:, :1])
    with pytest.raises(ValueError, match="broadcast"):
        q.log_prob(X[:5], THETA[:4])


@pytest.mark.parametrize("model", ["maf", "nsf"])
def test_flow_density_integrates_to_one_in_original_units(model):
    torch.manual_seed(1)
    theta = torch.randn(200, 1)
    x = 4.0 * torch.randn(200, 1) + 7.0  # z-scoring must enter log_prob
    q = likelihood_nn(model, hidden_features=16, num_transforms=2)(theta, x)
    grid = torch.linspace(-60, 80, 20001).unsqueeze(-1)
    with torch.no_grad():
        density = q.log_prob(grid, torch.tensor([0.3])).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("model", ["maf", "nsf"])
@pytest.mark.parametrize("features", [1, 3])
def test_untrained_flow_starts_at_the_z_scoring_gaussian(model, features):
    x = X[:, :features]
    q = likelihood_nn(model)(THETA, x)
    gaussian = torch.distributions.Normal(x.mean(0), x.std(0)).log_prob(x).sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(q.log_prob(x, THETA), gaussian, atol=0.05, rtol=0)


def test_flow_embedding_acts_on_theta_and_builder_copies_it():
    emb = FCEmbedding(2, output_dim=5)
    build = likelihood_nn("maf", num_transforms=1, embedding_net=emb)
    q1, q2 = build(THETA, X), build(THETA, X)
    assert q1.embedding_net is not emb and q1.embedding_net is not q2.embedding_net
    assert q1.log_prob(X[:3], THETA[:3]).shape == (3,)


def test_likelihood_nn_validates_arguments():
    with pytest.raises(ValueError, match="model"):
        likelihood_nn("made")
    with pytest.raises(ValueError, match="num_bins"):
        likelihood_nn("nsf", num_bins=1)
    with pytest.raises(TypeError, match="hidden_features"):
        likelihood_nn("maf", hidden_features=2.5)
    with pytest.raises(TypeError, match="embedding_net"):
        likelihood_nn("maf", embedding_net=lambda t: t)
    with pytest.raises(ValueError, match="z_score_x"):
        likelihood_nn("maf", z_score_x="transform_to_unconstrained")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        likelihood_nn()(THETA[0], X)


def test_builders_and_networks_pickle():
    build = likelihood_nn("nsf", num_transforms=2, embedding_net=FCEmbedding(2, 3))
    q = pickle.loads(pickle.dumps(build))(THETA, X)
    buffer = io.BytesIO()
    torch.save(q, buffer)
    buffer.seek(0)
    q2 = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(q2.log_prob(X, THETA), q.log_prob(X, THETA))
    r = classifier_nn("resnet")(THETA, X)
    r2 = pickle.loads(pickle.dumps(r))
    torch.testing.assert_close(r2.log_ratio(THETA, X), r.log_ratio(THETA, X))


def test_single_feature_x_works():
    x = THETA[:, :1] + 0.1
    q = likelihood_nn("nsf", num_transforms=2)(THETA, x)
    assert q.log_prob(x[:3], THETA[:3]).shape == (3,)
    assert q.sample((2,), THETA[0]).shape == (2, 1)


# ------------------------------------------------------------------ classifiers
@pytest.mark.parametrize("model", ["linear", "mlp", "resnet"])
def test_classifier_shapes(model):
    r = classifier_nn(model, hidden_features=16)(THETA, X)
    assert isinstance(r, RatioClassifier)
    assert r(THETA[:5], X[:5]).shape == (5,)
    assert r.log_ratio(THETA[:6], X[0]).shape == (6,)
    assert r.log_ratio(THETA[:4].reshape(2, 2, 2), X[:2].unsqueeze(1)).shape == (2, 2)
    with pytest.raises(ValueError, match="theta"):
        r.log_ratio(THETA[:, :1], X)


def test_classifier_z_scores_and_embeds_x():
    r = classifier_nn("mlp", embedding_net_x=FCEmbedding(3, 4))(THETA, X)
    assert r.net[0].in_features == 2 + 4
    torch.testing.assert_close(r.x_norm(X).mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="dropout_probability"):
        classifier_nn("resnet", dropout_probability=1.0)
    with pytest.raises(TypeError, match="embedding_net_x"):
        classifier_nn("mlp", embedding_net_x="cnn")
    with pytest.raises(ValueError, match="model"):
        classifier_nn("transformer")


def test_a_zuko_flow_can_be_wrapped():
    flow = zuko.flows.MAF(3, 2, transforms=1)
    q = ConditionalFlow(flow, Standardize(X), Standardize(THETA))
    assert q.log_prob(X[:2], THETA[:2]).shape == (2,)
    assert math.isfinite(float(q.loss(X, THETA).mean().detach()))
    assert isinstance(q.embedding_net, nn.Identity)


@pytest.mark.parametrize("model", ["maf", "nsf"])
def test_direct_density_matches_zuko_log_prob(model):
    theta = THETA.double().requires_grad_()
    q = likelihood_nn(model, num_transforms=3)(THETA, X).double()
    with torch.no_grad():  # away from the near-identity start
        for p in q.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    params = [theta, *q.parameters()]
    fast = q.log_prob(X.double(), theta)
    assert q.__dict__["_fast_plan"]  # the direct path was taken
    g_fast = torch.autograd.grad(fast.sum(), params)
    ref = q.flow(q._context(theta)).log_prob(q.x_norm(X.double())) + q.x_norm.log_abs_det()
    g_ref = torch.autograd.grad(ref.sum(), params)
    torch.testing.assert_close(fast, ref)
    for g, g0 in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(g, g0)


def test_other_zuko_flows_keep_zuko_log_prob():
    nsf = ConditionalFlow(zuko.flows.NSF(3, 2, transforms=1), Standardize(X), Standardize(THETA))
    maf = ConditionalFlow(zuko.flows.MAF(3, 2, transforms=1), Standardize(X), Standardize(THETA))
    nsf.log_prob(X[:2], THETA[:2])
    maf.log_prob(X[:2], THETA[:2])
    assert nsf.__dict__["_fast_plan"] is False
    assert maf.__dict__["_fast_plan"] == (None,)
