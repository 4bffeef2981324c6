"""Early stopping on a held-out loss, with the best weights restored.

Amortised VI (and any front end that trains on a data set of observations) stops when a
validation loss has not improved for a number of iterations, then goes back to the weights
that had the best validation loss. :class:`ValidationStopping` is a stopping rule of
:func:`sbi_vi.vi.fit.fit`; :func:`common_random_numbers` makes a stochastic validation loss
a deterministic function of the weights, so two iterations are compared on the same draws.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sbi_vi._checks import check_positive_int, seeded
from sbi_vi.vi.fit import StoppingRule

__all__ = ["ValidationStopping", "common_random_numbers"]


@contextlib.contextmanager
def common_random_numbers(seed: int) -> Iterator[None]:
    """Run the block on torch's generators seeded with ``seed``, then restore their state.

    A Monte-Carlo validation loss evaluated inside this block draws the same base noise at
    every call, so its changes between iterations come from the weights alone, not from
    fresh particles (common random numbers). The caller's random stream is untouched.

    Example:
        >>> with common_random_numbers(0):
        ...     a = torch.randn(2)
        >>> with common_random_numbers(0):
        ...     b = torch.randn(2)
        >>> torch.equal(a, b)
        True
    """
    with seeded(seed):
        yield


@dataclass
class ValidationStopping(StoppingRule):
    """Stop after ``stop_after_iters`` iterations without a lower validation loss.

    After every ``every``-th training iteration ``validate()`` is called (without gradients);
    a loss below the best so far records a copy of ``module``'s state. Call
    :meth:`restore_best` after training to load the weights of the best validation loss.

    Args:
        validate: Returns the validation loss (a float; NaN or inf never counts as best).
        module: The module whose state is kept at the best validation loss.
        stop_after_iters: Validations in a row without improvement before stopping.
        every: Validate after every ``every``-th iteration.
        min_delta: A loss improves only if it lies more than this below the best so far.

    Attributes:
        losses: Every validation loss, in order.
        best_loss: The lowest validation loss so far.
        best_iteration: The iteration (0-based) after which it was reached.
    """

    validate: Callable[[], float]
    module: nn.Module
    stop_after_iters: int = 20
    every: int = 1
    min_delta: float = 0.0
    losses: list[float] = field(default_factory=list, repr=False)
    best_loss: float = field(default=math.inf)
    best_iteration: int = field(default=-1)
    _best_state: dict[str, Tensor] | None = field(default=None, repr=False)
    _stale: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.stop_after_iters = check_positive_int("stop_after_iters", self.stop_after_iters)
        self.every = check_positive_int("every", self.every)

    @property
    def loss_window(self) -> int | None:
        return None  # it reads its own validation loss, not the training losses

    def reset(self) -> None:
        self.losses = []
        self.best_loss, self.best_iteration, self._stale = math.inf, -1, 0
        self._best_state = None

    def update(self, iteration: int, value: float) -> bool:
        if (iteration + 1) % self.every:
            return False
        with torch.no_grad():
            loss = float(self.validate())
        self.losses.append(loss)
        if math.isfinite(loss) and loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_iteration, self._stale = loss, iteration, 0
            self._best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            return False
        self._stale += 1
        return self._stale >= self.stop_after_iters

    def restore_best(self) -> bool:
        """Load the state of the best validation loss; ``False`` if there was none."""
        if self._best_state is None:
            return False
        self.module.load_state_dict(self._best_state)
        return True
