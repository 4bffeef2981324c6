"""``block``: hide sites from the handlers outside."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from sbi_vi.ppl.runtime import Message, Messenger

__all__ = ["BlockMessenger", "block"]


def _names(what: str, names: Collection[str]) -> frozenset[str]:
    if isinstance(names, str):
        raise TypeError(f"block: `{what}` takes a collection of site names, e.g. [{names!r}].")
    return frozenset(names)


class BlockMessenger(Messenger):
    """Stops the messages of hidden sites, so handlers outside (e.g. a ``trace``) miss them.

    The first of ``hide_fn``, ``hide``, ``expose_types``, ``expose`` that is given decides
    (as in NumPyro); with none, every site is hidden. Hidden param sites still read the
    ``param_store`` outside: the store is looked up, not reached through the stack.

    Args:
        fn: The model or guide.
        hide_fn: ``hide_fn(msg) -> bool``: whether to hide a site.
        hide: Names of sites to hide.
        expose: Names of the only sites to show.
        expose_types: Site types (``"sample"``, ``"param"``, ...) to show.

    Example:
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import sample
        >>> from sbi_vi.ppl.handlers import trace
        >>> def model():
        ...     sample("a", Normal(0.0, 1.0))
        ...     sample("b", Normal(0.0, 1.0))
        >>> list(trace(block(model, hide=["a"])).get_trace())
        ['b']
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        hide_fn: Callable[[Message], bool] | None = None,
        hide: Collection[str] | None = None,
        expose: Collection[str] | None = None,
        expose_types: Collection[str] | None = None,
    ) -> None:
        super().__init__(fn)
        if hide_fn is not None:
            self.hide_fn = hide_fn
        elif hide is not None:
            hidden = _names("hide", hide)
            self.hide_fn = lambda msg: msg.name in hidden
        elif expose_types is not None:
            shown = _names("expose_types", expose_types)
            self.hide_fn = lambda msg: msg.type not in shown
        elif expose is not None:
            shown = _names("expose", expose)
            self.hide_fn = lambda msg: msg.name not in shown
        else:
            self.hide_fn = lambda msg: True

    def process_message(self, msg: Message) -> None:
        if self.hide_fn(msg):
            msg.stop = True


def block(
    fn: Callable[..., Any] | None = None,
    hide_fn: Callable[[Message], bool] | None = None,
    hide: Collection[str] | None = None,
    expose: Collection[str] | None = None,
    expose_types: Collection[str] | None = None,
) -> BlockMessenger:
    """A :class:`BlockMessenger` (NumPyro's ``handlers.block``)."""
    return BlockMessenger(fn, hide_fn=hide_fn, hide=hide, expose=expose, expose_types=expose_types)
