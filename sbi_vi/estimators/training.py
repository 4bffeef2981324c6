r"""The one training loop of the neural estimators: Adam, early stopping, best weights.

Semantics follow ``sbi`` 0.27: a random split into training and validation data, epochs of
shuffled minibatches of ``training_batch_size`` (the last incomplete batch is dropped),
gradient-norm clipping, and early stopping once the validation loss has not improved for
``stop_after_epochs`` consecutive epochs, after which the weights of the best epoch are
restored. ``max_num_epochs`` caps the total number of epochs (counted across resumed calls).

The steps are the engine's one training loop, :func:`~sbi_vi.vi.fit.fit` (a step whose
loss or gradient is not finite is skipped; on an accelerator nothing of a step is read back
before the epoch ends), and the epochs are its stopping rule, :class:`EpochValidation`. What
makes it fast is what it leaves out: the data stay two tensors, each epoch gathers them
once in a random order and slices views out of them (no ``DataLoader``, no per-sample
collation), Adam is fused where torch offers it, the best weights are copied into
preallocated tensors, and the validation loss is one no-grad pass (in large chunks).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbi_vi._checks import check_in_interval, check_positive_float, check_positive_int
from sbi_vi.vi.fit import StoppingRule, fit
from sbi_vi.vi.optim import build_optimizer

__all__ = [
    "EpochValidation",
    "EstimatorLoss",
    "TrainConfig",
    "TrainState",
    "make_adam",
    "snapshot",
    "train_loop",
]

logger = logging.getLogger(__name__)

MAX_EPOCHS = 2**31 - 1


class EstimatorLoss(Protocol):
    """A loss of an estimator network on a batch of pairs.

    ``loss(net, theta [B, D], x [B, L])`` returns the mean loss (a scalar tensor);
    ``loss.validation(net, theta [N, D], x [N, L], batch_size)`` returns the mean
    validation loss as a float (called under ``torch.no_grad``).
    """

    def __call__(self, net: nn.Module, theta: Tensor, x: Tensor) -> Tensor: ...

    def validation(self, net: nn.Module, theta: Tensor, x: Tensor, batch_size: int) -> float: ...


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_loop` (the ``train`` arguments of ``sbi``).

    Raises:
        ValueError: On a non-positive size or rate, or ``validation_fraction`` outside (0, 1).
    """

    training_batch_size: int = 200
    learning_rate: float = 5e-4
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    max_num_epochs: int = MAX_EPOCHS
    clip_max_norm: float | None = 5.0
    show_progress_bar: bool = True

    def __post_init__(self) -> None:
        check_positive_int("training_batch_size", self.training_batch_size)
        check_positive_float("learning_rate", self.learning_rate)
        check_in_interval("validation_fraction", self.validation_fraction, 0.0, 1.0)
        check_positive_int("stop_after_epochs", self.stop_after_epochs)
        check_positive_int("max_num_epochs", self.max_num_epochs, allow_zero=True)
        if self.clip_max_norm is not None:
            check_positive_float("clip_max_norm", self.clip_max_norm)


@dataclass
class TrainState:
    """Everything ``resume_training=True`` continues from.

    Attributes:
        optimizer: The Adam optimizer over the network's parameters.
        train_indices: Rows of the data used for training, ``[N_train]``.
        val_indices: Rows used for validation, ``[N_val]``.
        num_simulations: Number of simulations the split was drawn from.
        epoch: Epochs trained so far (all calls together).
        best_val_loss: Best validation loss so far.
        best_weights: The network's state at the best epoch.
        epochs_since_improvement: Epochs since the validation loss last improved.
    """

    optimizer: torch.optim.Optimizer
    train_indices: Tensor
    val_indices: Tensor
    num_simulations: int
    epoch: int = 0
    best_val_loss: float = math.inf
    best_weights: dict[str, Tensor] | None = None
    epochs_since_improvement: int = 0


def make_adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, fused (one kernel for all parameters) where torch offers it
    (:func:`~sbi_vi.vi.optim.build_optimizer`)."""
    return build_optimizer(params, torch.optim.Adam, lr=lr)


def split_indices(
    n: int, validation_fraction: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """A random split of ``range(n)`` into training and validation rows (as ``sbi``).

    Raises:
        ValueError: If either part would be empty.
    """
    n_train = int((1 - validation_fraction) * n)
    if n_train < 1 or n - n_train < 1:
        raise ValueError(
            f"{n} simulations with `validation_fraction={validation_fraction}` leave "
            f"{n_train} for training and {n - n_train} for validation; both need at least "
            "one. Simulate more or change `validation_fraction`."
        )
    perm = torch.randperm(n, device=device)
    return perm[:n_train], perm[n_train:]


def snapshot(net: nn.Module, into: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """Copy the network's state into ``into`` (allocated on first use)."""
    with torch.no_grad():
        state = net.state_dict()
        if into is None or into.keys() != state.keys():
            return {k: v.detach().clone() for k, v in state.items()}
        for k, v in state.items():
            into[k].copy_(v)
    return into


def train_loop(
    net: nn.Module,
    loss: EstimatorLoss,
    theta: Tensor,
    x: Tensor,
    state: TrainState,
    config: TrainConfig,
    *,
    description: str = "Training",
    on_epoch: Callable[[float, float, float], None] | None = None,
) -> nn.Module:
    """Train ``net`` on the pairs ``(theta [N, D], x [N, L])`` until early stopping.

    The steps are :func:`~sbi_vi.vi.fit.fit`'s; the epochs, the validation, the best
    weights and the early stopping are its stopping rule (:class:`EpochValidation`).

    Args:
        net: The network; its parameters are those of ``state.optimizer``.
        loss: The loss (see :class:`EstimatorLoss`).
        theta: Parameters, ``[N, D]``, on the network's device.
        x: Simulations, ``[N, L]``, on the network's device.
        state: The optimizer, split and counters; updated in place.
        config: The settings.
        description: Label of the progress bar.
        on_epoch: Called as ``on_epoch(train_loss, val_loss, seconds)`` after each epoch.

    Returns:
        ``net`` with the weights of the best validation epoch.

    Raises:
        RuntimeError: If every gradient step of an epoch had a non-finite gradient.

    Whatever ends the loop (early stopping, ``max_num_epochs``, an exception or
    ``KeyboardInterrupt`` raised inside it), ``net`` leaves in eval mode with
    ``state.best_weights`` loaded (if any epoch ever finished), and ``state`` counts only
    the epochs that finished: an interrupted epoch leaves no trace but its cost.
    """
    n_train = state.train_indices.shape[0]
    batch_size = min(config.training_batch_size, n_train)
    n_batches = n_train // batch_size
    epochs_left = config.max_num_epochs - state.epoch
    bounded = config.max_num_epochs < MAX_EPOCHS
    bar = tqdm(
        total=config.max_num_epochs if bounded else None,
        initial=state.epoch,
        desc=description,
        unit="epoch",
        disable=not config.show_progress_bar,
        leave=False,
    )
    rule = EpochValidation(
        net,
        loss,
        theta[state.val_indices],
        x[state.val_indices],
        state,
        config,
        n_batches,
        batch_size,
        bar,
        on_epoch,
    )
    batches = _epochs(theta, x, state.train_indices, batch_size, n_batches)

    def closure() -> tuple[Tensor, Tensor]:
        theta_b, x_b = next(batches)
        value = loss(net, theta_b, x_b)
        return value, value.detach()

    try:
        if epochs_left > 0 and state.epochs_since_improvement < config.stop_after_epochs:
            net.train()
            fit(
                closure,
                state.optimizer,
                max_num_iters=epochs_left * n_batches,
                clip_value=config.clip_max_norm,
                stopping=rule,
                show_progress_bar=False,
            )
    finally:  # also when interrupted (an exception, Ctrl-C): the best weights, eval mode
        bar.close()
        if state.best_weights is not None:
            net.load_state_dict(state.best_weights)
        net.eval()
    if state.epochs_since_improvement >= config.stop_after_epochs:
        logger.info("Neural network converged after %d epochs.", state.epoch)
    else:
        logger.info(
            "Stopped at `max_num_epochs=%d` before convergence; consider increasing it.",
            config.max_num_epochs,
        )
    return net


def _epochs(
    theta: Tensor, x: Tensor, train_idx: Tensor, batch_size: int, n_batches: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Minibatches of epoch after epoch: each epoch gathers the training rows once in a
    random order (drawn when its first minibatch is asked for) and slices views of them;
    the last incomplete minibatch is dropped."""
    n_train = train_idx.shape[0]
    while True:
        order = train_idx[torch.randperm(n_train, device=train_idx.device)]
        theta_epoch, x_epoch = theta[order], x[order]
        for b in range(0, n_batches * batch_size, batch_size):
            yield theta_epoch[b : b + batch_size], x_epoch[b : b + batch_size]


class EpochValidation(StoppingRule):
    """The estimators' epochs as a stopping rule of :func:`~sbi_vi.vi.fit.fit`.

    After every ``n_batches`` steps it validates, keeps the best weights in
    ``state.best_weights``, counts the epoch in ``state`` and stops after
    ``config.stop_after_epochs`` epochs without a better validation loss (as ``sbi``).

    Raises:
        RuntimeError: At the end of an epoch all of whose steps were skipped as non-finite.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: EstimatorLoss,
        theta_val: Tensor,
        x_val: Tensor,
        state: TrainState,
        config: TrainConfig,
        n_batches: int,
        batch_size: int,
        bar: Any,
        on_epoch: Callable[[float, float, float], None] | None,
    ):
        self.net, self.loss, self.theta_val, self.x_val = net, loss, theta_val, x_val
        self.state, self.config, self.bar, self.on_epoch = state, config, bar, on_epoch
        self.n_batches, self.batch_size = n_batches, batch_size
        self.reset()

    @property
    def loss_window(self) -> int | None:
        return self.n_batches  # it reads the epoch's training losses at the epoch's end

    def reset(self) -> None:
        self._total, self._taken, self._start = 0.0, 0, time.perf_counter()

    def update(self, iteration: int, value: float) -> bool:
        if math.isfinite(value):
            self._total += value
            self._taken += 1
        if (iteration + 1) % self.n_batches:
            return False
        state, net = self.state, self.net
        if self._taken == 0:
            raise RuntimeError(
                "Every gradient step of the epoch had a non-finite gradient: the loss is "
                "NaN or inf. Check the simulations for extreme values, or lower "
                "`learning_rate`."
            )
        train_loss = self._total / self._taken
        skipped = self.n_batches - self._taken
        net.eval()
        with torch.no_grad():
            val_loss = float(
                self.loss.validation(net, self.theta_val, self.x_val, self.batch_size)
            )
        if val_loss < state.best_val_loss or state.best_weights is None:
            state.best_weights = snapshot(net, state.best_weights)
            state.best_val_loss = val_loss
            state.epochs_since_improvement = 0
        else:
            state.epochs_since_improvement += 1
        state.epoch += 1
        if skipped:
            logger.warning("Skipped %d steps with a non-finite gradient.", skipped)
        if self.on_epoch is not None:
            self.on_epoch(train_loss, val_loss, time.perf_counter() - self._start)
        self.bar.update(1)
        self.bar.set_postfix(val_loss=f"{val_loss:.4f}", best=f"{state.best_val_loss:.4f}")
        self.reset()
        net.train()
        return state.epochs_since_improvement >= self.config.stop_after_epochs
