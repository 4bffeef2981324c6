"""``param_store``: the handler that supplies a :class:`~sbi_vi.ppl.ParamStore` to params."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sbi_vi.ppl.params import ParamStore
from sbi_vi.ppl.runtime import Messenger

__all__ = ["ParamStoreMessenger", "param_store"]


class ParamStoreMessenger(Messenger):
    """Makes ``param`` sites inside read (and create) their values in ``store``.

    The innermost ``param_store`` wins. A ``substitute`` of a param site inside it takes
    precedence over the store; a ``block`` does not cut sites off the store.

    Args:
        fn: The model or guide.
        store: The parameter store.

    Example:
        >>> import torch
        >>> from sbi_vi.ppl import ParamStore, param
        >>> store = ParamStore()
        >>> _ = param_store(lambda: param("w", torch.zeros(3)), store=store)()
        >>> list(store)
        ['w']
    """

    def __init__(
        self, fn: Callable[..., Any] | None = None, store: ParamStore | None = None
    ) -> None:
        super().__init__(fn)
        if not isinstance(store, ParamStore):
            raise TypeError(
                f"param_store needs `store=`, a ParamStore; got {type(store).__name__}. Create "
                "one with `ParamStore()` and keep it with the model or guide it belongs to."
            )
        self.store = store
        self.supplied_store = store


def param_store(
    fn: Callable[..., Any] | None = None, store: ParamStore | None = None
) -> ParamStoreMessenger:
    """A :class:`ParamStoreMessenger`: run ``fn`` with its parameters in ``store``."""
    return ParamStoreMessenger(fn, store)
