"""The one training loop of sbi_vi, and its stopping rules.

``fit`` takes trainable tensors and a closure returning ``(surrogate, reported)``; it knows
nothing of posteriors, models or cells, so single-observation VI, amortised VI, SVI and the
single-cell VAE all train through it.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_vi._checks import check_positive_float, check_positive_int
from sbi_vi.vi.optim import build_optimizer
from sbi_vi.vi.steps import deferred_step, gradient_step, steps_on_device

__all__ = [
    "BatchedConvergenceCheck",
    "ConvergenceCheck",
    "FitResult",
    "NoStopping",
    "RowwiseClip",
    "StoppingRule",
    "fit",
    "gradient_step",
    "make_optimizer",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    """What a call of :func:`fit` did.

    Attributes:
        losses: Reported loss of every iteration, shape ``[num_iters]``.
        num_iters: Iterations run.
        converged: Whether the stopping rule ended training before ``max_num_iters``.
        num_skipped: Steps skipped because the loss or a gradient was not finite.
        seconds: Wall-clock seconds.
    """

    losses: Tensor
    num_iters: int
    converged: bool
    num_skipped: int
    seconds: float


class StoppingRule:
    """Decides after each iteration whether training has converged.

    :attr:`loss_window` says when the rule reads the losses, so that :func:`fit` on an
    accelerator can keep them there: ``1`` (the default) after every iteration; ``k``: the
    rule stops only after iterations ``i`` with ``(i + 1) % k == 0`` and may be handed the
    losses of the iterations before such an ``i`` all at once, in order, then; ``None``:
    it reads no losses (it is called after every iteration with ``reported=None`` and a
    NaN ``value``) and decides on the iteration count or on its own computations.
    """

    @property
    def loss_window(self) -> int | None:
        """Iterations whose losses the rule can wait for (``None``: it reads none)."""
        return 1

    def update(self, iteration: int, value: float) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the history (called at the start of every :func:`fit`)."""

    def update_from(self, iteration: int, reported: Tensor | None, value: float) -> bool:
        """What :func:`fit` calls after each iteration: ``update(iteration, value)``.

        A rule that watches each batch element (:class:`BatchedConvergenceCheck`) reads
        ``reported`` (the closure's reported tensor; ``None`` when the step was skipped)
        instead of its mean ``value``.
        """
        return self.update(iteration, value)


class NoStopping(StoppingRule):
    """Never stops early: train for ``max_num_iters``."""

    @property
    def loss_window(self) -> int | None:
        return None

    def update(self, iteration: int, value: float) -> bool:
        return False


@dataclass
class ConvergenceCheck(StoppingRule):
    """Stop once the smoothed loss has stopped improving: early stopping with patience.

    The losses are cut into blocks of ``window`` iterations and each block is summarised by
    its median, which averages out the particle noise of single losses and ignores their
    heavy tails (a few huge rKL losses from particles in the tails of the target). A block
    *improves* if its median lies more than ``eps`` below the best median so far. Training
    stops after ``patience`` blocks in a row without improvement, and never before
    ``min_num_iters``. A fit that keeps improving by more than ``eps`` per ``patience``
    blocks trains on; a flat or merely noisy loss stops after ``patience`` blocks.

    Args:
        eps: Smallest improvement of the block median (in loss units, e.g. nats of KL) that
            counts as progress.
        min_num_iters: No stop before this many iterations.
        window: Iterations per block.
        patience: Blocks in a row without improvement before stopping.

    Example:
        >>> rule = ConvergenceCheck(eps=0.01, window=10, patience=2)
        >>> rule.reset()
        >>> next(i for i in range(100) if rule.update(i, 1.0))  # flat from the start
        29
    """

    eps: float = 1e-3
    min_num_iters: int = 10
    window: int = 50
    patience: int = 2
    _block: list = field(default_factory=list, repr=False)
    _best: float = field(default=math.inf, repr=False)
    _stale: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        check_positive_float("eps", self.eps, allow_zero=True)
        check_positive_int("min_num_iters", self.min_num_iters, allow_zero=True)
        check_positive_int("window", self.window)
        check_positive_int("patience", self.patience)

    @property
    def loss_window(self) -> int | None:
        return self.window

    def reset(self) -> None:
        self._block, self._best, self._stale = [], math.inf, 0

    def update(self, iteration: int, value: float) -> bool:
        if math.isfinite(value):
            self._block.append(value)
        if (iteration + 1) % self.window:
            return False
        block, self._block = self._block, []
        median = statistics.median(block) if block else math.inf
        if median < self._best - self.eps:
            self._best, self._stale = median, 0
        else:
            self._stale += 1
        return self._stale >= self.patience and iteration + 1 >= self.min_num_iters


class BatchedConvergenceCheck(StoppingRule):
    """:class:`ConvergenceCheck` for each of ``B`` independent fits trained in one run.

    Each batch element b of the reported loss ``[B]`` has its own blocks, best median and
    patience, with the rule of :class:`ConvergenceCheck`; once b has converged,
    :attr:`active` ``[B]`` is ``False`` for it, and the trainer stops its updates (its loss
    no longer reaches its parameters). Training stops when every element has converged.

    Args:
        batch_size: The number ``B`` of fits.
        eps: As :class:`ConvergenceCheck`.
        min_num_iters: As :class:`ConvergenceCheck`.
        window: As :class:`ConvergenceCheck`.
        patience: As :class:`ConvergenceCheck`.

    Attributes:
        active: Which fits still train, ``[B]`` bool.
        converged_at: The iteration of this fit at which each element converged (``-1``:
            not converged), ``[B]``.

    Example:
        >>> rule = BatchedConvergenceCheck(2, eps=0.01, window=10, patience=2)
        >>> rule.reset()
        >>> losses = [torch.tensor([1.0, max(100.0 - i, 40.0)]) for i in range(200)]
        >>> next(i for i, loss in enumerate(losses) if rule.update_from(i, loss, 0.0))
        89
        >>> rule.converged_at.tolist()  # the flat loss converged first
        [29, 89]
    """

    def __init__(
        self,
        batch_size: int,
        *,
        eps: float = 1e-3,
        min_num_iters: int = 10,
        window: int = 50,
        patience: int = 2,
    ):
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.eps = check_positive_float("eps", eps, allow_zero=True)
        self.min_num_iters = check_positive_int("min_num_iters", min_num_iters, allow_zero=True)
        self.window = check_positive_int("window", window)
        self.patience = check_positive_int("patience", patience)
        self.reset()

    def reset(self) -> None:
        b = self.batch_size
        self._block: list[Tensor] = []
        self._best = torch.full((b,), math.inf, dtype=torch.float64)
        self._stale = torch.zeros(b, dtype=torch.long)
        self.active = torch.ones(b, dtype=torch.bool)
        self.converged_at = torch.full((b,), -1, dtype=torch.long)

    @property
    def loss_window(self) -> int | None:
        return self.window

    def update(self, iteration: int, value: float) -> bool:
        """Refused: this rule needs the loss of every batch element (``update_from``)."""
        raise TypeError("BatchedConvergenceCheck reads the reported loss [B]: use update_from.")

    def update_from(self, iteration: int, reported: Tensor | None, value: float) -> bool:
        if reported is None:
            values = torch.full((self.batch_size,), math.nan, dtype=torch.float64)
        else:
            values = reported.detach().reshape(-1).to("cpu", torch.float64)
            if values.numel() != self.batch_size:
                raise ValueError(
                    f"The reported loss must have {self.batch_size} entries (one per fit); "
                    f"got shape {tuple(reported.shape)}."
                )
        self._block.append(torch.where(torch.isfinite(values), values, math.nan))
        if (iteration + 1) % self.window:
            return False
        block, self._block = torch.stack(self._block), []
        median = block.nanmedian(0).values  # NaN where a fit had no finite loss
        improved = median < self._best - self.eps  # False for NaN
        self._best = torch.where(improved, median, self._best)
        self._stale = torch.where(improved, 0, self._stale + 1)
        if iteration + 1 >= self.min_num_iters:
            newly = self.active & (self._stale >= self.patience)
            self.converged_at[newly] = iteration
            self.active &= ~newly
        return not bool(self.active.any())


@dataclass(frozen=True)
class RowwiseClip:
    """Gradient clipping for B independent fits whose parameters all have leading dim B.

    Row b of every gradient (the gradient of fit b) is scaled so that their joint norm is
    at most ``clip_value``, as :func:`torch.nn.utils.clip_grad_norm_` does for one fit; a
    fit whose gradient is not finite gets a zero gradient for this step instead of
    stopping the others. Pass it as ``clip_gradients`` of :func:`fit`.

    Args:
        clip_value: Largest gradient norm of one fit (``None``: only the finiteness check).
    """

    clip_value: float | None = None

    def __call__(self, params: list[Tensor]) -> bool:
        """Clip in place; return whether any fit has a finite gradient (else skip the step)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return True
        squares = torch.stack([g.detach().reshape(g.shape[0], -1).square().sum(1) for g in grads])
        norm = squares.sum(0).sqrt()  # [B]
        finite = torch.isfinite(norm)
        factor = torch.where(finite, 1.0, 0.0)
        if self.clip_value is not None:
            factor = factor * (self.clip_value / (norm + 1e-6)).clamp(max=1.0)
        factor = torch.nan_to_num(factor, nan=0.0)
        for g in grads:
            g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            g.mul_(factor.reshape(-1, *([1] * (g.ndim - 1))).to(g.dtype))
        return bool(finite.any())


def make_optimizer(
    parameters: Iterable[Tensor],
    *,
    learning_rate: float = 1e-3,
    optimizer: type[torch.optim.Optimizer] | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
    scheduler: type | None = None,
    scheduler_kwargs: dict[str, Any] | None = None,
    gamma: float | None = None,
) -> tuple[torch.optim.Optimizer, Any]:
    """Build an optimizer (Adam by default, through
    :func:`~sbi_vi.vi.optim.build_optimizer`) and its learning-rate scheduler.

    Args:
        parameters: Trainable tensors.
        learning_rate: Initial learning rate.
        optimizer: An optimizer class (default ``torch.optim.Adam``).
        optimizer_kwargs: Extra keyword arguments of the optimizer.
        scheduler: A scheduler class; by default ``ExponentialLR(gamma)`` if ``gamma`` is
            given, else a constant learning rate.
        scheduler_kwargs: Keyword arguments of ``scheduler``.
        gamma: Per-iteration exponential decay of the default scheduler.

    Returns:
        ``(optimizer, scheduler_or_None)``.
    """
    learning_rate = check_positive_float("learning_rate", learning_rate)
    opt_cls = torch.optim.Adam if optimizer is None else optimizer
    opt = build_optimizer(parameters, opt_cls, lr=learning_rate, **(optimizer_kwargs or {}))
    if scheduler is not None:
        return opt, scheduler(opt, **(scheduler_kwargs or {}))
    if gamma is not None:
        gamma = check_positive_float("gamma", gamma)
        if gamma > 1:
            raise ValueError(f"`gamma` must lie in (0, 1], got {gamma}.")
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    return opt, None


def fit(
    loss_fn: Callable[[], tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    max_num_iters: int = 2000,
    clip_value: float | None = 10.0,
    stopping: StoppingRule | None = None,
    retain_graph: bool = False,
    show_progress_bar: bool = True,
    description: str = "Training",
    clip_gradients: Callable[[list[Tensor]], bool] | None = None,
) -> FitResult:
    """Minimise ``loss_fn`` with ``optimizer`` until ``stopping`` says so or ``max_num_iters``.

    On an accelerator with a fused Adam (the default of :func:`make_optimizer`), nothing of
    a step is read back to the host: skipping is decided on the device
    (:func:`~sbi_vi.vi.steps.deferred_step`) and the losses stay there until the stopping
    rule reads them (see :attr:`StoppingRule.loss_window`); the result is the same.

    Args:
        loss_fn: Closure returning ``(surrogate, reported)``: the surrogate is
            backpropagated, the reported scalar is recorded and fed to the stopping rule.
        optimizer: The optimizer over the trainable tensors.
        scheduler: Learning-rate scheduler stepped once per iteration (or ``None``).
        max_num_iters: Maximum number of iterations.
        clip_value: Maximal gradient norm (``None``: no clipping).
        stopping: Stopping rule (default: never stop early).
        retain_graph: Passed to ``backward`` (for exotic user distributions).
        show_progress_bar: Show a tqdm bar.
        description: Label of the progress bar.
        clip_gradients: Replaces the norm clipping of ``clip_value`` (see
            :func:`~sbi_vi.vi.steps.gradient_step`; e.g. :class:`RowwiseClip` for a batch
            of fits).

    Returns:
        A :class:`FitResult` with the loss history.

    Raises:
        RuntimeError: If every step of the run was skipped as non-finite.
    """
    max_num_iters = check_positive_int("max_num_iters", max_num_iters)
    if clip_value is not None:
        clip_value = check_positive_float("clip_value", clip_value)
    stopping = NoStopping() if stopping is None else stopping
    stopping.reset()
    step: Callable[[Tensor, torch.optim.Optimizer], bool | Tensor]
    log: _HostLosses | _DeviceLosses
    if clip_gradients is None and steps_on_device(optimizer):
        step = partial(deferred_step, clip_value=clip_value, retain_graph=retain_graph)
        log = _DeviceLosses(stopping)
    else:
        step = partial(
            gradient_step,
            clip_value=clip_value,
            retain_graph=retain_graph,
            clip_gradients=clip_gradients,
        )
        log = _HostLosses(stopping)
    converged, it = False, 0
    start = time.perf_counter()
    if show_progress_bar:
        bar = tqdm(range(max_num_iters), desc=description, leave=False)
        iterations: Iterable[int] = bar
    else:
        bar, iterations = None, range(max_num_iters)
    for it in iterations:
        surrogate, reported = loss_fn()
        taken = step(surrogate, optimizer)
        if scheduler is not None:
            scheduler.step()
        converged = log.add(it, taken, reported)
        if bar is not None and it % 10 == 0 and log.last is not None:
            bar.set_postfix(loss=f"{log.last:.3f}")
        if converged:
            break
    log.finish()
    if bar is not None:
        bar.close()
    num_iters = it + 1
    if log.skipped == num_iters:
        raise RuntimeError(
            f"All {num_iters} optimisation steps had a non-finite loss or gradient; the target "
            "log density is probably NaN/inf where q puts its mass. Check the potential."
        )
    if log.skipped:
        logger.warning(
            "Skipped %d of %d steps with a non-finite loss or gradient.", log.skipped, num_iters
        )
    return FitResult(
        losses=torch.tensor(log.losses, dtype=torch.get_default_dtype()),
        num_iters=num_iters,
        converged=converged,
        num_skipped=log.skipped,
        seconds=time.perf_counter() - start,
    )


class _HostLosses:
    """The losses of a :func:`fit` whose steps are decided on the host: each is read
    after its step and handed to the stopping rule at once."""

    def __init__(self, stopping: StoppingRule):
        self.stopping = stopping
        self.losses: list[float] = []
        self.skipped = 0
        self.last: float | None = None
        self._check = type(stopping) is not NoStopping

    def add(self, iteration: int, taken: bool | Tensor, reported: Tensor) -> bool:
        """Record one iteration; whether the stopping rule stops."""
        if taken:
            value = _reported_value(reported)
        else:
            self.skipped += 1
            value = math.nan
        self.losses.append(value)
        self.last = value
        return self._check and self.stopping.update_from(
            iteration, reported if taken else None, value
        )

    def finish(self) -> None:
        """Nothing is pending."""


class _DeviceLosses:
    """The losses of a :func:`fit` whose steps are decided on the device: they stay there
    and are read in one transfer when the stopping rule needs them
    (:attr:`StoppingRule.loss_window`), or every ``_READ_EVERY`` iterations."""

    _READ_EVERY = 100

    def __init__(self, stopping: StoppingRule):
        self.stopping = stopping
        self.losses: list[float] = []
        self.skipped = 0
        self.last: float | None = None
        self._window = stopping.loss_window
        self._pending: list[tuple[int, Tensor, Tensor]] = []

    def add(self, iteration: int, taken: bool | Tensor, reported: Tensor) -> bool:
        """Record one iteration; whether the stopping rule stops."""
        self._pending.append((iteration, torch.as_tensor(taken), reported.detach()))
        window = self._window
        stop = False
        if window is None:
            stop = self.stopping.update_from(iteration, None, math.nan)
        if window is not None and (iteration + 1) % window == 0:
            stop = self._read()
        elif (iteration + 1) % self._READ_EVERY == 0:
            self._read()
        return stop

    def finish(self) -> None:
        """Read what is still pending (the stopping rule's decision is over)."""
        self._read()

    def _read(self) -> bool:
        if not self._pending:
            return False
        means = torch.stack([r.mean().double() for _, _, r in self._pending])
        flags = torch.stack([t.double() for _, t, _ in self._pending]).to(means.device)
        values, taken = torch.stack((means, flags)).tolist()  # the one transfer
        feed = self._window is not None
        stop = False
        for (iteration, _, reported), value, ok in zip(self._pending, values, taken, strict=True):
            if not ok:
                self.skipped += 1
                value = math.nan
            self.losses.append(value)
            if feed:
                stop = self.stopping.update_from(iteration, reported if ok else None, value)
        self._pending = []
        finite = [v for v in self.losses[-len(values) :] if math.isfinite(v)]
        self.last = finite[-1] if finite else self.last
        return stop


def _reported_value(reported: Tensor) -> float:
    """``float(reported.detach().mean())``; a one-element CPU tensor is read directly."""
    if reported.dim() == 0 and reported.device.type == "cpu" and reported.is_floating_point():
        return reported.item()
    return float(reported.detach().mean())
