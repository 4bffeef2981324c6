"""Polyak–Ruppert iterate averaging for ``SVI.run``, riding on the engine's scheduler hook.

At a constant learning rate the parameters of a stochastic fit do not converge: they
wander around the optimum with a spread set by the learning rate and the gradient noise.
The average of the iterates over the last part of a run has a much smaller spread
(Polyak & Juditsky, 1992). :class:`TailAverage` is passed to :func:`sbi_vi.vi.fit` as its
``scheduler`` — the hook the loop calls once after every step — so the loop itself is
unchanged: it steps the wrapped learning-rate scheduler (if any) and, from step ``start``
on, keeps a running mean of the trainable tensors; :meth:`TailAverage.apply` writes the
mean into them at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sbi_vi._checks import check_positive_int

__all__ = ["TailAverage", "check_average"]


def check_average(average: float | None) -> float | None:
    """``average`` checked: ``None`` or a fraction in ``(0, 1]`` of a run's steps.

    Raises:
        TypeError: If it is not a number.
        ValueError: If it is outside ``(0, 1]``.
    """
    if average is None:
        return None
    if isinstance(average, bool) or not isinstance(average, int | float):
        raise TypeError(
            f"`average` must be None or the fraction of the last steps to average, e.g. 0.5, "
            f"got {average!r}."
        )
    if not 0 < average <= 1:
        raise ValueError(f"`average` must lie in (0, 1], got {average}.")
    return float(average)


class TailAverage:
    """Running mean of ``params`` over the steps after ``start``; a ``fit`` scheduler.

    Args:
        params: The trainable tensors (updated in place by the optimiser).
        start: Steps to skip before averaging begins (the burn-in).
        scheduler: A learning-rate scheduler to step along (``None``: none).
    """

    def __init__(self, params: Sequence[Tensor], start: int, scheduler: Any = None) -> None:
        self.params = list(params)
        self.start = check_positive_int("start", start, allow_zero=True)
        self.scheduler = scheduler
        self.num_averaged = 0
        self._steps = 0
        self._mean: list[Tensor] = []

    def step(self) -> None:
        """Step the wrapped scheduler; from step ``start`` on, add the iterate to the mean."""
        if self.scheduler is not None:
            self.scheduler.step()
        self._steps += 1
        if self._steps <= self.start:
            return
        with torch.no_grad():
            if not self._mean:
                self._mean = [p.detach().clone() for p in self.params]
            else:
                weight = 1.0 / (self.num_averaged + 1)
                torch._foreach_lerp_(self._mean, [p.detach() for p in self.params], weight)
        self.num_averaged += 1

    def apply(self) -> bool:
        """Write the mean into the parameters if it is finite; returns whether it did.

        A mean that is not finite (a step that left non-finite parameters) is dropped: the
        last iterate stays, and the run's divergence check reports it.
        """
        if not self._mean:
            return False
        with torch.no_grad():
            if not all(bool(torch.isfinite(m).all()) for m in self._mean):
                return False
            for p, m in zip(self.params, self._mean, strict=True):
                p.copy_(m)
        return True
