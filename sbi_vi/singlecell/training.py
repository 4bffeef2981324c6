"""Training the single-cell module through the engine's fit loop.

One optimisation step is one minibatch; an epoch is one pass over the training cells.
:func:`train_module` hands the engine's :func:`~sbi_vi.vi.fit.fit` a closure that draws the
next minibatch and evaluates the module's divergence with the KL warm-up weight of the
current epoch (or step), and an :class:`EpochMonitor` stopping rule that, at the end of every
epoch, records the epoch's training metrics and the validation metrics in the history,
steps a reduce-on-plateau scheduler and calls the callbacks
(:mod:`~sbi_vi.singlecell.callbacks`), one of which may be early stopping (through the
engine's :class:`~sbi_vi.vi.validation.ValidationStopping`, best weights restored).
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
from sbi_vi.singlecell.callbacks import call_hook
from sbi_vi.singlecell.loader import CellBatch, CellData
from sbi_vi.singlecell.module import VAE, LossOutput
from sbi_vi.vi.divergences import Divergence
from sbi_vi.vi.fit import StoppingRule, fit
from sbi_vi.vi.optim import build_optimizer
from sbi_vi.vi.validation import common_random_numbers

__all__ = ["EpochMonitor", "TrainingPlan", "kl_weight", "steps_per_epoch", "train_module"]

_VALIDATION_SEED = 20_241


@dataclass(frozen=True)
class TrainingPlan:
    """The ``plan_kwargs`` of ``train`` (scvi-tools' training-plan keys and defaults).

    Attributes:
        lr: Learning rate of the optimizer.
        weight_decay: Weight decay.
        eps: The optimizer's ``eps``.
        optimizer: ``"Adam"``, ``"AdamW"``, ``"Custom"`` (with ``optimizer_creator``) or a
            ``torch.optim.Optimizer`` class.
        optimizer_creator: With ``optimizer="Custom"``: a callable from the parameters to
            an optimizer.
        update_only_decoder: Train the decoder only (the encoder stays as it is).
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
        compile: ``False`` only (``torch.compile`` of the module is not offered).
        compile_kwargs: Accepted with ``compile=False``.
        on_step: ``False`` only (``history`` is per epoch; per-step logging is refused).
        on_epoch: ``True`` only.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-6
    eps: float = 0.01
    optimizer: Any = "Adam"
    optimizer_creator: Any = None
    update_only_decoder: bool = False
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
    compile: bool = False
    compile_kwargs: dict[str, Any] | None = None
    on_step: bool | None = False
    on_epoch: bool | None = True

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
        check_positive_float("lr", plan.lr, allow_zero=True)  # 0: a frozen fit, as scvi-tools
        check_positive_float("weight_decay", plan.weight_decay, allow_zero=True)
        check_positive_int("n_particles", plan.n_particles)
        if not 0 <= plan.min_kl_weight <= plan.max_kl_weight:
            raise ValueError(
                "`plan_kwargs` need 0 <= min_kl_weight <= max_kl_weight, got "
                f"{plan.min_kl_weight} and {plan.max_kl_weight}."
            )
        if plan.on_step or plan.on_epoch is False:
            raise ValueError(
                "`plan_kwargs['on_step']=True` / `['on_epoch']=False` (per-step logging) is not "
                "offered: `history` holds one value per epoch."
            )
        if plan.compile:
            raise ValueError(
                "`plan_kwargs['compile']=True` is not offered: sbi_vi.singlecell does not "
                "torch.compile the module; leave it False."
            )
        if plan.optimizer == "Custom" and not callable(plan.optimizer_creator):
            raise ValueError(
                "`plan_kwargs['optimizer']='Custom'` needs a callable `optimizer_creator` "
                f"(parameters -> optimizer), got {plan.optimizer_creator!r}."
            )
        return plan

    def make_optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        if self.optimizer == "Custom":
            return self.optimizer_creator(params)
        choices = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
        if isinstance(self.optimizer, str):
            if self.optimizer not in choices:
                raise ValueError(
                    f"`plan_kwargs['optimizer']` must be 'Adam', 'AdamW', 'Custom' or an "
                    f"optimizer class, got {self.optimizer!r}."
                )
            cls = choices[self.optimizer]
        else:
            cls = self.optimizer
        return build_optimizer(
            params, cls, lr=self.lr, weight_decay=self.weight_decay, eps=self.eps
        )


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


class _Running:
    """Sums of per-cell metrics over an epoch, kept on the module's device.

    Adding a minibatch's metrics launches additions only; the host reads the sums once per
    epoch (:meth:`means`), so a GPU run does not wait for every minibatch.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n, self.steps = 0, 0
        self._sums: Tensor | None = None

    def add(self, out: LossOutput, n_cells: int) -> None:
        self.n += n_cells
        self.steps += 1
        parts = torch.stack(
            (
                out.elbo.detach().sum(),
                out.reconstruction_loss.detach().sum(),
                out.kl_local.detach().sum(),
                out.loss.detach().reshape(()),
            )
        ).double()
        self._sums = parts if self._sums is None else self._sums + parts

    def means(self) -> dict[str, float]:
        """Per-cell means of ELBO, reconstruction and KL; the loss per step."""
        if self._sums is None:
            return {"elbo": 0.0, "reconstruction_loss": 0.0, "kl_local": 0.0, "loss": 0.0}
        elbo, rec, kl, loss = self._sums.tolist()
        n = max(self.n, 1)
        return {
            "elbo": elbo / n,
            "reconstruction_loss": rec / n,
            "kl_local": kl / n,
            "loss": loss / max(self.steps, 1),
        }


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
    return running.means()


@dataclass
class EpochMonitor(StoppingRule):
    """End-of-epoch bookkeeping as a stopping rule of :func:`~sbi_vi.vi.fit.fit`.

    Every ``steps_per_epoch`` iterations it appends the epoch's metrics to ``history``
    (training averages from ``running``; validation ones from ``validate`` every
    ``validate_every`` epochs, their epochs listed under ``"validation_epoch"``), steps the
    plateau scheduler, and calls the callbacks' ``on_epoch_end``; training stops when one
    of them asks to, or after ``max_steps`` steps.
    """

    steps_per_epoch: int
    running: _Running
    validate: Any  # Callable[[], dict[str, float]] | None
    history: dict[str, list[float]]
    optimizer: torch.optim.Optimizer
    plateau: Any = None
    plateau_metric: str = "elbo_validation"
    validate_every: int | None = 1
    callbacks: list[Any] = field(default_factory=list)
    epoch_offset: int = 0
    max_steps: int = -1
    kl_weights: list[float] = field(default_factory=list)
    _epoch: int = 0

    @property
    def loss_window(self) -> int | None:
        return None  # the epoch's metrics come from ``running``, read once per epoch

    def reset(self) -> None:
        self._epoch = 0

    def update(self, iteration: int, value: float) -> bool:
        hit_max_steps = 0 < self.max_steps <= iteration + 1
        if (iteration + 1) % self.steps_per_epoch:
            return hit_max_steps  # inside an epoch (a partial epoch records no metrics)
        means = self.running.means()
        epoch = self.epoch_offset + self._epoch
        record = {
            "elbo_train": -means["elbo"],
            "reconstruction_loss_train": means["reconstruction_loss"],
            "kl_local_train": means["kl_local"],
            "train_loss": means["loss"],
            "kl_global_train": 0.0,
            "kl_weight": self.kl_weights[-1] if self.kl_weights else 1.0,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        if (
            self.validate is not None
            and self.validate_every is not None
            and (self._epoch + 1) % self.validate_every == 0
        ):
            val = self.validate()
            record.update(
                elbo_validation=-val["elbo"],
                reconstruction_loss_validation=val["reconstruction_loss"],
                kl_local_validation=val["kl_local"],
                kl_global_validation=0.0,
                validation_loss=val["loss"],
            )
            self.history.setdefault("validation_epoch", []).append(float(epoch))
        self.history.setdefault("epoch", []).append(float(epoch))
        for key, v in record.items():
            self.history.setdefault(key, []).append(v)
        self.running.reset()
        if self.plateau is not None and self.plateau_metric in record:
            self.plateau.step(record[self.plateau_metric])
        stop = call_hook(self.callbacks, "on_epoch_end", self._epoch, self.history)
        self._epoch += 1
        return stop or hit_max_steps


def _epochs(
    data: CellData,
    idx: np.ndarray,
    batch_size: int,
    generator: torch.Generator,
    drop_last: bool,
) -> Iterator[CellBatch]:
    n_full = (len(idx) // batch_size) * batch_size
    while True:
        order = idx[torch.randperm(len(idx), generator=generator).numpy()]
        yield from data.minibatches(order[:n_full] if drop_last else order, batch_size)


def steps_per_epoch(n_train: int, batch_size: int, *, drop_last: bool) -> int:
    """Minibatches per epoch over ``n_train`` cells."""
    return n_train // batch_size if drop_last else math.ceil(n_train / batch_size)


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
    validate_every: int | None = 1,
    callbacks: list[Any] | None = None,
    history: dict[str, list[float]] | None = None,
    show_progress_bar: bool = True,
    seed: int | None = None,
    drop_last: bool = False,
    clip_value: float | None = None,
    max_steps: int = -1,
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
        validate_every: Validation metrics every this many epochs (``None``: never).
        callbacks: Objects with ``on_train_start`` / ``on_epoch_end`` / ``on_train_end``
            hooks (:mod:`sbi_vi.singlecell.callbacks`; early stopping is one).
        history: Earlier history to extend (resumed training).
        show_progress_bar: Show the engine's progress bar.
        seed: Seed of the minibatch order (``None``: from torch's global generator).
        drop_last: Drop the last incomplete minibatch of every epoch.
        clip_value: Clip the gradient norm to this (``None``: no clipping).
        max_steps: Stop after this many steps (``-1``: no limit).

    Returns:
        The history: a list per metric, one entry per epoch (validation metrics: one per
        entry of ``history["validation_epoch"]``).

    Raises:
        ValueError: A metric that needs validation cells without any, or no minibatch.
    """
    max_epochs = check_positive_int("max_epochs", max_epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    callbacks = list(callbacks or [])
    n_steps = steps_per_epoch(len(train_idx), batch_size, drop_last=drop_last)
    if n_steps == 0:
        raise ValueError(
            f"{len(train_idx)} training cells with `batch_size={batch_size}` and "
            "`drop_last=True` leave no minibatch; lower `batch_size`."
        )
    validate = None
    if val_idx is not None and len(val_idx):

        def validate() -> dict[str, float]:
            return evaluate_cells(
                module, data, val_idx, divergence, batch_size=max(batch_size, 256)
            )

    if plan.reduce_lr_on_plateau and plan.lr_scheduler_metric.endswith("_validation"):
        if validate is None or validate_every is None:
            raise ValueError(
                f"`lr_scheduler_metric={plan.lr_scheduler_metric!r}` needs validation cells and "
                "`check_val_every_n_epoch`; use `train_size` < 1."
            )
    params = [
        p
        for name, p in module.named_parameters()
        if p.requires_grad and not (plan.update_only_decoder and name.startswith("encoder."))
    ]
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
        steps_per_epoch=n_steps,
        running=running,
        validate=validate,
        history=history,
        optimizer=optimizer,
        plateau=plateau,
        plateau_metric=plan.lr_scheduler_metric,
        validate_every=validate_every,
        callbacks=callbacks,
        epoch_offset=len(history.get("epoch", [])),
        max_steps=max_steps,
    )
    batches = _epochs(data, train_idx, batch_size, generator, drop_last)
    state = {"step": 0}

    def closure() -> tuple[Tensor, Tensor]:
        cells = next(batches)
        step = state["step"]
        state["step"] = step + 1
        weight = kl_weight(plan, monitor.epoch_offset + step // n_steps, step)
        if not monitor.kl_weights or monitor.kl_weights[-1] != weight:
            monitor.kl_weights.append(weight)
        out = module.loss(cells, divergence, kl_weight=weight, n_particles=plan.n_particles)
        running.add(out, cells.x.shape[0])
        return out.loss, out.loss.detach()

    module.train()
    call_hook(callbacks, "on_train_start", module, optimizer)
    try:
        fit(
            closure,
            optimizer,
            max_num_iters=max_epochs * n_steps,
            clip_value=clip_value,
            stopping=monitor,
            show_progress_bar=show_progress_bar,
            description=f"Training ({max_epochs} epochs)",
        )
    finally:
        call_hook(callbacks, "on_train_end", module)
        module.eval()
    return history
