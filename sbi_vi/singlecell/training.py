"""Training the single-cell module through the engine's fit loop.

One optimisation step is one minibatch; an epoch is one pass over the training cells.
:func:`train_module` hands the engine's :func:`~sbi_vi.vi.fit.fit` a closure that draws the
next minibatch and evaluates the module's divergence with the KL warm-up weight of the
current epoch (or step), and an :class:`EpochMonitor` stopping rule that, at the end of every
epoch, records the epoch's training metrics and the validation metrics in the history,
steps a reduce-on-plateau scheduler, and stops early (through the engine's
:class:`~sbi_vi.vi.validation.ValidationStopping`, best weights restored) when asked to.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_vi._checks import check_positive_float, check_positive_int
from sbi_vi.singlecell.loader import CellBatch, CellData
from sbi_vi.singlecell.module import VAE, LossOutput
from sbi_vi.vi.divergences import Divergence
from sbi_vi.vi.fit import StoppingRule, fit
from sbi_vi.vi.validation import ValidationStopping, common_random_numbers

__all__ = ["EpochMonitor", "TrainingPlan", "kl_weight", "train_module"]

_VALIDATION_SEED = 20_241


@dataclass(frozen=True)
class TrainingPlan:
    """The ``plan_kwargs`` of ``train`` (scvi-tools' training-plan keys and defaults).

    Attributes:
        lr: Learning rate of the optimizer.
        weight_decay: Weight decay.
        eps: The optimizer's ``eps``.
        optimizer: ``"Adam"``, ``"AdamW"`` or a ``torch.optim.Optimizer`` class.
        n_epochs_kl_warmup: Epochs over which the KL weight rises from ``min_kl_weight``
            to ``max_kl_weight`` (used when ``n_steps_kl_warmup`` is ``None``).
        n_steps_kl_warmup: Steps of that rise (takes precedence).
        max_kl_weight: KL weight after the warm-up.
        min_kl_weight: KL weight at the start.
        reduce_lr_on_plateau: Multiply the learning rate by ``lr_factor`` when
            ``lr_scheduler_metric`` has not improved for ``lr_patience`` epochs.
        lr_factor: That factor.
        lr_patience: Those epochs.
        lr_threshold: Smallest change that counts as an improvement.
        lr_scheduler_metric: History key watched (``"elbo_validation"`` or
            ``"reconstruction_loss_validation"``, ...).
        lr_min: Lower bound of the learning rate.
        n_particles: Latent draws per cell and step (times ``K`` for IW).
    """

    lr: float = 1e-3
    weight_decay: float = 1e-6
    eps: float = 0.01
    optimizer: Any = "Adam"
    n_epochs_kl_warmup: int | None = 400
    n_steps_kl_warmup: int | None = None
    max_kl_weight: float = 1.0
    min_kl_weight: float = 0.0
    reduce_lr_on_plateau: bool = False
    lr_factor: float = 0.6
    lr_patience: int = 30
    lr_threshold: float = 0.0
    lr_scheduler_metric: str = "elbo_validation"
    lr_min: float = 0.0
    n_particles: int = 1

    @classmethod
    def from_kwargs(cls, plan_kwargs: dict[str, Any] | None) -> TrainingPlan:
        """Build the plan from ``plan_kwargs``; unknown keys are an error naming them."""
        plan_kwargs = dict(plan_kwargs or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(plan_kwargs) - known)
        if unknown:
            raise TypeError(
                f"Unknown `plan_kwargs` {unknown}; accepted: {', '.join(sorted(known))}."
            )
        plan = cls(**plan_kwargs)
        check_positive_float("lr", plan.lr)
        check_positive_float("weight_decay", plan.weight_decay, allow_zero=True)
        check_positive_int("n_particles", plan.n_particles)
        if not 0 <= plan.min_kl_weight <= plan.max_kl_weight:
            raise ValueError(
                "`plan_kwargs` need 0 <= min_kl_weight <= max_kl_weight, got "
                f"{plan.min_kl_weight} and {plan.max_kl_weight}."
            )
        return plan

    def make_optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        choices = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
        if isinstance(self.optimizer, str):
            if self.optimizer not in choices:
                raise ValueError(
                    f"`plan_kwargs['optimizer']` must be 'Adam', 'AdamW' or an optimizer "
                    f"class, got {self.optimizer!r}."
                )
            cls = choices[self.optimizer]
        else:
            cls = self.optimizer
        kwargs = {"lr": self.lr, "weight_decay": self.weight_decay, "eps": self.eps}
        if cls in (torch.optim.Adam, torch.optim.AdamW):
            kwargs["fused"] = True  # one kernel per step on CPU and GPU
        return cls(params, **kwargs)


def kl_weight(plan: TrainingPlan, epoch: int, step: int) -> float:
    """The KL warm-up weight at ``epoch`` / global ``step`` (scvi-tools' linear rule).

    Example:
        >>> kl_weight(TrainingPlan(n_epochs_kl_warmup=10), epoch=5, step=0)
        0.5
    """
    low, high = plan.min_kl_weight, plan.max_kl_weight
    if plan.n_steps_kl_warmup:
        return min(high, low + (high - low) * step / plan.n_steps_kl_warmup)
    if plan.n_epochs_kl_warmup:
        return min(high, low + (high - low) * epoch / plan.n_epochs_kl_warmup)
    return high


@dataclass
class _Running:
    """Sums of per-cell metrics over an epoch."""

    n: int = 0
    elbo: float = 0.0
    reconstruction: float = 0.0
    kl: float = 0.0
    loss: float = 0.0
    steps: int = 0

    def reset(self) -> None:
        self.n, self.steps = 0, 0
        self.elbo = self.reconstruction = self.kl = self.loss = 0.0

    def add(self, out: LossOutput, n_cells: int) -> None:
        self.n += n_cells
        self.elbo += float(out.elbo.sum())
        self.reconstruction += float(out.reconstruction_loss.sum())
        self.kl += float(out.kl_local.sum())
        self.loss += float(out.loss.detach())
        self.steps += 1


def evaluate_cells(
    module: VAE,
    data: CellData,
    idx: np.ndarray,
    divergence: Divergence,
    *,
    batch_size: int,
    n_particles: int = 1,
) -> dict[str, float]:
    """Mean ELBO, reconstruction loss, KL and divergence loss over the cells ``idx``.

    The module is put in eval mode; common random numbers make the result a deterministic
    function of the weights, so two epochs are compared on the same draws.
    """
    was_training = module.training
    module.eval()
    running = _Running()
    try:
        with torch.no_grad(), common_random_numbers(_VALIDATION_SEED):
            for cells in data.minibatches(idx, batch_size):
                out = module.loss(cells, divergence, n_particles=n_particles)
                running.add(out, cells.x.shape[0])
    finally:
        module.train(was_training)
    n = max(running.n, 1)
    return {
        "elbo": running.elbo / n,
        "reconstruction_loss": running.reconstruction / n,
        "kl_local": running.kl / n,
        "loss": running.loss / max(running.steps, 1),
    }


@dataclass
class EpochMonitor(StoppingRule):
    """End-of-epoch bookkeeping as a stopping rule of :func:`~sbi_vi.vi.fit.fit`.

    Every ``steps_per_epoch`` iterations it appends the epoch's metrics to ``history``
    (training averages from ``running``, validation ones from ``validate``), steps the
    plateau scheduler, and, with ``early_stopping``, asks the engine's
    :class:`ValidationStopping` whether the monitored metric stopped improving.
    """

    steps_per_epoch: int
    running: _Running
    validate: Any  # Callable[[], dict[str, float]] | None
    history: dict[str, list[float]]
    optimizer: torch.optim.Optimizer
    plateau: Any = None
    plateau_metric: str = "elbo_validation"
    early: ValidationStopping | None = None
    monitor: str = "elbo_validation"
    epoch_offset: int = 0
    kl_weights: list[float] = field(default_factory=list)
    latest: float = math.inf
    _epoch: int = 0

    def reset(self) -> None:
        self._epoch = 0
        if self.early is not None:
            self.early.reset()

    def update(self, iteration: int, value: float) -> bool:
        if (iteration + 1) % self.steps_per_epoch:
            return False
        r = self.running
        n = max(r.n, 1)
        record = {
            "elbo_train": -r.elbo / n,
            "reconstruction_loss_train": r.reconstruction / n,
            "kl_local_train": r.kl / n,
            "train_loss": r.loss / max(r.steps, 1),
            "kl_global_train": 0.0,
            "kl_weight": self.kl_weights[-1] if self.kl_weights else 1.0,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        if self.validate is not None:
            val = self.validate()
            record.update(
                elbo_validation=-val["elbo"],
                reconstruction_loss_validation=val["reconstruction_loss"],
                kl_local_validation=val["kl_local"],
                kl_global_validation=0.0,
                validation_loss=val["loss"],
            )
        self.history.setdefault("epoch", []).append(float(self.epoch_offset + self._epoch))
        for key, v in record.items():
            self.history.setdefault(key, []).append(v)
        self._epoch += 1
        self.running.reset()
        if self.plateau is not None:
            self.plateau.step(record[self.plateau_metric])
        if self.early is not None:
            self.latest = record[self.monitor]  # what ``early.validate`` reads
            return self.early.update(self._epoch - 1, self.latest)
        return False


def _epochs(
    data: CellData, idx: np.ndarray, batch_size: int, generator: torch.Generator
) -> Iterator[CellBatch]:
    while True:
        yield from data.minibatches(
            idx, batch_size, shuffle=True, generator=generator, drop_singletons=True
        )


def train_module(
    module: VAE,
    data: CellData,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    divergence: Divergence,
    *,
    max_epochs: int,
    batch_size: int,
    plan: TrainingPlan,
    early_stopping: bool = False,
    early_stopping_monitor: str = "elbo_validation",
    early_stopping_patience: int = 45,
    history: dict[str, list[float]] | None = None,
    show_progress_bar: bool = True,
    seed: int | None = None,
) -> dict[str, list[float]]:
    """Train ``module`` on the cells ``train_idx`` for up to ``max_epochs`` epochs.

    Args:
        module: The VAE.
        data: The cells' tensors.
        train_idx: Training cells.
        val_idx: Validation cells (``None``: no validation metrics).
        divergence: The engine divergence of the objective.
        max_epochs: Passes over the training cells.
        batch_size: Cells per step.
        plan: Optimizer, warm-up and scheduler settings.
        early_stopping: Stop when ``early_stopping_monitor`` has not improved for
            ``early_stopping_patience`` epochs, and restore the best epoch's weights.
        early_stopping_monitor: A validation key of the history.
        early_stopping_patience: Those epochs.
        history: Earlier history to extend (resumed training).
        show_progress_bar: Show the engine's progress bar.
        seed: Seed of the minibatch order (``None``: from torch's global generator).

    Returns:
        The history: a list per metric, one entry per epoch.
    """
    max_epochs = check_positive_int("max_epochs", max_epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    n_train = len(train_idx)
    steps_per_epoch = math.ceil(n_train / batch_size)
    if n_train > 1 and n_train % batch_size == 1:
        steps_per_epoch -= 1  # the one-cell minibatch is skipped (batch norm)
    validate = None
    if val_idx is not None and len(val_idx):

        def validate() -> dict[str, float]:
            return evaluate_cells(
                module, data, val_idx, divergence, batch_size=max(batch_size, 256)
            )

    needs_validation = [early_stopping_monitor] if early_stopping else []
    if plan.reduce_lr_on_plateau:
        needs_validation.append(plan.lr_scheduler_metric)
    for key in needs_validation:
        if key.endswith("_validation") and validate is None:
            raise ValueError(
                f"{key!r} needs validation cells; use `train_size` < 1 (got no validation set)."
            )
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = plan.make_optimizer(params)
    plateau = None
    if plan.reduce_lr_on_plateau:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=plan.lr_factor,
            patience=plan.lr_patience,
            threshold=plan.lr_threshold,
            threshold_mode="abs",
            min_lr=plan.lr_min,
        )
    generator = torch.Generator()
    generator.manual_seed(int(torch.randint(2**62, (1,)).item()) if seed is None else int(seed))
    history = {} if history is None else history
    running = _Running()
    monitor = EpochMonitor(
        steps_per_epoch=steps_per_epoch,
        running=running,
        validate=validate,
        history=history,
        optimizer=optimizer,
        plateau=plateau,
        plateau_metric=plan.lr_scheduler_metric,
        monitor=early_stopping_monitor,
        epoch_offset=len(history.get("epoch", [])),
    )
    early = None
    if early_stopping:
        early = ValidationStopping(
            lambda: monitor.latest, module, stop_after_iters=early_stopping_patience
        )
        monitor.early = early
    batches = _epochs(data, train_idx, batch_size, generator)
    state = {"step": 0}

    def closure() -> tuple[Tensor, Tensor]:
        cells = next(batches)
        step = state["step"]
        state["step"] = step + 1
        weight = kl_weight(plan, monitor.epoch_offset + step // steps_per_epoch, step)
        if not monitor.kl_weights or monitor.kl_weights[-1] != weight:
            monitor.kl_weights.append(weight)
        out = module.loss(cells, divergence, kl_weight=weight, n_particles=plan.n_particles)
        running.add(out, cells.x.shape[0])
        return out.loss, out.loss.detach()

    module.train()
    try:
        fit(
            closure,
            optimizer,
            max_num_iters=max_epochs * steps_per_epoch,
            clip_value=None,
            stopping=monitor,
            show_progress_bar=show_progress_bar,
            description=f"Training ({max_epochs} epochs)",
        )
    finally:
        if early is not None:
            early.restore_best()
        module.eval()
    return history
