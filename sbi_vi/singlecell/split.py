"""The train / validation / test split of ``train()``, with scvi-tools 1.5's rules.

- ``train_size=None`` means 0.9, and a last training minibatch of fewer than 3 cells has
  those cells moved to the validation set (with a warning) when there is one, or left out;
  an explicit ``train_size`` keeps them and warns instead.
- ``validation_size=None`` means the rest; ``train_size + validation_size < 1`` leaves a
  test set.
- With ``shuffle_set_split`` the cells are permuted by ``numpy.random.RandomState(seed)``
  and the validation cells come first, then the training cells, then the test cells (so the
  same seed gives scvi-tools' split); otherwise that order is the AnnData's.
- ``external_indexing=[train, validation, test]`` gives the three sets explicitly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DataSplit", "split_cells"]


@dataclass(frozen=True)
class DataSplit:
    """Cell positions of the three sets (int32 arrays below 2³¹ cells, else int64: an
    atlas's split costs 4 bytes per cell)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def _index_dtype(n_cells: int) -> np.dtype:
    """int32 for positions below 2³¹, else int64."""
    return np.dtype(np.int32 if n_cells <= np.iinfo(np.int32).max else np.int64)


def _check_sizes(train_size: float, validation_size: float | None) -> None:
    if isinstance(train_size, bool) or not isinstance(train_size, int | float):
        raise TypeError(f"`train_size` must be a number or None, got {train_size!r}.")
    if not 0.0 < float(train_size) <= 1.0:
        raise ValueError(f"`train_size` must lie in (0, 1], got {train_size!r}.")
    if validation_size is None:
        return
    if isinstance(validation_size, bool) or not isinstance(validation_size, int | float):
        raise TypeError(f"`validation_size` must be a number or None, got {validation_size!r}.")
    if not 0.0 <= float(validation_size) < 1.0:
        raise ValueError(f"`validation_size` must lie in [0, 1), got {validation_size!r}.")
    if float(train_size) + float(validation_size) > 1.0 + 1e-12:
        raise ValueError(
            f"`train_size + validation_size` must be at most 1, got {train_size} + "
            f"{validation_size}."
        )


def split_cells(
    n_cells: int,
    *,
    train_size: float | None = None,
    validation_size: float | None = None,
    shuffle_set_split: bool = True,
    batch_size: int = 128,
    drop_last: bool = False,
    external_indexing: Any = None,
    seed: int | None = None,
) -> DataSplit:
    """Split ``n_cells`` cells into training, validation and test sets.

    Args:
        n_cells: Number of cells.
        train_size: Fraction in (0, 1] (``None``: 0.9, moving a tiny last minibatch to
            validation).
        validation_size: Fraction in [0, 1) (``None``: the rest).
        shuffle_set_split: Permute the cells before splitting.
        batch_size: Training minibatch size (for the last-minibatch rule).
        drop_last: The last incomplete training minibatch is dropped (no move, no warning).
        external_indexing: ``[train, validation, test]`` arrays of positions (the last
            two optional); they must not overlap and must cover every cell.
        seed: Seed of the permutation (``None``: fresh randomness).

    Returns:
        The :class:`DataSplit`.

    Raises:
        ValueError: Sizes out of range, an empty training set, or external indices that
            are out of range, repeated, overlapping or incomplete.

    Example:
        >>> s = split_cells(100, train_size=0.8, seed=0)
        >>> len(s.train), len(s.validation), len(s.test)
        (80, 20, 0)
    """
    if external_indexing is not None:
        return _external_split(n_cells, external_indexing, batch_size, drop_last)
    train_size_is_none = not train_size
    train_size = 0.9 if train_size_is_none else train_size
    _check_sizes(train_size, validation_size)
    n_train = math.ceil(float(train_size) * n_cells)
    if validation_size is None:
        n_val = n_cells - n_train
    else:
        n_val = math.floor(n_cells * float(validation_size))
    if n_train == 0:
        raise ValueError(
            f"With {n_cells} cells, train_size={train_size} and validation_size="
            f"{validation_size}, the training set is empty."
        )
    remainder = n_train % batch_size
    if 0 < remainder < 3 and not drop_last:
        if not train_size_is_none:
            warnings.warn(
                f"The last training minibatch has only {remainder} cell(s); consider another "
                f"`batch_size` (now {batch_size}) or `datasplitter_kwargs={{'drop_last': True}}`.",
                UserWarning,
                stacklevel=3,
            )
        else:
            n_train -= remainder
            if n_val > 0:
                n_val += remainder
                warnings.warn(
                    f"{remainder} cell(s) moved from the training to the validation set so that "
                    "no training minibatch is that small; pass `train_size` to avoid it.",
                    UserWarning,
                    stacklevel=3,
                )
    order = np.arange(n_cells, dtype=_index_dtype(n_cells))
    if shuffle_set_split:  # the same permutation for every integer dtype
        order = np.random.RandomState(seed=seed).permutation(order)
    return DataSplit(
        train=order[n_val : n_val + n_train],
        validation=order[:n_val],
        test=order[n_val + n_train :],
    )


def _external_split(n_cells: int, sets: Any, batch_size: int, drop_last: bool) -> DataSplit:
    if not isinstance(sets, list | tuple) or len(sets) > 3:
        raise ValueError(
            "`datasplitter_kwargs['external_indexing']` must be a list of up to three arrays "
            f"[train, validation, test], got {type(sets).__name__}"
            + (f" of length {len(sets)}." if isinstance(sets, list | tuple) else ".")
        )
    names = ("train", "validation", "test")
    arrays = []
    for name, part in zip(names, [*sets, None, None, None], strict=False):
        array = np.zeros(0, dtype=np.int64) if part is None else np.asarray(part)
        if array.size and (array.ndim != 1 or not np.issubdtype(array.dtype, np.integer)):
            raise ValueError(
                f"`external_indexing` {name} set must be a 1-D array of integer positions, got "
                f"shape {array.shape} and dtype {array.dtype}."
            )
        array = array.astype(_index_dtype(n_cells)).reshape(-1)
        if array.size and (array.min() < 0 or array.max() >= n_cells):
            raise ValueError(
                f"`external_indexing` {name} set has positions outside [0, {n_cells}): "
                f"{array.min()}..{array.max()}."
            )
        if len(np.unique(array)) < len(array):
            raise ValueError(f"`external_indexing` {name} set has repeated positions.")
        arrays.append(array)
    for i in range(3):
        for j in range(i + 1, 3):
            common = np.intersect1d(arrays[i], arrays[j])
            if common.size:
                raise ValueError(
                    f"`external_indexing` {names[i]} and {names[j]} sets overlap "
                    f"({common.size} cells, e.g. {common[:5].tolist()})."
                )
    covered = sum(len(a) for a in arrays)
    if covered < n_cells:
        raise ValueError(
            f"`external_indexing` covers {covered} of {n_cells} cells; every cell must be in "
            "one of the train, validation and test sets."
        )
    if len(arrays[0]) == 0:
        raise ValueError("`external_indexing` has an empty training set.")
    remainder = len(arrays[0]) % batch_size
    if 0 < remainder < 3 and not drop_last:
        warnings.warn(
            f"The last training minibatch has only {remainder} cell(s); consider another "
            f"`batch_size` (now {batch_size}) or `datasplitter_kwargs={{'drop_last': True}}`.",
            UserWarning,
            stacklevel=3,
        )
    return DataSplit(*arrays)
