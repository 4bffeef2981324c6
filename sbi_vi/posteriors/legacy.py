"""Reading posteriors pickled before the fitted-state objects (sbi_vi ≤ this change).

Such a file holds the q of one observation and its training state as attributes of the
posterior (``_family``, ``_trained_on``, ``_warm``, ``_optimizer``, ``_scheduler``,
``_optimizer_key``) and the amortised q as ``_amortized``; :func:`upgrade_state` moves them
into a :class:`~sbi_vi.posteriors.single.SingleFit` and, when there is one, an
:class:`~sbi_vi.posteriors.amortized.AmortizedFit`.
"""

from __future__ import annotations

from typing import Any

from sbi_vi.posteriors.amortized import AmortizedFit
from sbi_vi.posteriors.single import SingleFit

__all__ = ["upgrade_state"]

_OLD_SINGLE = ("_trained_on", "_optimizer", "_scheduler", "_optimizer_key")


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """The ``__dict__`` of a posterior, in today's layout (a new-layout dict is returned as is).

    Args:
        state: The unpickled ``__dict__``.
    """
    if "_single" in state or "_family" not in state:
        return state
    state = dict(state)
    single = SingleFit(state.pop("_family"), warm=bool(state.pop("_warm", False)))
    for name in _OLD_SINGLE:
        setattr(single, name[1:], state.pop(name, None))
    amortized = state.pop("_amortized", None)
    state["_single"] = single
    state["_fitted"] = single if amortized is None else AmortizedFit(amortized)
    return state
