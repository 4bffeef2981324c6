r"""The one training loop of the neural estimators: Adam, early stopping, best weights.

Semantics follow ``sbi`` 0.27: a random split into training and validation data, epochs of
shuffled minibatches of ``training_batch_size`` (the last incomplete batch is dropped),
gradient-norm clipping, and early stopping once the validation loss has not improved for
``stop_after_epochs`` consecutive epochs, after which the weights of the best epoch are
restored. ``max_num_epochs`` caps the total number of epochs (counted across resumed calls).

What makes it fast is what it leaves out: the data stay two tensors, each epoch gathers
them once in a random order and slices views out of them (no ``DataLoader``, no per-sample
collation), the loss is accumulated on the tensor side (no ``.item()`` per step), Adam is
fused where torch offers it (the step itself is the engine's
:func:`~sbi_vi.vi.fit.gradient_step`: skipped when the loss or a gradient is not finite),
the best weights are copied into preallocated tensors, and
the validation loss is one no-grad pass (in large chunks).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbi_vi._checks import check_in_interval, check_positive_float, check_positive_int
from sbi_vi.vi.fit import gradient_step

__all__ = [
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
    """Adam, fused (one kernel for all parameters) where this torch build supports it."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


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
    train_idx, val_idx = state.train_indices, state.val_indices
    n_train = train_idx.shape[0]
    batch_size = min(config.training_batch_size, n_train)
    n_batches = n_train // batch_size
    theta_val, x_val = theta[val_idx], x[val_idx]
    clip = config.clip_max_norm
    bounded = config.max_num_epochs < MAX_EPOCHS
    bar = tqdm(
        total=config.max_num_epochs if bounded else None,
        initial=state.epoch,
        desc=description,
        unit="epoch",
        disable=not config.show_progress_bar,
        leave=False,
    )
    try:
        while state.epoch < config.max_num_epochs:
            if state.epochs_since_improvement >= config.stop_after_epochs:
                break
            start = time.perf_counter()
            net.train()
            order = train_idx[torch.randperm(n_train, device=train_idx.device)]
            theta_epoch, x_epoch = theta[order], x[order]
            total = torch.zeros((), dtype=theta.dtype, device=theta.device)
            skipped = 0
            for b in range(0, n_batches * batch_size, batch_size):
                value = loss(net, theta_epoch[b : b + batch_size], x_epoch[b : b + batch_size])
                if gradient_step(value, state.optimizer, clip_value=clip):
                    total += value.detach()
                else:
                    skipped += 1
            if skipped == n_batches:
                raise RuntimeError(
                    "Every gradient step of the epoch had a non-finite gradient: the loss is "
                    "NaN or inf. Check the simulations for extreme values, or lower "
                    "`learning_rate`."
                )
            train_loss = float(total) / (n_batches - skipped)
            net.eval()
            with torch.no_grad():
                val_loss = float(loss.validation(net, theta_val, x_val, batch_size))
            if val_loss < state.best_val_loss or state.best_weights is None:
                state.best_weights = snapshot(net, state.best_weights)
                state.best_val_loss = val_loss
                state.epochs_since_improvement = 0
            else:
                state.epochs_since_improvement += 1
            state.epoch += 1
            if skipped:
                logger.warning("Skipped %d steps with a non-finite gradient.", skipped)
            if on_epoch is not None:
                on_epoch(train_loss, val_loss, time.perf_counter() - start)
            bar.update(1)
            bar.set_postfix(val_loss=f"{val_loss:.4f}", best=f"{state.best_val_loss:.4f}")
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
