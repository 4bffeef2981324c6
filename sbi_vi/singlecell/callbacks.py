"""Callbacks of ``train()``: a small protocol of our own, and the Lightning ones users pass.

A callback is any object with some of these methods (all optional):

- ``on_train_start(module, optimizer)``: before the first step;
- ``on_epoch_end(epoch, history)``: after each epoch's metrics are in ``history`` (a dict of
  lists, one entry per epoch so far); return ``True`` to stop training after this epoch;
  the callback may add its own keys to ``history`` (one value per epoch);
- ``on_train_end(module)``: after the last step (also after an interruption).

scvi-tools users pass Lightning callbacks (``callbacks=[LearningRateMonitor()]``); we have
no Lightning trainer, so :func:`adapt_callbacks` maps the common ones onto this protocol —
``LearningRateMonitor`` records ``lr-<optimizer>`` in ``history`` as scvi-tools' logger
does, ``EarlyStopping`` (Lightning's or scvi-tools' ``LoudEarlyStopping``) becomes
:class:`EarlyStopping` — and refuses any other Lightning callback with an error naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from sbi_vi.vi.validation import ValidationStopping

__all__ = [
    "Callback",
    "EarlyStopping",
    "LearningRateRecorder",
    "adapt_callbacks",
]


class Callback:
    """Base class with no-op hooks (subclassing it is optional: duck typing suffices)."""

    def on_train_start(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called before the first training step."""

    def on_epoch_end(self, epoch: int, history: dict[str, list[float]]) -> bool | None:
        """Called after each epoch; return ``True`` to stop training."""
        return None

    def on_train_end(self, module: nn.Module) -> None:
        """Called after the last step, also when training is interrupted."""


@dataclass
class LearningRateRecorder(Callback):
    """Records each epoch's learning rate as ``history["lr-<optimizer class>"]``
    (``"lr-Adam"`` by default), the key of Lightning's ``LearningRateMonitor``."""

    key: str = "lr-Adam"

    def on_train_start(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.key = f"lr-{type(optimizer).__name__}"

    def on_epoch_end(self, epoch: int, history: dict[str, list[float]]) -> bool | None:
        history.setdefault(self.key, []).append(history["lr"][-1])
        return None


@dataclass
class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` checks.

    The engine's :class:`~sbi_vi.vi.validation.ValidationStopping` does the bookkeeping and
    keeps the best weights, which are restored when training ends (scvi-tools stops without
    restoring them; the best epoch's weights are the ones its validation metric chose).

    Args:
        monitor: A key of ``history`` (e.g. ``"elbo_validation"``).
        patience: Checks in a row without improvement before stopping.
        min_delta: Smallest change that counts as an improvement.
        mode: ``"min"`` (lower is better) or ``"max"``.
        warmup_epochs: Epochs before the first check.
    """

    monitor: str = "elbo_validation"
    patience: int = 45
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"
    warmup_epochs: int = 0
    stopped_epoch: int | None = None
    _rule: ValidationStopping | None = field(default=None, repr=False)
    _latest: float = field(default=math.inf, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"`early_stopping_mode` must be 'min' or 'max', got {self.mode!r}.")
        if not (isinstance(self.min_delta, int | float) and self.min_delta >= 0):
            raise ValueError(
                "`early_stopping_min_delta` must be a non-negative number, got "
                f"{self.min_delta!r}."
            )

    def on_train_start(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._rule = ValidationStopping(
            lambda: self._latest,
            module,
            stop_after_iters=self.patience,
            min_delta=float(self.min_delta),
        )
        self.stopped_epoch = None

    def on_epoch_end(self, epoch: int, history: dict[str, list[float]]) -> bool | None:
        if self.monitor not in history:
            return None  # not a validation epoch
        if not computed_this_epoch(history, self.monitor) or epoch < self.warmup_epochs:
            return None
        value = float(history[self.monitor][-1])
        self._latest = value if self.mode == "min" else -value
        assert self._rule is not None  # set by on_train_start
        stop = self._rule.update(epoch, self._latest)
        if stop:
            self.stopped_epoch = epoch
        return stop

    def on_train_end(self, module: nn.Module) -> None:
        if self._rule is not None:
            self._rule.restore_best()


def computed_this_epoch(history: dict[str, list[float]], key: str) -> bool:
    """Whether ``history[key]`` got a value at the latest epoch.

    Training metrics are recorded every epoch; validation metrics at the epochs listed in
    ``history["validation_epoch"]``.
    """
    values, epochs = history.get(key, []), history.get("epoch", [])
    if not values or not epochs:
        return False
    if len(values) == len(epochs):
        return True
    stamps = history.get("validation_epoch", [])
    return len(values) == len(stamps) and stamps[-1] == epochs[-1]


def _is_lightning(callback: Any) -> bool:
    return any(
        cls.__module__.split(".")[0] in ("lightning", "pytorch_lightning", "scvi")
        for cls in type(callback).__mro__
    )


def _class_names(callback: Any) -> set[str]:
    return {cls.__name__ for cls in type(callback).__mro__}


def adapt_callbacks(callbacks: Iterable[Any] | None) -> list[Any]:
    """Our callbacks for ``callbacks`` (ours pass through, Lightning ones are translated).

    Raises:
        TypeError: An object that is no callback (no hook method).
        ValueError: A Lightning callback that has no equivalent here (named).
    """
    if callbacks is None:
        return []
    if not isinstance(callbacks, list | tuple):
        callbacks = [callbacks]
    out: list[Any] = []
    hooks = ("on_train_start", "on_epoch_end", "on_train_end")
    for cb in callbacks:
        names = _class_names(cb)
        if _is_lightning(cb):
            if "LearningRateMonitor" in names:
                out.append(LearningRateRecorder())
            elif "EarlyStopping" in names:
                mode = getattr(cb, "mode", "min")
                out.append(
                    EarlyStopping(
                        monitor=str(getattr(cb, "monitor", "elbo_validation")),
                        patience=int(getattr(cb, "patience", 3)),
                        min_delta=abs(float(getattr(cb, "min_delta", 0.0))),
                        mode=mode if mode in ("min", "max") else "min",
                        warmup_epochs=int(getattr(cb, "warmup_epochs", 0)),
                    )
                )
            elif names & {"ModelCheckpoint", "SaveCheckpoint"}:
                raise ValueError(
                    f"`callbacks`: {type(cb).__name__} is not offered (sbi_vi has no checkpoint "
                    "files); keep the best weights with `early_stopping=True` and write the "
                    "model with `model.save(dir_path)`."
                )
            else:
                raise ValueError(
                    f"`callbacks`: the Lightning callback {type(cb).__name__} cannot run here "
                    "(sbi_vi trains without a Lightning trainer). Supported: "
                    "LearningRateMonitor, EarlyStopping, or any object with "
                    "`on_epoch_end(epoch, history)` (sbi_vi.singlecell.callbacks.Callback)."
                )
        elif any(callable(getattr(cb, h, None)) for h in hooks):
            out.append(cb)
        else:
            raise TypeError(
                f"`callbacks` entries must have a method among {', '.join(hooks)}; got "
                f"{type(cb).__name__}."
            )
    return out


def call_hook(callbacks: Iterable[Any], hook: str, *args: Any) -> bool:
    """Call ``hook`` on every callback that has it; ``True`` if one asked to stop."""
    stop = False
    for cb in callbacks:
        method = getattr(cb, hook, None)
        if callable(method):
            stop = bool(method(*args)) or stop
    return stop
