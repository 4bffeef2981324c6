"""NLE/NRE: an interrupted train() leaves a consistent estimator; copies, files, reloads."""

from __future__ import annotations

import copy
import importlib
import pickle

import pytest
import torch

from sbi_vi.errors import NotTrainedError
from sbi_vi.estimators import NLE, NRE

fit_module = importlib.import_module("sbi_vi.vi.fit")  # the loop the estimators train in

SMALL = {"hidden_features": 16, "num_transforms": 2}


def make(kind, prior):
    if kind == "NLE":
        return NLE(prior, "maf", show_progress_bars=False, **SMALL)
    return NRE(prior, "mlp", show_progress_bars=False, hidden_features=16)


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_after(monkeypatch, steps, exc=Interrupt):
    """Make the training loop raise ``exc`` at its ``steps + 1``-th gradient step."""
    real = fit_module.gradient_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > steps:
            raise exc("stop")
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "gradient_step", step)


def consistent(summary):
    n = len(summary["training_loss"])
    return (
        n == len(summary["validation_loss"]) == len(summary["epoch_durations_sec"])
        and summary["epochs_trained"][-1] == n
        and len(summary["epochs_trained"]) == len(summary["best_validation_loss"])
    )


@pytest.mark.parametrize("kind", ["NLE", "NRE"])
@pytest.mark.parametrize("exc", [Interrupt, ValueError])
def test_interrupted_train_keeps_the_best_weights(kind, exc, linear_gaussian, monkeypatch):
    theta, x = linear_gaussian.theta[:400], linear_gaussian.x[:400]
    est = make(kind, linear_gaussian.prior).append_simulations(theta, x)
    steps_per_epoch = 360 // 50
    interrupt_after(monkeypatch, 3 * steps_per_epoch + 2, exc)  # inside the 4th epoch
    with pytest.raises(exc, match="stop"):
        est.train(training_batch_size=50, seed=0)
    net = est._neural_net
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert consistent(est.summary) and est.summary["epochs_trained"] == [3]
    best = est._state.best_weights
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, best[name])
    assert est.summary["best_validation_loss"][-1] == min(est.summary["validation_loss"])
    posterior = est.build_posterior(vi_parameters={"q": "gaussian"})
    assert torch.isfinite(posterior.potential(theta[:3], x=x[0])).all()
    monkeypatch.undo()
    est.train(training_batch_size=50, max_num_epochs=5, resume_training=True)
    assert consistent(est.summary) and est.summary["epochs_trained"] == [3, 5]


@pytest.mark.parametrize("kind", ["NLE", "NRE"])
def test_interrupt_before_the_first_epoch_refuses_a_posterior(kind, linear_gaussian, monkeypatch):
    theta, x = linear_gaussian.theta[:200], linear_gaussian.x[:200]
    est = make(kind, linear_gaussian.prior).append_simulations(theta, x)
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupt):
        est.train(training_batch_size=50, seed=0)
    assert consistent(est.summary) and est.summary["epochs_trained"] == [0]
    with pytest.raises(NotTrainedError, match="never finished a training epoch"):
        est.build_posterior()
    with pytest.raises(ValueError):  # sbi users catch ValueError
        est.build_posterior()
    monkeypatch.undo()
    est.train(training_batch_size=50, max_num_epochs=2, seed=0)
    assert consistent(est.summary) and est.summary["epochs_trained"] == [0, 2]
    est.build_posterior()


@pytest.mark.parametrize("kind", ["NLE", "NRE"])
def test_interrupted_retrain_keeps_the_trained_weights(kind, linear_gaussian, monkeypatch):
    theta, x = linear_gaussian.theta[:200], linear_gaussian.x[:200]
    est = make(kind, linear_gaussian.prior).append_simulations(theta, x)
    est.train(training_batch_size=50, max_num_epochs=2, seed=0)
    before = copy.deepcopy(est._neural_net.state_dict())
    interrupt_after(monkeypatch, 2)  # mid-epoch: two steps already changed the weights
    with pytest.raises(Interrupt):
        est.train(training_batch_size=50, max_num_epochs=4, seed=1)
    for name, value in est._neural_net.state_dict().items():
        torch.testing.assert_close(value, before[name])
    assert not est._neural_net.training
    est.build_posterior()


@pytest.mark.parametrize("kind", ["NLE", "NRE"])
def test_trained_estimator_copies_pickles_and_saves(kind, linear_gaussian, tmp_path):
    theta, x = linear_gaussian.theta[:300], linear_gaussian.x[:300]
    est = make(kind, linear_gaussian.prior).append_simulations(theta, x)
    est.train(training_batch_size=50, max_num_epochs=2, seed=0)
    path = tmp_path / "est.pt"
    est.save(path)
    copies = [copy.deepcopy(est), pickle.loads(pickle.dumps(est)), type(est).load(path)]
    probe_theta, probe_x = theta[:7], x[:7]

    def score(e):
        net = e._neural_net
        return (
            net.log_prob(probe_x, probe_theta)
            if kind == "NLE"
            else net.log_ratio(probe_theta, probe_x)
        )

    for other in copies:
        torch.testing.assert_close(score(other), score(est))
        assert other.summary == est.summary
    # the copies train on identically from the same seed
    nets = []
    for e in (est, copies[0]):
        e.train(training_batch_size=50, max_num_epochs=3, resume_training=True, seed=3)
        nets.append(score(e))
    torch.testing.assert_close(nets[0], nets[1])
    # and their posteriors sample identically
    samples = []
    for e in (est, copies[0]):
        torch.manual_seed(0)
        post = e.build_posterior(vi_parameters={"q": "gaussian"}).set_default_x(x[0])
        post.train(max_num_iters=20, show_progress_bar=False, quality_control=False, seed=0)
        torch.manual_seed(1)
        samples.append(post.sample((5,)))
    torch.testing.assert_close(samples[0], samples[1])


def test_load_refuses_bad_files(linear_gaussian, tmp_path):
    est = make("NLE", linear_gaussian.prior)
    est.append_simulations(linear_gaussian.theta[:100], linear_gaussian.x[:100])
    path = tmp_path / "nle.pt"
    est.save(path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt' is not a valid NLE file"):
        NLE.load(tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"holds a NLE.*not a NRE"):
        NRE.load(path)
