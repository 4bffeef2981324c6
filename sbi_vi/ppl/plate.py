"""``plate``: conditionally independent batch dimensions, with optional subsampling."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from sbi_vi._checks import check_positive_int
from sbi_vi.ppl.runtime import _STATE, Message, Messenger, PlateFrame, apply_stack

__all__ = ["Plate", "plate"]

_FRAMED = frozenset({"param", "plate", "deterministic", "subsample"})


def _subsample_indices(size: int, subsample_size: int) -> Tensor:
    """``subsample_size`` distinct indices of ``range(size)`` in random order (all if equal).

    Drawn with the global torch RNG, so ``seed`` makes them reproducible. A small subsample
    of a large plate is drawn in O(subsample_size log subsample_size), without a full
    permutation: iid draws, their distinct values, and a random subset of those of the
    right size (uniform over subsets by symmetry); otherwise it is the head of
    ``torch.randperm(size)``, which is cheaper up to ~65k (a permutation of 10,000 costs
    ~6 µs on CPU, the iid route ~50 µs).
    """
    if subsample_size >= size:
        return _full_indices(size)
    if size <= 65_536 or size < 16 * subsample_size:
        return torch.randperm(size)[:subsample_size]
    extra = 2 * subsample_size * subsample_size // size + 16
    while True:
        distinct = torch.unique(torch.randint(size, (subsample_size + extra,)))
        if distinct.numel() >= subsample_size:
            return distinct[torch.randperm(distinct.numel())[:subsample_size]]
        extra *= 2


_TARGETS: dict[tuple[tuple[int, ...], tuple[PlateFrame, ...]], tuple[int, ...]] = {}
"""Broadcast batch shapes by (distribution batch shape, enclosing plates): a pure function."""


_FULL: dict[int, Tensor] = {}


def _full_indices(size: int) -> Tensor:
    """``torch.arange(size)``, one cached tensor per size (a model builds its plates anew
    every step; the indices of a plate that is not subsampled never change)."""
    indices = _FULL.get(size)
    if indices is None:
        if len(_FULL) >= 64:
            _FULL.clear()
        indices = _FULL[size] = torch.arange(size)
    return indices


@functools.lru_cache(maxsize=1024)
def _frame(name: str, dim: int, size: int, subsample_size: int) -> PlateFrame:
    return PlateFrame(name, dim, size, subsample_size)


class Plate(Messenger):
    """A plate: sites inside are conditionally independent along one batch dimension.

    Entering the plate gives its indices, shape ``[n]`` (``n`` = ``subsample_size``, or
    ``size`` without subsampling). Inside, every sample site's distribution is expanded to
    the shape of the enclosing plates (``n`` at the plate's dim, as in NumPyro), its log
    density is multiplied by ``size / n`` (``Message.scale``), and its message records the
    plate in ``cond_indep_stack``. A ``param`` with ``event_dim`` and a ``subsample`` call
    inside a subsampled plate are indexed by the plate's indices along its dim.

    The indices are drawn when the plate is created, through a ``"plate"`` message, so a
    ``replay`` or ``substitute`` handler can supply them (how a guide's minibatch reaches
    the model). Their number must be ``subsample_size`` unless the handler also sets the
    message's ``args`` to ``(size, k)`` for ``k`` indices (inference does this to run a
    model on chunks of a plate). Re-entering the same plate object reuses them; two plate
    objects of one name in one run draw their own indices (a trace records the first).
    Plates work without any other handler: ``with plate("N", 10) as idx:`` broadcasts and
    gives ``arange(10)``.

    Args:
        name: Name of the plate (a site name; shared by plates that must agree).
        size: Full size ``N``.
        subsample_size: Size ``n`` of the minibatch of indices; ``None`` for all of them.
        dim: Negative batch dim of the plate. ``None`` allocates the rightmost dim that no
            enclosing plate uses.

    Raises:
        ValueError: On a bad size, a non-negative ``dim``, or a ``dim`` an enclosing plate
            already uses.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import plate, sample
        >>> with plate("a", 3), plate("b", 2) as idx:
        ...     x = sample("x", Normal(0.0, 1.0))
        >>> tuple(x.shape), idx.tolist()
        ((2, 3), [0, 1])
    """

    def __init__(
        self, name: str, size: int, subsample_size: int | None = None, dim: int | None = None
    ) -> None:
        super().__init__()
        if type(name) is not str:
            raise TypeError(f"plate name must be a str, got {type(name).__name__}.")
        if type(size) is not int or size <= 0:
            size = check_positive_int(f"plate {name!r}: size", size)
        if subsample_size is not None:
            if type(subsample_size) is not int or subsample_size <= 0:
                subsample_size = check_positive_int(
                    f"plate {name!r}: subsample_size", subsample_size
                )
            if subsample_size > size:
                raise ValueError(
                    f"plate {name!r}: subsample_size ({subsample_size}) must not exceed size "
                    f"({size})."
                )
        if dim is not None and (type(dim) is not int or dim >= 0):
            raise ValueError(
                f"plate {name!r}: dim must be a negative int (counted from the right of the "
                f"batch shape) or None, got {dim!r}."
            )
        self.name = name
        self.size = size
        self.indices = self._draw_indices(name, size, subsample_size)
        self.subsample_size = int(self.indices.shape[0])
        self.dim = self._allocate_dim(dim)
        self.frame = _frame(name, self.dim, size, self.subsample_size)
        self._subsampled = self.subsample_size < size
        self._scale = size / self.subsample_size

    @staticmethod
    def _draw_indices(name: str, size: int, subsample_size: int | None) -> Tensor:
        n = size if subsample_size is None else subsample_size
        if not _STATE.stack:
            return _subsample_indices(size, n)
        msg = apply_stack(Message(name, "plate", _subsample_indices, args=(size, n)))
        indices = msg.value
        if not isinstance(indices, Tensor) or indices.dim() != 1 or indices.is_floating_point():
            raise ValueError(
                f"plate {name!r}: a handler supplied indices that are not a 1-D integer "
                f"tensor ({indices!r:.80}); substitute or replay the plate with its indices."
            )
        # A handler that deliberately supplies another number of indices (e.g. chunks of
        # the full plate for prediction) says so by setting ``msg.args = (size, k)``.
        if indices.shape[0] > size or (
            subsample_size is not None and indices.shape[0] != msg.args[1]
        ):
            raise ValueError(
                f"plate {name!r}: a handler supplied {indices.shape[0]} indices, but the plate "
                f"has size {size} and subsample_size {subsample_size}; the model and the "
                "guide (or the replayed trace) must declare the plate alike."
            )
        return indices

    def _allocate_dim(self, dim: int | None) -> int:
        occupied = {h.dim: h.name for h in _STATE.stack if isinstance(h, Plate)}
        if dim is None:
            dim = -1
            while dim in occupied:
                dim -= 1
        elif dim in occupied:
            self._collision(dim, occupied[dim])
        return dim

    def _collision(self, dim: int, other: str) -> None:
        raise ValueError(
            f"plate {self.name!r} uses dim {dim}, which the enclosing plate {other!r} already "
            "uses; give nested plates different dims, or leave `dim=None` to allocate a free "
            "one."
        )

    def __enter__(self) -> Tensor:  # type: ignore[override]
        for handler in _STATE.stack:
            if isinstance(handler, Plate) and handler.dim == self.dim:
                self._collision(self.dim, handler.name)
        super().__enter__()
        return self.indices

    def process_message(self, msg: Message) -> None:
        kind = msg.type
        if kind == "sample":
            frames = msg.cond_indep_stack = (*msg.cond_indep_stack, self.frame)
            self._broadcast(msg, frames)
            if self._subsampled:
                msg.scale = msg.scale * self._scale
        elif kind in _FRAMED:
            msg.cond_indep_stack = (*msg.cond_indep_stack, self.frame)

    def _broadcast(self, msg: Message, frames: tuple[PlateFrame, ...]) -> None:
        """Expand the site's distribution to the shape of the enclosing plates."""
        fn = msg.fn
        batch = fn.batch_shape
        sample_shape = msg.kwargs["sample_shape"]
        if sample_shape:  # like NumPyro: sample_shape becomes part of the batch shape
            batch = (*sample_shape, *batch)
            msg.kwargs["sample_shape"] = ()
        else:
            n = len(batch)
            for f in frames:
                if n < -f.dim or batch[f.dim] != f.subsample_size:
                    break
            else:
                return  # already the plates' shape: the common case costs one pass
        key = (tuple(batch), frames)
        target = _TARGETS.get(key)
        if target is None:
            target = self._broadcast_target(msg, key[0], frames)
            if len(_TARGETS) >= 4096:
                _TARGETS.clear()
            _TARGETS[key] = target
        if target != tuple(fn.batch_shape):
            try:
                msg.fn = fn.expand(torch.Size(target))
            except NotImplementedError as err:
                raise TypeError(
                    f"sample site {msg.name!r}: {type(fn).__name__} does not implement "
                    f"`expand`, which plates need to broadcast it to batch shape "
                    f"{target}; implement `expand` or give it that batch shape."
                ) from err

    def _broadcast_target(
        self, msg: Message, batch: tuple[int, ...], frames: tuple[PlateFrame, ...]
    ) -> tuple[int, ...]:
        """The batch shape of ``batch`` broadcast with the plates ``frames`` (or an error)."""
        length = max(-frame.dim for frame in frames)
        expected = [1] * length
        for frame in frames:
            expected[frame.dim] = frame.subsample_size
        target = list(batch)
        for dim in range(-min(length, len(batch)), 0):
            want, have = expected[dim], target[dim]
            if want != have and want != 1:
                if have != 1:
                    self._broadcast_error(msg, batch, frames, dim)
                target[dim] = want
        return tuple(expected[: max(length - len(batch), 0)] + target)

    @staticmethod
    def _broadcast_error(
        msg: Message, batch: tuple[int, ...], frames: tuple[PlateFrame, ...], dim: int
    ) -> None:
        frame = next(f for f in frames if f.dim == dim)
        raise ValueError(
            f"sample site {msg.name!r}: distribution batch shape {batch} does not broadcast "
            f"with plate {frame.name!r} (size {frame.subsample_size} at dim {dim}, where the "
            f"batch shape has {batch[dim]}). Give the distribution size {frame.subsample_size} "
            "or 1 at the plate's dim, or move trailing dims into the event with "
            "`torch.distributions.Independent(fn, k)`."
        )

    def postprocess_message(self, msg: Message) -> None:
        if msg.type not in ("param", "subsample"):
            return
        event_dim = msg.kwargs.get("event_dim")
        if event_dim is None:
            return
        dim = self.dim - event_dim
        value = msg.value
        shape = value.shape
        if len(shape) < -dim or shape[dim] == 1:
            return
        if shape[dim] != self.size:
            what = f"param({msg.name!r}, ...)" if msg.type == "param" else "subsample(...)"
            raise ValueError(
                f"inside plate {self.name!r} (size {self.size}, dim {self.dim}), {what} with "
                f"event_dim={event_dim} has shape {tuple(shape)}: size {shape[dim]} at dim "
                f"{dim} should be the full plate size {self.size} (or 1)."
            )
        if self._subsampled:
            indices = self.indices
            if indices.device != value.device:
                indices = indices.to(value.device)
            msg.value = value.index_select(dim, indices)


def plate(
    name: str, size: int, subsample_size: int | None = None, dim: int | None = None
) -> Plate:
    """A :class:`Plate` (NumPyro's ``plate(name, size, subsample_size=None, dim=None)``)."""
    return Plate(name, size, subsample_size, dim)
