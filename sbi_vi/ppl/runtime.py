"""The effect-handler runtime: messages, the handler stack, ``apply_stack`` and ``Messenger``.

A primitive (``sample``, ``param``, ``plate``, ...) builds a :class:`Message` and hands it to
:func:`apply_stack`. The active handlers (:class:`Messenger` instances, innermost last in
the stack) see it innermost first through :meth:`Messenger.process_message` until one of
them sets ``msg.stop``; then the default behaviour fills ``msg.value`` if no handler did
(draw, initial parameter value, plate indices); then the handlers that saw the message
get :meth:`Messenger.postprocess_message`, innermost first (the order in which a
``with`` block unwinds; NumPyro and Pyro postprocess outermost first). With no handler
active a primitive does not build a message at all and returns at once.

The stack is per thread. A handler leaves it as it found it even when the wrapped function
raises.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "Message",
    "Messenger",
    "PlateFrame",
    "SiteType",
    "apply_stack",
    "current_stack",
    "default_process_message",
]

SiteType = Literal["sample", "param", "plate", "deterministic", "subsample"]
"""Message types. ``factor`` sites are ``"sample"`` messages with a ``Unit`` distribution."""


class _State(threading.local):
    def __init__(self) -> None:
        self.stack: list[Messenger] = []


_STATE = _State()


def current_stack() -> tuple[Messenger, ...]:
    """The active handlers of this thread, outermost first (a copy, for inspection)."""
    return tuple(_STATE.stack)


@dataclass(frozen=True, slots=True)
class PlateFrame:
    """One enclosing plate of a site: a conditionally independent batch dimension.

    Attributes:
        name: Name of the plate.
        dim: Negative batch dimension of the plate (counted from the right of the batch
            shape, i.e. left of any event dims).
        size: Full size ``N`` of the plate.
        subsample_size: Number ``n`` of indices drawn (``n == N`` without subsampling).
    """

    name: str
    dim: int
    size: int
    subsample_size: int

    @property
    def scale(self) -> float:
        """The factor ``N / n`` by which log densities inside the plate are multiplied."""
        return self.size / self.subsample_size


@dataclass(slots=True, eq=False)
class Message:
    """What a primitive tells the handlers. Handlers read and change its fields.

    Attributes:
        name: Site name, unique within one trace (``param`` and ``plate`` sites may repeat).
        type: ``"sample"``, ``"param"``, ``"plate"``, ``"deterministic"`` or
            ``"subsample"``. :func:`~sbi_vi.ppl.factor` makes a ``"sample"`` site.
        fn: ``sample``: the torch ``Distribution`` (expanded to the enclosing plates by
            the time outer handlers see it). ``param``: the initial value or a
            zero-argument callable returning it. ``plate``: the index sampler.
        args: ``plate``: ``(size, subsample_size)``. Otherwise empty.
        kwargs: ``sample``: ``{"sample_shape": ...}`` (folded into the batch shape by
            plates). ``param``: ``{"constraint": ..., "event_dim": ...}``. ``subsample``:
            ``{"event_dim": ...}``.
        value: The site's value; ``None`` until a handler or the default fills it.
        is_observed: Whether ``value`` is data (``obs=`` or ``condition``).
        infer: Free-form settings for inference (e.g. ``{"is_auxiliary": True}``).
        scale: Multiplier of the site's log density: the product of ``N / n`` of the
            subsampled plates and of any ``scale`` handler; ``1.0`` if none.
        mask: Boolean mask (``bool`` or a bool tensor broadcastable with the site's batch
            shape) from ``mask`` handlers; ``None`` if none. Masked entries add 0.
        cond_indep_stack: The enclosing plates, innermost first.
        stop: Set by a handler to hide the message from the handlers outside it.
        done: Set by a handler to skip the default behaviour.
        intermediates: Room for handlers to leave by-products (e.g. pre-transform values).
        log_prob: Cached scaled and masked log density of a sample site, shape the site's
            batch shape; filled by :meth:`~sbi_vi.ppl.handlers.Trace.compute_log_prob`.
        unscaled_log_prob: The same, masked but not scaled.
    """

    name: str
    type: SiteType
    fn: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    is_observed: bool = False
    infer: dict[str, Any] = field(default_factory=dict)
    scale: float | Tensor = 1.0
    mask: bool | Tensor | None = None
    cond_indep_stack: tuple[PlateFrame, ...] = ()
    stop: bool = False
    done: bool = False
    intermediates: list[Any] = field(default_factory=list)
    log_prob: Tensor | None = None
    unscaled_log_prob: Tensor | None = None

    @property
    def plates(self) -> tuple[str, ...]:
        """Names of the enclosing plates, innermost first."""
        return tuple(frame.name for frame in self.cond_indep_stack)


def _draw(fn: torch.distributions.Distribution, sample_shape: tuple[int, ...]) -> Tensor:
    """A reparameterised draw where the distribution has one, else a plain draw."""
    return fn.rsample(sample_shape) if fn.has_rsample else fn.sample(sample_shape)


def _default_param(msg: Message) -> None:
    # The store is found on the stack rather than by letting it process the message, so a
    # ``block`` between the model and ``param_store`` does not cut the model off its store.
    for handler in reversed(_STATE.stack):
        store = handler.supplied_store
        if store is not None:
            msg.value = store.setdefault(msg.name, msg.fn, constraint=msg.kwargs["constraint"])
            return
    msg.value = _initial_value(msg.name, msg.fn)


def _initial_value(name: str, init_value: Any) -> Any:
    """``init_value``, called if it is a callable; an error if it is missing."""
    if init_value is None:
        raise ValueError(
            f"param site {name!r} has no `init_value` and no parameter store holds it; "
            "pass `init_value=` or run the model under `param_store(store=...)` with a store "
            f"that contains {name!r}."
        )
    return init_value() if callable(init_value) else init_value


def default_process_message(msg: Message) -> None:
    """Fill ``msg.value`` where no handler did: draw, initial value, or plate indices."""
    if msg.done:
        return
    msg.done = True
    if msg.value is not None:
        return
    kind = msg.type
    if kind == "sample":
        msg.value = _draw(msg.fn, msg.kwargs["sample_shape"])
    elif kind == "param":
        _default_param(msg)
    elif kind == "plate":
        msg.value = msg.fn(*msg.args)


def apply_stack(msg: Message) -> Message:
    """Run ``msg`` through the active handlers and the default behaviour.

    Handlers process the message innermost first until one sets ``msg.stop``; the default
    behaviour fills ``msg.value`` unless a handler did or set ``msg.done``; the handlers
    that processed the message then postprocess it, innermost first.

    Args:
        msg: The message of one primitive call.

    Returns:
        The same message, with ``value`` filled.
    """
    stack = _STATE.stack
    low = len(stack) - 1
    while low >= 0:
        stack[low].process_message(msg)
        if msg.stop:
            break
        low -= 1
    default_process_message(msg)
    for i in range(len(stack) - 1, max(low, 0) - 1, -1):
        stack[i].postprocess_message(msg)
    return msg


class Messenger:
    """Base class of effect handlers: a context manager, a decorator and a wrapper.

    A subclass overrides :meth:`process_message` and/or :meth:`postprocess_message`.
    Use it as ``with Handler(): model()``, as ``Handler(model)(*args)``, or as a decorator
    ``@Handler`` / ``@Handler(option=...)``. Entering pushes the handler on this thread's
    stack; leaving pops it and every handler entered after it, also when the code inside
    raised, so the stack is always left as it was found.

    Args:
        fn: The function to run under the handler when the handler is called.
    """

    supplied_store: Any = None
    """The parameter store this handler supplies to ``param`` sites (see ``param_store``)."""

    def __init__(self, fn: Callable[..., Any] | None = None) -> None:
        if fn is not None and not callable(fn):
            raise TypeError(
                f"{type(self).__name__} wraps a callable (a model or guide), got "
                f"{type(fn).__name__}."
            )
        self.fn = fn
        if fn is not None:
            functools.update_wrapper(self, fn, updated=())

    def __enter__(self) -> Any:
        _STATE.stack.append(self)
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        stack = _STATE.stack
        if stack and stack[-1] is self:
            stack.pop()
            return
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is self:
                del stack[i:]
                return

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            if len(args) == 1 and not kwargs and callable(args[0]):
                self.fn = args[0]  # used as ``@Handler(option=...)``
                functools.update_wrapper(self, args[0], updated=())
                return self
            raise TypeError(
                f"{type(self).__name__} was created without a function to run; pass one, "
                f"e.g. `{type(self).__name__}(model)(*args)`, or use it as a context manager."
            )
        with self:
            return self.fn(*args, **kwargs)

    def process_message(self, msg: Message) -> None:
        """Act on ``msg`` before the default behaviour (innermost handler first)."""

    def postprocess_message(self, msg: Message) -> None:
        """Act on ``msg`` after the default behaviour (innermost handler first)."""
