"""A potential from a plain function ``(theta, x_o) -> log p̃(θ | x_o)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from sbi_vi.potentials.base import BasePotential

__all__ = ["CallablePotential"]


class CallablePotential(BasePotential):
    """Wrap a function ``fn(theta [*, D], x_o [N, L]) -> [*]`` as a potential.

    The function returns the full unnormalised log posterior (the prior included). A
    function of θ alone (one positional parameter, e.g. a task's ``potential(1)``) is
    accepted too; it ignores ``x_o``.

    Args:
        fn: The user's function.
        prior: The prior (used for the support transform and initialisation, not added).
        x_o: Observation, shape ``[L]`` or ``[N, L]``; may be ``None`` if ``fn`` ignores it.

    Example:
        >>> pot = CallablePotential(lambda theta, x_o: -(theta - x_o).square().sum(-1),
        ...                         x_o=torch.zeros(2))
        >>> pot(torch.ones(3, 2))
        tensor([-2., -2., -2.])
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor | None], Tensor],
        prior: object | None = None,
        x_o: Tensor | None = None,
        device: str = "cpu",
    ):
        if not callable(fn):
            raise TypeError(f"`potential_fn` must be callable, got {type(fn).__name__}.")
        super().__init__(prior, x_o, device)
        self.fn = fn
        self.takes_x = _num_positional(fn) != 1

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        with torch.set_grad_enabled(track_gradients and torch.is_grad_enabled()):
            out = self.fn(theta, self._x_o) if self.takes_x else self.fn(theta)
        if not isinstance(out, Tensor) or out.shape != theta.shape[:-1]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"`potential_fn(theta, x_o)` must return a tensor of shape "
                f"{tuple(theta.shape[:-1])} for theta of shape {tuple(theta.shape)}; got {shape}."
            )
        return out


def _num_positional(fn: Callable) -> int | None:
    """Number of positional parameters of ``fn`` (``None`` if it takes ``*args``/unknown)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is p.empty for p in params)
