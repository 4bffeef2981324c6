"""Undo a failed or interrupted fit: the posterior is left as the call found it.

A fit that raises (the potential fails, the user presses Ctrl-C) must not leave q half
trained and marked warm, or the next ``train()`` would skip the warm-up and the annealing
that a fit from the prior needs. :func:`restored_on_failure` snapshots the family's tensors,
the warm flag and the optimizer of a :class:`~sbi_vi.posteriors.single.SingleFit` before the
fit and puts them back when anything (``BaseException`` included) leaves the block; the
exception is re-raised.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["restored_on_failure"]

_STATE = ("warm", "optimizer", "scheduler", "optimizer_key")


@contextlib.contextmanager
def restored_on_failure(state: Any) -> Iterator[None]:
    """Restore q's tensors, ``warm`` and the optimizer of ``state`` if the block raises.

    Args:
        state: A :class:`~sbi_vi.posteriors.single.SingleFit` (its ``family`` is a module).
    """
    family = state.family
    tensors = list(itertools.chain(family.parameters(), family.buffers()))
    saved_tensors = [t.detach().clone() for t in tensors]
    saved_state = {name: getattr(state, name) for name in _STATE}
    saved_dicts = [
        copy.deepcopy(obj.state_dict()) if obj is not None else None
        for obj in (state.optimizer, state.scheduler)
    ]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for tensor, value in zip(tensors, saved_tensors, strict=True):
                tensor.copy_(value)
        for tensor in family.parameters():
            tensor.grad = None
        for name, value in saved_state.items():
            setattr(state, name, value)
        for obj, saved in zip((state.optimizer, state.scheduler), saved_dicts, strict=True):
            if obj is not None and saved is not None:
                obj.load_state_dict(saved)
        raise
