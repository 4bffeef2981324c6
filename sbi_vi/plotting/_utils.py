"""Shared helpers of the plotting functions: array conversion, limits, colours.

Nothing here imports matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ArrayLike = Any  # a torch tensor, numpy array or nested sequence of numbers

DEFAULT_COLORS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
)
REFERENCE_COLOR = "black"
POINTS_COLOR = "tab:red"


def to_numpy(name: str, value: ArrayLike) -> np.ndarray:
    """Convert a tensor / array / sequence to a float64 numpy array, naming ``name`` on error."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor without importing
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`{name}` must be a tensor or array of numbers, got {type(value).__name__}."
        ) from err


def as_sample_sets(name: str, samples: ArrayLike | Sequence[ArrayLike]) -> list[np.ndarray]:
    """Turn one ``[N, D]`` set (or ``[N]`` for D = 1) or a list of sets into 2-D arrays."""
    if isinstance(samples, list | tuple) and samples and _is_array(samples[0]):
        sets = [to_numpy(f"{name}[{i}]", s) for i, s in enumerate(samples)]
    else:
        sets = [to_numpy(name, samples)]
    out = []
    for i, s in enumerate(sets):
        label = name if len(sets) == 1 else f"{name}[{i}]"
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
            raise ValueError(f"`{label}` must have shape [n, D] with n, D >= 1, got {s.shape}.")
        out.append(s)
    dims = {s.shape[1] for s in out}
    if len(dims) > 1:
        raise ValueError(f"every set in `{name}` must have the same D, got D in {sorted(dims)}.")
    return out


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") or (
        isinstance(value, list | tuple) and bool(value) and isinstance(value[0], list | tuple)
    )


def as_points(points: ArrayLike | None, n_dims: int) -> np.ndarray:
    """``points`` of shape ``[D]`` or ``[K, D]`` as ``[K, D]`` (``[0, D]`` for None)."""
    if points is None:
        return np.empty((0, n_dims))
    array = to_numpy("points", points)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != n_dims:
        raise ValueError(
            f"`points` must have shape [D] or [K, D] with D = {n_dims}, got {array.shape}."
        )
    return array


def check_dims(name: str, sets: Sequence[np.ndarray], n_dims: int) -> None:
    """Check that every array in ``sets`` has ``n_dims`` columns."""
    for s in sets:
        if s.shape[1] != n_dims:
            raise ValueError(
                f"`{name}` must have D = {n_dims} dimensions like `samples`, got {s.shape}."
            )


def resolve_subset(subset: Sequence[int] | None, n_dims: int) -> list[int]:
    """Dimensions to plot, validated."""
    if subset is None:
        return list(range(n_dims))
    dims = [int(d) for d in subset]
    bad = [d for d in dims if not 0 <= d < n_dims]
    if bad or not dims:
        raise ValueError(f"`subset` must list dimensions in [0, {n_dims}), got {list(subset)}.")
    return dims


def resolve_labels(labels: Sequence[str] | None, dims: Sequence[int], n_dims: int) -> list[str]:
    """Axis labels for ``dims``: user labels (one per dimension of the data) or θ_i."""
    if labels is None:
        return [rf"$\theta_{{{d + 1}}}$" for d in dims]
    labels = list(labels)
    if len(labels) == n_dims:
        return [labels[d] for d in dims]
    if len(labels) == len(dims):
        return labels
    raise ValueError(
        f"`labels` must give one label per dimension ({n_dims}) or per plotted dimension "
        f"({len(dims)}), got {len(labels)}."
    )


def resolve_limits(
    limits: ArrayLike | None,
    arrays: Sequence[np.ndarray],
    dims: Sequence[int],
    n_dims: int,
) -> np.ndarray:
    """``[len(dims), 2]`` axis limits: given ones, or the data range padded by 5 %."""
    if limits is not None:
        lim = to_numpy("limits", limits)
        if lim.shape == (2,):
            lim = np.tile(lim, (len(dims), 1))
        elif lim.shape == (n_dims, 2):
            lim = lim[list(dims)]
        elif lim.shape != (len(dims), 2):
            raise ValueError(
                f"`limits` must be (low, high) or one pair per dimension, shape ({n_dims}, 2), "
                f"got shape {lim.shape}."
            )
        if not np.all(np.isfinite(lim)) or np.any(lim[:, 0] >= lim[:, 1]):
            raise ValueError(f"`limits` must be finite pairs with low < high, got {lim.tolist()}.")
        return lim
    stacked = np.concatenate([a[:, dims] for a in arrays if a.size], axis=0)
    with np.errstate(invalid="ignore"):
        low = np.nanmin(np.where(np.isfinite(stacked), stacked, np.nan), axis=0)
        high = np.nanmax(np.where(np.isfinite(stacked), stacked, np.nan), axis=0)
    low = np.where(np.isfinite(low), low, -1.0)
    high = np.where(np.isfinite(high), high, 1.0)
    span = high - low
    pad = np.where(span > 0, 0.05 * span, 0.5 * np.maximum(np.abs(low), 1.0))
    return np.stack([low - pad, high + pad], axis=1)


def resolve_colors(colors: Sequence[str] | str | None, n_sets: int) -> list[str]:
    """One colour per sample set."""
    if colors is None:
        return [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(n_sets)]
    if isinstance(colors, str):
        colors = [colors]
    colors = list(colors)
    if len(colors) < n_sets:
        raise ValueError(f"`colors` must give one colour per sample set ({n_sets}), got {colors}.")
    return colors[:n_sets]


def finite_rows(array: np.ndarray) -> np.ndarray:
    """Rows of ``array`` without NaN/inf (plots skip them)."""
    return array[np.all(np.isfinite(array), axis=1)]
