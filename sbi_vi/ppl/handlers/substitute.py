"""``substitute`` and ``condition``: values for sites from a dict or a function."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from sbi_vi.ppl.runtime import Message, Messenger

__all__ = ["ConditionMessenger", "SubstituteMessenger", "condition", "substitute"]

_SUBSTITUTABLE = frozenset({"sample", "param", "plate", "deterministic"})


def _lookup(
    what: str, data: Mapping[str, Any] | None, fn: Callable[[Message], Any] | None, key: str
) -> Callable[[Message], Any]:
    if (data is None) == (fn is None):
        raise ValueError(f"{what} needs exactly one of `data` and `{key}`.")
    if fn is not None:
        if not callable(fn):
            raise TypeError(f"{what}: `{key}` must be callable, got {type(fn).__name__}.")
        return fn
    if not isinstance(data, Mapping):
        raise TypeError(f"{what}: `data` must be a mapping name -> value, got {type(data)}.")
    return lambda msg: data.get(msg.name)


class SubstituteMessenger(Messenger):
    """Gives sites fixed values: sample (kept latent), param, plate (indices), deterministic.

    Args:
        fn: The model or guide.
        data: Values by site name.
        substitute_fn: ``substitute_fn(msg) -> value or None`` instead of ``data``.

    Example:
        >>> import torch
        >>> from sbi_vi.ppl import param
        >>> substitute(lambda: param("a", torch.zeros(1)), data={"a": torch.ones(1)})()
        tensor([1.])
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        data: Mapping[str, Any] | None = None,
        substitute_fn: Callable[[Message], Any] | None = None,
    ) -> None:
        super().__init__(fn)
        self.data = data
        self._value = _lookup("substitute", data, substitute_fn, "substitute_fn")

    def process_message(self, msg: Message) -> None:
        if msg.type in _SUBSTITUTABLE:
            value = self._value(msg)
            if value is not None:
                msg.value = value


class ConditionMessenger(Messenger):
    """Observes sample sites: sets their value and marks them ``is_observed``.

    Args:
        fn: The model.
        data: Observed values by site name.
        condition_fn: ``condition_fn(msg) -> value or None`` instead of ``data``.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import sample
        >>> condition(lambda: sample("x", Normal(0.0, 1.0)), data={"x": 2.0})()
        tensor(2.)
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        data: Mapping[str, Any] | None = None,
        condition_fn: Callable[[Message], Any] | None = None,
    ) -> None:
        super().__init__(fn)
        self.data = data
        self._value = _lookup("condition", data, condition_fn, "condition_fn")

    def process_message(self, msg: Message) -> None:
        if msg.type == "sample":
            value = self._value(msg)
            if value is not None:
                msg.value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
                msg.is_observed = True


def substitute(
    fn: Callable[..., Any] | None = None,
    data: Mapping[str, Any] | None = None,
    substitute_fn: Callable[[Message], Any] | None = None,
) -> SubstituteMessenger:
    """A :class:`SubstituteMessenger` (NumPyro's ``handlers.substitute``)."""
    return SubstituteMessenger(fn, data, substitute_fn)


def condition(
    fn: Callable[..., Any] | None = None,
    data: Mapping[str, Any] | None = None,
    condition_fn: Callable[[Message], Any] | None = None,
) -> ConditionMessenger:
    """A :class:`ConditionMessenger` (NumPyro's ``handlers.condition``)."""
    return ConditionMessenger(fn, data, condition_fn)
