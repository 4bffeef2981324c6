"""Argument checks for the public boundary: clear errors naming the argument."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | torch.SymInt):
        if not (hasattr(value, "__index__") and not isinstance(value, float)):
            raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}.")
        value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"`{name}` must be a {kind} integer, got {value}.")
    return int(value)


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is a positive finite number, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not (value == value) or value in (float("inf"), float("-inf")):
        raise ValueError(f"`{name}` must be finite, got {value}.")
    if value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"`{name}` must be {kind}, got {value}.")
    return value


def check_in_interval(
    name: str, value: Any, low: float, high: float, *, closed: str = "neither"
) -> float:
    """Check ``low < value < high`` (ends included per ``closed``: neither|left|right|both)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    left_ok = value >= low if closed in ("left", "both") else value > low
    right_ok = value <= high if closed in ("right", "both") else value < high
    if not (left_ok and right_ok):
        lb = "[" if closed in ("left", "both") else "("
        rb = "]" if closed in ("right", "both") else ")"
        raise ValueError(f"`{name}` must lie in {lb}{low}, {high}{rb}, got {value}.")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}."
        )
    return value


def as_tensor(name: str, value: Any, *, dtype: torch.dtype | None = None) -> Tensor:
    """Convert array-likes to a float tensor, raising a ``TypeError`` naming ``name``."""
    if isinstance(value, Tensor):
        out = value
    else:
        try:
            out = torch.as_tensor(value)
        except Exception as err:
            raise TypeError(
                f"`{name}` must be a tensor or array-like, got {type(value).__name__}."
            ) from err
    if dtype is not None:
        out = out.to(dtype)
    elif not torch.is_floating_point(out):
        out = out.to(torch.get_default_dtype())
    return out


def check_finite(name: str, value: Tensor) -> Tensor:
    """Raise if ``value`` holds NaN or inf."""
    if not torch.isfinite(value).all():
        bad = (~torch.isfinite(value)).sum().item()
        raise ValueError(f"`{name}` must be finite, but {bad} entries are NaN or inf.")
    return value


def check_unknown_kwargs(where: str, kwargs: dict[str, Any], known: Iterable[str]) -> None:
    """Raise a ``TypeError`` listing keyword arguments that ``where`` does not accept."""
    known = set(known)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"{where} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(known))}."
        )


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with ``torch.manual_seed(seed)``, restoring the global RNGs after.

    The CPU generator and, once CUDA is initialised, every CUDA device's generator are
    seeded and restored. ``None`` runs the block on the global generators as they are.
    """
    if seed is None:
        yield
        return
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(check_positive_int("seed", seed, allow_zero=True))
        yield
