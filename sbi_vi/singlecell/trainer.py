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

from sbi_vi._checks import check_positive_float, check_positive_int

__all__ = ["TrainerOptions", "merge_kwargs"]

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

    @property
    def validation_needed(self) -> bool:
        """Whether validation metrics are needed every epoch when no frequency is given."""
        return self.early_stopping or self.learning_rate_monitor
