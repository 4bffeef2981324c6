"""The trainer options of scvi-tools 1.5's ``train(**trainer_kwargs)``, validated once.

scvi-tools forwards ``**trainer_kwargs`` (and ``trainer_config``) to its Lightning
``Trainer``. :class:`TrainerOptions` takes the same names and defaults: those that change
training here (validation frequency, early stopping, progress bar, callbacks, learning-rate
monitor, gradient clipping, ``max_steps``) act; those about Lightning's own machinery that
have no effect on the result here (``log_every_n_steps``, ``benchmark``, ...) are accepted
and ignored; those we do not offer (checkpoint files, Lightning loggers, multi-device
strategies, other precisions) are refused with an error that says so; and any other name is
a ``TypeError`` listing the accepted ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

from sbi_vi._checks import check_positive_float, check_positive_int, check_unknown_kwargs
from sbi_vi.singlecell.callbacks import EarlyStopping, LearningRateRecorder, adapt_callbacks
from sbi_vi.singlecell.split import DataSplit, split_cells
from sbi_vi.singlecell.training import TrainingPlan

__all__ = ["TrainerOptions", "TrainingRun", "merge_kwargs", "resolve_training"]

# Lightning Trainer arguments accepted without effect here (sbi_vi has no Lightning trainer;
# none of them changes the trained weights).
_IGNORED = frozenset(
    {
        "log_every_n_steps",
        "progress_bar_refresh_rate",
        "simple_progress_bar",
        "benchmark",
        "enable_model_summary",
        "num_sanity_val_steps",
        "default_root_dir",
        "log_save_dir",
        "deterministic",
        "detect_anomaly",
        "profiler",
        "num_nodes",
        "use_distributed_sampler",
        "reload_dataloaders_every_n_epochs",
        "inference_mode",
        "barebones",
        "limit_val_batches",
        "val_check_interval",
    }
)


def merge_kwargs(config: Any, overrides: Any, *, name: str) -> dict[str, Any]:
    """``config`` (a mapping or an object with ``to_kwargs()``) updated by ``overrides``.

    Raises:
        TypeError: Neither a mapping nor a config with ``to_kwargs()``.
    """
    merged: dict[str, Any] = {}
    for arg, value in ((f"{name}_config", config), (f"{name}_kwargs", overrides)):
        if value is None:
            continue
        if isinstance(value, Mapping):
            merged.update(value)
            continue
        to_kwargs = getattr(value, "to_kwargs", None)
        if not callable(to_kwargs):
            raise TypeError(
                f"`{arg}` must be a mapping or a config with `to_kwargs()`, got "
                f"{type(value).__name__}."
            )
        out = to_kwargs()
        if not isinstance(out, Mapping):
            raise TypeError(f"`{arg}.to_kwargs()` must return a dict, got {type(out).__name__}.")
        merged.update(out)
    return merged


@dataclass(frozen=True)
class TrainerOptions:
    """What ``train(**trainer_kwargs)`` controls (scvi-tools' ``Trainer`` names, defaults).

    Attributes:
        check_val_every_n_epoch: Compute validation metrics every this many epochs
            (``None``: never, unless early stopping, a plateau scheduler or the learning-rate
            monitor needs them — then every epoch — as scvi-tools does).
        early_stopping: Stop on ``early_stopping_monitor`` (best weights restored).
        early_stopping_monitor: A validation key of ``history``.
        early_stopping_min_delta: Smallest change that counts as an improvement.
        early_stopping_patience: Validation checks without improvement before stopping.
        early_stopping_warmup_epochs: Epochs before early stopping starts to watch.
        early_stopping_mode: ``"min"`` or ``"max"``.
        enable_progress_bar: Show the progress bar.
        learning_rate_monitor: Record ``lr-<optimizer>`` in ``history``.
        callbacks: Callbacks (see :mod:`sbi_vi.singlecell.callbacks`).
        gradient_clip_val: Clip the gradient norm to this (``None`` or 0: no clipping).
        max_steps: Stop after this many steps (``-1``: no limit).
        logger: ``None``/``False``/``True`` only (``history`` is the log).
        enable_checkpointing: ``False`` only (no checkpoint files).
    """

    check_val_every_n_epoch: int | None = None
    early_stopping: bool = False
    early_stopping_monitor: str = "elbo_validation"
    early_stopping_min_delta: float = 0.0
    early_stopping_patience: int = 45
    early_stopping_warmup_epochs: int = 0
    early_stopping_mode: Literal["min", "max"] = "min"
    enable_progress_bar: bool = True
    learning_rate_monitor: bool = False
    callbacks: tuple[Any, ...] = ()
    gradient_clip_val: float | None = None
    max_steps: int = -1
    logger: Any = None
    enable_checkpointing: bool = False

    @classmethod
    def from_kwargs(cls, trainer_config: Any, trainer_kwargs: Mapping[str, Any]) -> TrainerOptions:
        """Validate ``trainer_config`` updated by ``trainer_kwargs``.

        Raises:
            TypeError: An unknown name (the accepted ones are listed).
            ValueError: A value out of range, or an option sbi_vi does not offer.
        """
        merged = merge_kwargs(trainer_config, trainer_kwargs, name="trainer")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known - _IGNORED - {"strategy", "precision"})
        if "accumulate_grad_batches" in merged and merged["accumulate_grad_batches"] in (1, None):
            unknown.remove("accumulate_grad_batches")
        if unknown:
            raise TypeError(
                f"train() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                f"accepted trainer options: {', '.join(sorted(known | _IGNORED))} "
                "(and `strategy`/`precision` at their defaults)."
            )
        strategy = merged.pop("strategy", None)
        if strategy not in (None, "auto", "single_device"):
            raise ValueError(
                f"`strategy={strategy!r}` is not offered: sbi_vi.singlecell trains on one device."
            )
        precision = merged.pop("precision", None)
        if precision not in (None, 32, "32", "32-true"):
            raise ValueError(
                f"`precision={precision!r}` is not offered: sbi_vi.singlecell trains in float32."
            )
        merged.pop("accumulate_grad_batches", None)
        if "callbacks" in merged:
            callbacks = merged["callbacks"] or ()
            merged["callbacks"] = (
                tuple(callbacks) if isinstance(callbacks, list | tuple) else (callbacks,)
            )
        options = cls(**{k: v for k, v in merged.items() if k in known})
        options._validate()
        return options

    def _validate(self) -> None:
        if self.check_val_every_n_epoch is not None:
            check_positive_int("check_val_every_n_epoch", self.check_val_every_n_epoch)
        check_positive_int("early_stopping_patience", self.early_stopping_patience)
        check_positive_int(
            "early_stopping_warmup_epochs", self.early_stopping_warmup_epochs, allow_zero=True
        )
        check_positive_float(
            "early_stopping_min_delta", self.early_stopping_min_delta, allow_zero=True
        )
        if self.early_stopping_mode not in ("min", "max"):
            raise ValueError(
                f"`early_stopping_mode` must be 'min' or 'max', got {self.early_stopping_mode!r}."
            )
        if self.gradient_clip_val is not None:
            check_positive_float("gradient_clip_val", self.gradient_clip_val, allow_zero=True)
        if not isinstance(self.max_steps, int) or self.max_steps < -1 or self.max_steps == 0:
            raise ValueError(
                f"`max_steps` must be -1 or a positive integer, got {self.max_steps!r}."
            )
        if self.logger not in (None, False, True):
            raise ValueError(
                f"`logger={type(self.logger).__name__}(...)` is not offered: sbi_vi keeps the "
                "per-epoch metrics in `model.history`; pass `logger=None`."
            )
        if self.enable_checkpointing:
            raise ValueError(
                "`enable_checkpointing=True` is not offered (no checkpoint files); use "
                "`early_stopping=True` to keep the best weights and `model.save(dir_path)`."
            )


@dataclass(frozen=True)
class TrainingRun:
    """Everything ``train()`` resolved from its arguments before the first step."""

    max_epochs: int
    batch_size: int
    split: DataSplit
    plan: TrainingPlan
    options: TrainerOptions
    callbacks: list[Any]
    validate_every: int | None
    drop_last: bool
    seed: int


def resolve_training(
    n_cells: int,
    *,
    max_epochs: int | None,
    train_size: float | None,
    validation_size: float | None,
    shuffle_set_split: bool,
    batch_size: int,
    early_stopping: bool,
    datasplitter_kwargs: Mapping[str, Any] | None,
    plan: TrainingPlan,
    options: TrainerOptions,
    seed: int | None,
    batch_norm: bool,
) -> TrainingRun:
    """Resolve ``train()``'s arguments: epochs, seed, split, callbacks, validation.

    Raises:
        TypeError: Unknown ``datasplitter_kwargs``.
        ValueError: Sizes out of range, a last training minibatch of one cell under batch
            normalisation without ``drop_last``, or a watched validation metric without
            validation cells.
    """
    split_kwargs = dict(datasplitter_kwargs or {})
    check_unknown_kwargs("`datasplitter_kwargs`", split_kwargs, ("drop_last", "external_indexing"))
    drop_last = bool(split_kwargs.get("drop_last", False))
    batch_size = check_positive_int("batch_size", batch_size)
    if max_epochs is None:  # scvi-tools' heuristic
        max_epochs = int(min(round((20000 / n_cells) * 400), 400))
    max_epochs = check_positive_int("max_epochs", max_epochs)
    if seed is None:
        seed = int(torch.randint(2**31 - 1, (1,)).item())  # honours torch.manual_seed
    seed = check_positive_int("seed", seed, allow_zero=True)
    split = split_cells(
        n_cells,
        train_size=train_size,
        validation_size=validation_size,
        shuffle_set_split=shuffle_set_split,
        batch_size=batch_size,
        drop_last=drop_last,
        external_indexing=split_kwargs.get("external_indexing"),
        seed=seed,
    )
    if batch_norm and batch_size == 1:
        raise ValueError(
            "`batch_size=1` gives minibatches of one cell, which batch normalisation cannot "
            "train on; use a larger `batch_size` (scvi-tools' default is 128)."
        )
    if batch_norm and len(split.train) % batch_size == 1 and not drop_last:
        raise ValueError(
            f"The last training minibatch would hold 1 cell ({len(split.train)} training "
            f"cells, `batch_size={batch_size}`), which batch normalisation cannot train on; "
            "pass `datasplitter_kwargs={'drop_last': True}` or change `batch_size` or "
            "`train_size`."
        )
    callbacks = adapt_callbacks(options.callbacks)
    if options.learning_rate_monitor:
        callbacks.append(LearningRateRecorder())
    if options.early_stopping or early_stopping:
        callbacks.append(
            EarlyStopping(
                monitor=options.early_stopping_monitor,
                patience=options.early_stopping_patience,
                min_delta=options.early_stopping_min_delta,
                mode=options.early_stopping_mode,
                warmup_epochs=options.early_stopping_warmup_epochs,
            )
        )
    validate_every = options.check_val_every_n_epoch
    if validate_every is None and _watches_validation(plan, callbacks):
        if len(split.validation) == 0:
            raise ValueError(
                "Early stopping or the plateau scheduler watches a validation metric, but the "
                "split leaves no validation cells; use `train_size` < 1."
            )
        validate_every = 1  # as scvi-tools: every epoch when something watches it
    return TrainingRun(
        max_epochs=max_epochs,
        batch_size=batch_size,
        split=split,
        plan=plan,
        options=options,
        callbacks=callbacks,
        validate_every=validate_every,
        drop_last=drop_last,
        seed=seed,
    )


def _watches_validation(plan: TrainingPlan, callbacks: list[Any]) -> bool:
    watched = [cb.monitor for cb in callbacks if isinstance(cb, EarlyStopping)]
    if plan.reduce_lr_on_plateau:
        watched.append(plan.lr_scheduler_metric)
    return any(key.endswith("_validation") or key == "validation_loss" for key in watched)
