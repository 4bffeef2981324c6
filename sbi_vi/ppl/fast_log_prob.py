"""Fewer kernels for the log densities that models use most, and validation off in hot loops.

An SVI step of a small model is mostly the model's own ``log_prob`` calls, forward and
backward. torch's ``Normal.log_prob`` takes nine kernels (``scale ** 2``, a second power, a
division by ``2 * var``, three subtractions, ...); the same density from the standardised
value ``z = (x - loc) / scale`` takes five (``-½ z² - log scale - ½ log 2π`` as one
``addcmul``), and its backward shrinks with it. :func:`log_prob` computes these densities
for the exact torch types below (never for a subclass, whose ``log_prob`` may differ) when
the distribution does not validate its arguments, and otherwise defers to
``fn.log_prob``; the values agree with torch's to float rounding.

:func:`validation_off` switches torch's distribution argument checks off for the body of a
``with`` block and restores the previous setting on exit (exceptions included). ``SVI.run``
runs every step after the first of a run inside it: the first step checks the model's
distributions and data as the user configured torch, later steps build the same
distributions from the same data and pay only for the density.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    HalfCauchy,
    HalfNormal,
    Independent,
    Normal,
)

__all__ = ["log_prob", "validation_off"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_2_OVER_PI = math.log(2 / math.pi)
_HALF_LOG_2_OVER_PI = 0.5 * math.log(2 / math.pi)


def _normal(fn: Normal, value: Tensor) -> Tensor:
    scale = fn.scale
    z = (value - fn.loc) / scale
    return torch.addcmul(-_HALF_LOG_2PI - scale.log(), z, z, value=-0.5)


def _half_normal(fn: HalfNormal, value: Tensor) -> Tensor:
    scale = fn.base_dist.scale
    z = value / scale
    lp = torch.addcmul(_HALF_LOG_2_OVER_PI - scale.log(), z, z, value=-0.5)
    return torch.where(value >= 0, lp, -math.inf)


def _half_cauchy(fn: HalfCauchy, value: Tensor) -> Tensor:
    scale = fn.base_dist.scale
    lp = _LOG_2_OVER_PI - scale.log() - (value / scale).square().log1p()
    return torch.where(value >= 0, lp, -math.inf)


_FAST: dict[type, Callable[[Distribution, Tensor], Tensor]] = {
    Normal: _normal,
    HalfNormal: _half_normal,
    HalfCauchy: _half_cauchy,
}


def log_prob(fn: Distribution, value: Tensor) -> Tensor:
    """``fn.log_prob(value)``, with fewer kernels for a few exact torch types.

    Args:
        fn: A distribution.
        value: The value, ``[*sample, *batch, *event]``.

    Returns:
        The log density, ``[*sample, *batch]``.

    Example:
        >>> d = Normal(torch.zeros(3), 2.0, validate_args=False)
        >>> x = torch.tensor([0.5, -1.0, 3.0])
        >>> torch.allclose(log_prob(d, x), d.log_prob(x))
        True
    """
    kind = type(fn)
    if kind is Independent:
        base = fn.base_dist  # type: ignore[attr-defined]
        fast = _FAST.get(type(base))
        if fast is None or base._validate_args or fn._validate_args:
            return fn.log_prob(value)
        lp = fast(base, value)
        n = fn.reinterpreted_batch_ndims  # type: ignore[attr-defined]
        return lp.sum(tuple(range(-n, 0))) if n else lp
    fast = _FAST.get(kind)
    if fast is None or fn._validate_args:
        return fn.log_prob(value)
    return fast(fn, value)


@contextlib.contextmanager
def validation_off() -> Iterator[None]:
    """Distributions built inside the block skip their argument checks (restored on exit).

    Example:
        >>> with validation_off():
        ...     Normal(0.0, -1.0).scale  # no ValueError inside the block
        tensor(-1.)
    """
    previous = Distribution._validate_args
    Distribution._validate_args = False
    try:
        yield
    finally:
        Distribution._validate_args = previous
