"""Initial values of latent sites for autoguides: ``init_loc_fn(msg) -> value``.

An init function receives the site's message while the model runs once (vectorised over
one particle, subsampled plates at full size), after earlier sites were initialised, and
returns a value in the site's support with the shape of a draw, ``fn.batch_shape +
fn.event_shape``. Names follow Pyro and NumPyro.

The strategies that draw from the prior (``init_to_sample``, ``init_to_median``,
``init_to_mean``) fall back to :func:`init_to_feasible` on a site whose distribution cannot
be sampled (its ``sample`` raises ``NotImplementedError``, as an improper flat prior's does),
so a model with unprioritised parameters is set up without being sampled, as in Pyro.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to

from sbi_vi.ppl.runtime import Message

__all__ = [
    "init_to_feasible",
    "init_to_mean",
    "init_to_median",
    "init_to_sample",
    "init_to_value",
]

InitFn = Callable[[Message], Tensor]


def no_bijection_error(name: str, fn: Distribution) -> ValueError:
    """The error for a latent site whose support no registered bijection reaches."""
    return ValueError(
        f"latent site {name!r}: no bijection from unconstrained space onto the support "
        f"{fn.support} of {type(fn).__name__} is registered with "
        "torch.distributions.biject_to, so no autoguide can reach it. Reparametrise the site "
        "onto a registered support (real, positive, interval, simplex, corr_cholesky, ...)."
    )


def init_to_feasible(msg: Message) -> Tensor:
    """Zero in unconstrained space, mapped into the support (Pyro's ``AutoNormal`` default).

    Raises:
        ValueError: If no bijection onto the site's support is registered.
    """
    fn = msg.fn
    shape = fn.batch_shape + fn.event_shape
    try:
        transform = biject_to(fn.support)
    except NotImplementedError:
        raise no_bijection_error(msg.name, fn) from None
    zeros = torch.zeros(transform.inverse_shape(shape), dtype=torch.get_default_dtype())
    return transform(zeros)


def init_to_sample(msg: Message) -> Tensor:
    """A draw from the site's prior (given the initial values of earlier sites).

    Falls back to :func:`init_to_feasible` where the prior cannot be sampled.
    """
    try:
        return msg.fn.sample()
    except NotImplementedError:
        return init_to_feasible(msg)


def init_to_median(msg: Message | None = None, *, num_samples: int = 15) -> Tensor | InitFn:
    """The element-wise median of ``num_samples`` prior draws (Pyro's default).

    Call with keyword arguments only to get a configured function:
    ``init_to_median(num_samples=31)``. Falls back to :func:`init_to_feasible` where the
    prior cannot be sampled.
    """
    if msg is None:
        return partial(init_to_median, num_samples=num_samples)
    try:
        draws = msg.fn.sample((num_samples,))
    except NotImplementedError:
        return init_to_feasible(msg)
    value = draws.median(0).values
    if not bool(msg.fn.support.check(value).all()):  # e.g. the median of simplex draws
        return draws[0]
    return value


def init_to_mean(msg: Message) -> Tensor:
    """The prior mean where it is finite and in the support, else the median (or, where the
    prior cannot be sampled either, :func:`init_to_feasible`)."""
    try:
        value = msg.fn.mean.expand(msg.fn.batch_shape + msg.fn.event_shape)
    except NotImplementedError:
        return init_to_median(msg)  # type: ignore[return-value]
    if not bool(torch.isfinite(value).all()) or not bool(msg.fn.support.check(value).all()):
        return init_to_median(msg)  # type: ignore[return-value]
    return value.clone()


def init_to_value(
    msg: Message | None = None,
    *,
    values: Mapping[str, Tensor] | None = None,
    fallback: InitFn | None = None,
) -> Tensor | InitFn:
    """Given values by site name (in the site's plain shape), ``fallback`` for the others.

    Example:
        >>> import torch
        >>> init = init_to_value(values={"mu": torch.tensor(1.0)})
        >>> callable(init)
        True
    """
    if msg is None:
        return partial(init_to_value, values=dict(values or {}), fallback=fallback)
    fallback = init_to_median if fallback is None else fallback
    value = (values or {}).get(msg.name)
    if value is None:
        return fallback(msg)
    shape = msg.fn.batch_shape + msg.fn.event_shape
    value = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if value.numel() == 1:
        return value.reshape(()).expand(shape).clone()
    if value.numel() != shape.numel():
        raise ValueError(
            f"init_to_value: the value of site {msg.name!r} has {value.numel()} elements, but "
            f"the site has shape {tuple(shape)} (with the particle dim)."
        )
    return value.reshape(shape).clone()
