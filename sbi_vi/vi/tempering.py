r"""Tempering the target from a base density (the prior) to the posterior during training.

Reverse KL is mode-seeking: fitted straight to a posterior with several separated modes, q
settles on whichever mode its first steps reach and never sees the others, and PSIS cannot
tell (importance weights from q carry no information about mass q never visits). Annealing
the target,

.. math:: \log p_\beta(\theta) = \log \pi(\theta) + \beta\,\bigl(\log\tilde p(\theta) -
    \log \pi(\theta)\bigr), \qquad \beta: \tfrac1n \to 1 \text{ over } n \text{ steps},

starts q on the broad base ``π`` (where the warm-up leaves it) and lets the modes emerge
from it together as the likelihood is switched on, so q keeps the mass of each instead of
collapsing onto the first one found (Huang et al. 2018, *Improving explorability in
variational inference with annealed variational objectives*).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sbi_vi._checks import check_positive_int
from sbi_vi.vi.fit import FitResult, StoppingRule, fit

__all__ = ["LinearTempering", "annealed_fit"]

LogDensity = Callable[[Tensor], Tensor]


class LinearTempering:
    r"""``log p_β = log π + β (log p̃ − log π)`` with ``β = t / num_steps`` at step ``t``.

    Call it as the target of a divergence and :meth:`step` once per optimisation step.
    Where the base is ``-inf`` (outside its support) the tempered target is ``-inf`` too.

    Args:
        log_p: The target ``log p̃(θ)``, ``[*batch, D] -> [*batch]``.
        log_base: The base ``log π(θ)`` (the prior for a posterior ``p̃ = likelihood × π``).
        num_steps: Steps until ``β = 1``.

    Example:
        >>> target = LinearTempering(lambda t: -t.square().sum(-1), lambda t: 0 * t.sum(-1), 4)
        >>> theta = torch.ones(1, 2)
        >>> values = []
        >>> for _ in range(5):
        ...     values.append(target(theta).item())
        ...     target.step()
        >>> values
        [-0.5, -1.0, -1.5, -2.0, -2.0]
    """

    def __init__(self, log_p: LogDensity, log_base: LogDensity, num_steps: int):
        self.log_p = log_p
        self.log_base = log_base
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.t = 1

    @property
    def beta(self) -> float:
        """The current inverse temperature, in ``(0, 1]``."""
        return min(1.0, self.t / self.num_steps)

    def step(self) -> None:
        """Advance the schedule by one optimisation step."""
        self.t += 1

    def __call__(self, theta: Tensor) -> Tensor:
        log_p = self.log_p(theta)
        beta = self.beta
        if beta >= 1.0:
            return log_p
        log_base = self.log_base(theta)
        tempered = log_base + beta * (log_p - log_base)  # promotes mixed dtypes, unlike lerp
        return torch.where(torch.isfinite(log_base), tempered, log_base)


def annealed_fit(
    make_loss: Callable[[LogDensity], Callable[[], tuple[Tensor, Tensor]]],
    log_p: LogDensity,
    log_base: LogDensity,
    num_steps: int,
    optimizer: torch.optim.Optimizer,
    *,
    max_num_iters: int,
    stopping: StoppingRule | None = None,
    description: str = "Training",
    **fit_kwargs: Any,
) -> FitResult:
    """:func:`~sbi_vi.vi.fit.fit` on a target tempered from ``log_base`` over its first
    ``num_steps`` iterations, then on ``log_p`` itself until ``stopping`` says so.

    The stopping rule only watches the second phase: while β rises the loss grows with it
    and says nothing about convergence.

    Args:
        make_loss: Builds the loss closure of ``fit`` for a target log density.
        log_p: The target.
        log_base: The base of the tempering (the prior).
        num_steps: Annealing iterations (0: plain ``fit``); at most ``max_num_iters``.
        optimizer: The optimizer, shared by both phases (as is a ``scheduler``).
        max_num_iters: Iterations of both phases together.
        stopping: Stopping rule of the second phase.
        description: Progress-bar label.
        **fit_kwargs: Other arguments of ``fit`` (``scheduler``, ``clip_value``, ...).

    Returns:
        One :class:`~sbi_vi.vi.fit.FitResult` over both phases.
    """
    num_steps = min(check_positive_int("num_steps", num_steps, allow_zero=True), max_num_iters)
    if num_steps == 0:
        return fit(
            make_loss(log_p),
            optimizer,
            max_num_iters=max_num_iters,
            stopping=stopping,
            description=description,
            **fit_kwargs,
        )
    tempering = LinearTempering(log_p, log_base, num_steps)
    tempered_loss = make_loss(tempering)

    def closure() -> tuple[Tensor, Tensor]:
        out = tempered_loss()
        tempering.step()
        return out

    first = fit(
        closure,
        optimizer,
        max_num_iters=num_steps,
        description=f"{description}, annealing",
        **fit_kwargs,
    )
    if num_steps == max_num_iters:
        return first
    second = fit(
        make_loss(log_p),
        optimizer,
        max_num_iters=max_num_iters - num_steps,
        stopping=stopping,
        description=description,
        **fit_kwargs,
    )
    return FitResult(
        losses=torch.cat((first.losses, second.losses)),
        num_iters=first.num_iters + second.num_iters,
        converged=second.converged,
        num_skipped=first.num_skipped + second.num_skipped,
        seconds=first.seconds + second.seconds,
    )
