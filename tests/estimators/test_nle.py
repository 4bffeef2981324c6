"""NLE: the simulation store, training contract, accuracy, posterior and persistence."""

from __future__ import annotations

import io
import pickle
import warnings

import pytest
import torch
from torch import nn

from sbi_vi import BoxUniform, VIPosterior
from sbi_vi._zuko import zuko
from sbi_vi.errors import SimulationWarning
from sbi_vi.estimators import NLE, ConditionalFlow, likelihood_nn

SMALL = {"hidden_features": 16, "num_transforms": 2}


def small_nle(prior, model="maf", **kwargs):
    return NLE(prior, model, show_progress_bars=False, **SMALL, **kwargs)


# ------------------------------------------------------------------ append_simulations
def test_append_validates_shapes(linear_gaussian):
    nle = small_nle(linear_gaussian.prior)
    theta, x = linear_gaussian.theta[:10], linear_gaussian.x[:10]
    with pytest.raises(ValueError, match=r"`theta` must have shape \[N, D\]"):
        nle.append_simulations(theta[0], x)
    with pytest.raises(ValueError, match=r"`x` must have shape \[N, L\]"):
        nle.append_simulations(theta, x.reshape(10, 2, 1))
    with pytest.raises(ValueError, match="same number of simulations; got 10 and 9"):
        nle.append_simulations(theta, x[:9])
    with pytest.raises(ValueError, match="event shape"):
        nle.append_simulations(torch.zeros(10, 3), x)
    with pytest.raises(ValueError, match="`theta` must be finite"):
        nle.append_simulations(theta.clone().fill_(float("nan")), x)
    with pytest.raises(TypeError, match="`x` must be a tensor"):
        nle.append_simulations(theta, object())
    nle.append_simulations(theta, x)
    with pytest.raises(ValueError, match="earlier ones"):
        nle.append_simulations(theta, torch.zeros(10, 3))


def test_invalid_simulations_are_dropped_and_counted(linear_gaussian):
    theta, x = linear_gaussian.theta[:20], linear_gaussian.x[:20].clone()
    x[3, 0] = float("nan")
    x[5, 1] = float("inf")
    x[7] = float("-inf")
    nle = small_nle(linear_gaussian.prior)
    with pytest.warns(SimulationWarning, match="Dropped 3 of 20 .*1 with NaN, 2 with inf"):
        nle.append_simulations(theta, x)
    kept_theta, kept_x = nle.get_simulations()
    assert kept_x.shape == (17, 2) and bool(torch.isfinite(kept_x).all())
    torch.testing.assert_close(kept_theta[3], theta[4])
    with pytest.raises(ValueError, match="3 of 20 simulations are invalid"):
        small_nle(linear_gaussian.prior).append_simulations(theta, x, exclude_invalid_x=False)
    with pytest.raises(ValueError, match="All 20"):
        nle.append_simulations(theta, torch.full_like(x, float("nan")))


def test_rounds_accumulate_and_prior_samples_can_be_discarded(linear_gaussian):
    theta, x = linear_gaussian.theta, linear_gaussian.x
    nle = small_nle(linear_gaussian.prior)
    assert nle.append_simulations(theta[:100], x[:100]) is nle
    nle.append_simulations(theta[100:250], x[100:250], from_round=1)
    assert nle.get_simulations()[0].shape == (250, 2)
    assert nle.get_simulations(starting_round=1)[0].shape == (150, 2)
    nle.train(max_num_epochs=1, discard_prior_samples=True, seed=0)
    assert nle._state.num_simulations == 150


def test_train_needs_simulations():
    with pytest.raises(RuntimeError, match="append_simulations"):
        NLE(show_progress_bars=False).train()
    with pytest.raises(ValueError, match="density_estimator"):
        NLE(density_estimator="mdn")
    with pytest.raises(TypeError, match="configure a named"):
        NLE(density_estimator=likelihood_nn(), hidden_features=3)
    with pytest.raises(TypeError, match="density_estimator"):
        NLE(density_estimator=3)


# ------------------------------------------------------------------ training contract
def test_summary_resume_and_seed(linear_gaussian):
    theta, x = linear_gaussian.theta[:400], linear_gaussian.x[:400]
    nle = small_nle(linear_gaussian.prior).append_simulations(theta, x)
    net = nle.train(max_num_epochs=3, seed=1)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    s = nle.summary
    assert s["epochs_trained"] == [3] and len(s["validation_loss"]) == 3
    assert s["best_validation_loss"] == [min(s["validation_loss"])]
    assert len(s["training_loss"]) == len(s["epoch_durations_sec"]) == 3
    val_idx = nle._state.val_indices.clone()
    nle.train(max_num_epochs=5, resume_training=True)
    assert s["epochs_trained"] == [3, 5] and len(s["validation_loss"]) == 5
    torch.testing.assert_close(nle._state.val_indices, val_idx)
    # the same seed gives the same network
    again = small_nle(linear_gaussian.prior).append_simulations(theta, x)
    net2 = again.train(max_num_epochs=3, seed=1)
    nle2 = small_nle(linear_gaussian.prior).append_simulations(theta, x)
    nle2.train(max_num_epochs=3, seed=1)
    torch.testing.assert_close(net2.log_prob(x, theta), nle2._neural_net.log_prob(x, theta))
    with pytest.raises(RuntimeError, match="resume_training"):
        small_nle(None).append_simulations(theta, x).train(resume_training=True)
    nle.append_simulations(theta[:10], x[:10])
    with pytest.raises(ValueError, match="changed"):
        nle.train(resume_training=True)


def test_retrain_from_scratch_builds_a_new_network(linear_gaussian):
    theta, x = linear_gaussian.theta[:300], linear_gaussian.x[:300]
    nle = small_nle(linear_gaussian.prior).append_simulations(theta, x)
    first = nle.train(max_num_epochs=1, seed=0)
    assert nle.train(max_num_epochs=1, seed=0) is first  # continues the same network
    assert nle.train(max_num_epochs=1, retrain_from_scratch=True, seed=0) is not first


def test_train_summary_and_progress_bar_output(linear_gaussian, capsys):
    theta, x = linear_gaussian.theta[:300], linear_gaussian.x[:300]
    nle = small_nle(linear_gaussian.prior).append_simulations(theta, x)
    nle.train(max_num_epochs=1, show_train_summary=True, show_progress_bar=False)
    captured = capsys.readouterr()
    assert "best validation loss" in captured.out + captured.err
    assert "epoch/s" not in captured.err and "it/s" not in captured.err


def test_custom_builders_and_zuko_flows(linear_gaussian):
    theta, x = linear_gaussian.theta[:300], linear_gaussian.x[:300]

    class Gauss(nn.Module):  # log_prob(x, theta) only: loss defaults to -log_prob
        def __init__(self):
            super().__init__()
            self.log_scale = nn.Parameter(torch.zeros(()))

        def log_prob(self, x, theta):
            d = torch.distributions.Normal(theta, self.log_scale.exp())
            return d.log_prob(x).sum(-1)

    nle = NLE(linear_gaussian.prior, lambda t, x: Gauss(), show_progress_bars=False)
    net = nle.append_simulations(theta, x).train(learning_rate=0.05, max_num_epochs=30, seed=0)
    assert float(net.log_scale.exp()) == pytest.approx(linear_gaussian.sigma, rel=0.15)

    flow = zuko.flows.NSF(2, 2, transforms=1, hidden_features=(8,))
    for estimator in (flow, lambda t, x: zuko.flows.MAF(2, 2, transforms=1)):
        nle = NLE(linear_gaussian.prior, estimator, show_progress_bars=False)
        net = nle.append_simulations(theta, x).train(max_num_epochs=1, seed=0)
        assert isinstance(net, ConditionalFlow)
    bad = NLE(linear_gaussian.prior, zuko.flows.MAF(3, 2), show_progress_bars=False)
    with pytest.raises(ValueError, match="zuko flow must model x with 2 features"):
        bad.append_simulations(theta, x).train(max_num_epochs=1)
    wrong = NLE(linear_gaussian.prior, lambda t, x: nn.Linear(2, 2), show_progress_bars=False)
    with pytest.raises(TypeError, match="log_prob"):
        wrong.append_simulations(theta, x).train(max_num_epochs=1)


# ------------------------------------------------------------------ accuracy
@pytest.mark.slow
@pytest.mark.parametrize("model", ["maf", "nsf"])
def test_learns_the_linear_gaussian_likelihood(linear_gaussian, model):
    lg = linear_gaussian
    nle = NLE(lg.prior, model, show_progress_bars=False, hidden_features=32, num_transforms=3)
    q = nle.append_simulations(lg.theta, lg.x).train(max_num_epochs=200, seed=0)
    generator = torch.Generator().manual_seed(1)
    theta = torch.randn(2000, 2, generator=generator)
    x = lg.simulate(theta, generator)
    with torch.no_grad():
        error = q.log_prob(x, theta) - lg.log_likelihood(x, theta)
    assert error.abs().mean() < 0.25, error.abs().mean()
    assert abs(float(error.mean())) < 0.1  # ≈ -KL(p || q) on held-out pairs
    # the sampler follows the same density
    torch.manual_seed(0)
    draws = q.sample((4000,), torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(draws.mean(0), torch.tensor([0.5, -1.0]), atol=0.15, rtol=0)
    torch.testing.assert_close(draws.std(0), torch.full((2,), lg.sigma), atol=0.07, rtol=0)


# ------------------------------------------------------------------ posterior, persistence
def test_build_posterior_trains_samples_and_pickles(linear_gaussian):
    theta, x = linear_gaussian.theta[:500], linear_gaussian.x[:500]
    prior = BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    nle = small_nle(prior).append_simulations(theta.clamp(-2.9, 2.9), x)
    nle.train(max_num_epochs=3, seed=0)
    posterior = nle.build_posterior(vi_parameters={"q": "gaussian"})
    assert isinstance(posterior, VIPosterior) and posterior.vi_method == "rKL"
    x_o = torch.tensor([0.3, -0.2])
    posterior.set_default_x(x_o)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior.train(max_num_iters=50, show_progress_bar=False, quality_control=False)
    samples = posterior.sample((100,))
    assert samples.shape == (100, 2) and bool(torch.isfinite(samples).all())
    restored = pickle.loads(pickle.dumps(posterior))
    probe = samples[:10]
    torch.testing.assert_close(restored.log_prob(probe), posterior.log_prob(probe))
    buffer = io.BytesIO()
    torch.save(nle, buffer)
    buffer.seek(0)
    nle2 = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(
        nle2._neural_net.log_prob(x, theta), nle._neural_net.log_prob(x, theta)
    )
    nle2.train(max_num_epochs=4, resume_training=True)  # the optimizer survived too
    assert nle2.summary["epochs_trained"] == [3, 4]


def test_build_posterior_arguments(linear_gaussian):
    theta, x = linear_gaussian.theta[:300], linear_gaussian.x[:300]
    with pytest.raises(RuntimeError, match="train"):
        small_nle(linear_gaussian.prior).build_posterior()
    nle = small_nle(None).append_simulations(theta, x)
    net = nle.train(max_num_epochs=1, seed=0)
    with pytest.raises(ValueError, match="prior"):
        nle.build_posterior()
    with pytest.raises(ValueError, match="sample_with"):
        nle.build_posterior(prior=linear_gaussian.prior, sample_with="mcmc")
    with pytest.raises(ValueError, match="potential_fn"):
        nle.build_posterior(prior=linear_gaussian.prior, vi_parameters={"potential_fn": 1})
    with pytest.raises(ValueError, match="conflicts"):
        nle.build_posterior(
            prior=linear_gaussian.prior, vi_method="fKL", vi_parameters={"vi_method": "IW"}
        )
    posterior = nle.build_posterior(
        net, prior=linear_gaussian.prior, vi_method="fKL", vi_parameters={"q": "gaussian"}
    )
    assert posterior.vi_method == "fKL"
    torch.manual_seed(0)
    lp = posterior.potential_fn.set_x(x[0])(theta[:5])
    expected = net.log_prob(x[0], theta[:5]) + linear_gaussian.prior.log_prob(theta[:5])
    torch.testing.assert_close(lp, expected)
