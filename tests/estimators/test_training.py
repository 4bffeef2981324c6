"""The shared training loop: early stopping, best weights, epoch cap, resumption, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbi_vi.estimators.training import TrainConfig, TrainState, make_adam, train_loop


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))


class ScriptedLoss:
    """Training pulls p towards 10; validation losses follow a script; p is recorded."""

    def __init__(self, script):
        self.script = list(script)
        self.seen: list[float] = []

    def __call__(self, net, theta, x):
        return (net.p - 10.0).square() + 0 * theta.sum()

    def validation(self, net, theta, x, batch_size):
        self.seen.append(float(net.p))
        return self.script[len(self.seen) - 1]


def state_for(net, n=50):
    perm = torch.randperm(n)
    return TrainState(make_adam(list(net.parameters()), 0.1), perm[:40], perm[40:], n)


DATA = (torch.zeros(50, 1), torch.zeros(50, 1))


def test_early_stopping_restores_the_best_epoch():
    net, loss = Scalar(), ScriptedLoss([5, 4, 3, 3.5, 3.6, 3.7, 1, 1])
    state = state_for(net)
    config = TrainConfig(training_batch_size=10, stop_after_epochs=3, show_progress_bar=False)
    train_loop(net, loss, *DATA, state, config)
    assert state.epoch == 6  # best at epoch 3, then three epochs without improvement
    assert state.best_val_loss == 3
    assert float(net.p.detach()) == pytest.approx(loss.seen[2])
    assert loss.seen[2] < loss.seen[-1]  # training moved on; the best weights came back


def test_max_num_epochs_caps_and_resume_continues():
    net, loss = Scalar(), ScriptedLoss(range(100, 0, -1))
    state = state_for(net)
    optimizer = state.optimizer
    config = {"training_batch_size": 10, "show_progress_bar": False}
    train_loop(net, loss, *DATA, state, TrainConfig(max_num_epochs=3, **config))
    assert state.epoch == 3 and len(loss.seen) == 3
    train_loop(net, loss, *DATA, state, TrainConfig(max_num_epochs=7, **config))
    assert state.epoch == 7 and len(loss.seen) == 7
    assert state.optimizer is optimizer and state.best_val_loss == 94
    # 4 batches of 10 per epoch, one Adam step each: the step count continued
    assert int(optimizer.state[net.p]["step"]) == 7 * 4


def test_epoch_callback_gets_losses_and_durations():
    net, loss = Scalar(), ScriptedLoss([3, 2, 1])
    records = []
    train_loop(
        net,
        loss,
        *DATA,
        state_for(net),
        TrainConfig(max_num_epochs=3, show_progress_bar=False),
        on_epoch=lambda *r: records.append(r),
    )
    assert [r[1] for r in records] == [3, 2, 1]
    assert all(r[0] > 0 and r[2] >= 0 for r in records)


def test_non_finite_loss_raises():
    class NaNLoss(ScriptedLoss):
        def __call__(self, net, theta, x):
            return net.p * float("nan")

    net = Scalar()
    with pytest.raises(RuntimeError, match="non-finite"):
        train_loop(net, NaNLoss([1]), *DATA, state_for(net), TrainConfig(show_progress_bar=False))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"training_batch_size": 0}, "training_batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"stop_after_epochs": 0}, "stop_after_epochs"),
        ({"clip_max_norm": 0.0}, "clip_max_norm"),
        ({"max_num_epochs": -1}, "max_num_epochs"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_steps_decided_on_the_device_train_the_same_estimator(monkeypatch, linear_gaussian):
    """On a GPU the epoch's losses reach the loop at the epoch's end (one read per epoch);
    forced on the CPU, that path trains the same weights as the host-decided one."""
    import importlib

    from sbi_vi.estimators import NLE

    fit_module = importlib.import_module("sbi_vi.vi.fit")
    theta, x = linear_gaussian.theta[:600], linear_gaussian.x[:600]

    def trained():
        est = NLE(linear_gaussian.prior, "maf", show_progress_bars=False, hidden_features=16)
        est.append_simulations(theta, x).train(training_batch_size=50, max_num_epochs=6, seed=0)
        return est

    host = trained()
    monkeypatch.setattr(fit_module, "steps_on_device", lambda optimizer: True)
    device = trained()
    assert device.summary["validation_loss"] == host.summary["validation_loss"]
    for (name, a), (_, b) in zip(
        host._neural_net.state_dict().items(),
        device._neural_net.state_dict().items(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, msg=name)
