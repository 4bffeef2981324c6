"""``seed``: reproducible draws that leave the caller's torch RNG as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sbi_vi.ppl.runtime import Messenger

__all__ = ["SeedMessenger", "seed"]

_RngState = tuple[torch.Tensor, list[torch.Tensor] | None]


def _get_state() -> _RngState:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_state(state: _RngState) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class SeedMessenger(Messenger):
    """Runs the wrapped code on its own random stream, seeded by ``rng_seed``.

    torch distributions draw from the global generator, so the handler swaps the global
    RNG state (CPU, and CUDA when initialised) in on entry and out on exit: inside, draws
    and plate subsamples come from the handler's stream; outside, the caller's stream is
    exactly where it was. As in NumPyro, the stream continues across calls of one seeded
    function (two calls give different draws; two handlers with the same seed give the
    same draws).

    Args:
        fn: The model or guide.
        rng_seed: Seed of the stream.

    Example:
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import sample
        >>> def model():
        ...     return sample("x", Normal(0.0, 1.0))
        >>> bool(seed(model, rng_seed=0)() == seed(model, rng_seed=0)())
        True
    """

    def __init__(self, fn: Callable[..., Any] | None = None, rng_seed: int = 0) -> None:
        super().__init__(fn)
        if isinstance(rng_seed, bool) or not hasattr(rng_seed, "__index__"):
            raise TypeError(f"`rng_seed` must be an int, got {type(rng_seed).__name__}.")
        self.rng_seed = int(rng_seed)
        self._state: _RngState | None = None
        self._outer: list[_RngState] = []

    def __enter__(self) -> SeedMessenger:
        self._outer.append(_get_state())
        if self._state is None:
            torch.default_generator.manual_seed(self.rng_seed)
            if torch.cuda.is_initialized():
                torch.cuda.manual_seed_all(self.rng_seed)
        else:
            _set_state(self._state)
        return super().__enter__()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self._state = _get_state()
        _set_state(self._outer.pop())
        super().__exit__(exc_type, exc_value, traceback)


def seed(fn: Callable[..., Any] | None = None, rng_seed: int = 0) -> SeedMessenger:
    """A :class:`SeedMessenger` (NumPyro's ``handlers.seed(fn, rng_seed)``)."""
    return SeedMessenger(fn, rng_seed)
