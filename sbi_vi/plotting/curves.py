"""Training curves. matplotlib is imported inside the function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sbi_vi.plotting._utils import DEFAULT_COLORS, ArrayLike, to_numpy

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["moving_average", "plot_loss"]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` steps that skips NaN/inf values.

    The first ``window - 1`` entries average the steps available so far.

    Args:
        values: A 1-D array ``[T]``.
        window: Window length (a positive integer).

    Returns:
        Array ``[T]``; NaN where a window holds no finite value.

    Example:
        >>> moving_average(np.array([1.0, 3.0, np.nan, 5.0]), 2).tolist()
        [1.0, 2.0, 3.0, 5.0]
    """
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    sums = np.cumsum(filled)
    counts = np.cumsum(finite.astype(np.float64))
    sums[window:] = sums[window:] - sums[:-window]
    counts[window:] = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)


def plot_loss(
    losses: ArrayLike | Mapping[str, ArrayLike],
    *,
    ax: Axes | None = None,
    log_scale: bool = False,
    smoothing: int | None = None,
    xlabel: str = "iteration",
    ylabel: str = "loss",
) -> tuple[Figure, Axes]:
    """Plot a training curve (or several, e.g. training and validation loss).

    Args:
        losses: Loss per step, shape ``[T]`` (tensor, array or list), or a mapping from a
            curve name to such a sequence (curves may differ in length). NaN/inf steps
            are left as gaps.
        ax: Axes to draw into; default a new figure.
        log_scale: Logarithmic y axis; ``"symlog"`` (linear around zero) when some losses
            are ≤ 0, as negative-ELBO losses can be.
        smoothing: If given, a trailing moving average over this many steps is drawn
            over the raw curve (which is then faded).
        xlabel: x-axis label.
        ylabel: y-axis label.

    Returns:
        ``(fig, ax)``.

    Raises:
        ValueError: If a curve is not 1-D or empty, or ``smoothing`` is not a positive
            integer.
        TypeError: If a curve is not a tensor, array or sequence of numbers.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plot_loss({"train": [3.0, 2.0, 1.5], "val": [3.2, 2.4, 2.0]}, smoothing=2)
        >>> ax.get_ylabel()
        'loss'
        >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt

    if smoothing is not None and (
        isinstance(smoothing, bool) or not isinstance(smoothing, int | np.integer) or smoothing < 1
    ):
        raise ValueError(f"`smoothing` must be a positive integer or None, got {smoothing!r}.")
    if isinstance(losses, Mapping):
        curves = {str(k): to_numpy(f"losses[{k!r}]", v) for k, v in losses.items()}
    else:
        curves = {"": to_numpy("losses", losses)}
    if not curves:
        raise ValueError("`losses` must hold at least one curve, got an empty mapping.")
    for name, curve in curves.items():
        label = "losses" if not name else f"losses[{name!r}]"
        if curve.ndim != 1 or curve.size == 0:
            raise ValueError(f"`{label}` must be a non-empty 1-D sequence, got {curve.shape}.")

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.5))
    else:
        fig = ax.figure
    smooth = smoothing is not None and smoothing > 1
    for i, (name, curve) in enumerate(curves.items()):
        color = DEFAULT_COLORS[i % len(DEFAULT_COLORS)]
        steps = np.arange(curve.size)
        shown = np.where(np.isfinite(curve), curve, np.nan)
        ax.plot(
            steps,
            shown,
            color=color,
            alpha=0.3 if smooth else 1.0,
            lw=1.0,
            label=None if smooth else (name or None),
        )
        if smooth:
            ax.plot(
                steps,
                moving_average(curve, int(smoothing)),
                color=color,
                lw=1.8,
                label=name or None,
            )

    if log_scale:
        values = np.concatenate([c[np.isfinite(c)] for c in curves.values()])
        if values.size and np.all(values > 0):
            ax.set_yscale("log")
        else:
            nonzero = np.abs(values[values != 0])
            linthresh = float(np.percentile(nonzero, 10)) if nonzero.size else 1.0
            ax.set_yscale("symlog", linthresh=max(linthresh, 1e-12))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if any(curves):
        ax.legend(fontsize="small")
    return fig, ax
