"""Plots of diagnostics: Pareto k-hat per observation. matplotlib is imported lazily."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sbi_vi.plotting._utils import ArrayLike, to_numpy

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sbi_vi.diagnostics.psis import PSISResult

__all__ = ["plot_khat"]

_GOOD, _OK, _BAD = "tab:green", "tab:orange", "tab:red"


def plot_khat(
    khat: ArrayLike | PSISResult,
    *,
    ax: Axes | None = None,
    n_particles: int | None = None,
    labels: Sequence[str] | None = None,
    xlabel: str = "observation",
) -> tuple[Figure, Axes]:
    """Bar chart of Pareto k-hat per observation, with the 0.5 and 0.7 thresholds.

    Bars are green for k̂ ≤ 0.5, orange up to the reliability threshold and red above it;
    infinite k̂ (no usable weights) is drawn as a hatched red bar to the top.

    Args:
        khat: k̂ values, shape ``[B]`` (or one value), or a :class:`PSISResult` of a batch.
        ax: Axes to draw into; default a new figure.
        n_particles: Number of particles behind k̂; when given (or taken from a
            ``PSISResult``) and below ~2,200, the tighter bound ``1 − 1/log10(S)`` is
            drawn and used for the colours.
        labels: Tick labels, one per observation.
        xlabel: x-axis label.

    Returns:
        ``(fig, ax)``.

    Raises:
        ValueError: If ``khat`` is not 0-D or 1-D, empty or NaN, or ``labels`` has the
            wrong length.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plot_khat([0.2, 0.6, 0.9, float("inf")])
        >>> len(ax.patches)
        4
        >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt

    from sbi_vi.diagnostics.psis import GOOD_KHAT, MAX_KHAT, khat_threshold

    if hasattr(khat, "khat") and hasattr(khat, "n_particles"):
        if n_particles is None:
            n_particles = khat.n_particles
        khat = khat.khat
    values = to_numpy("khat", khat)
    if values.ndim == 0:
        values = values.reshape(1)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`khat` must be one value or a 1-D batch, got shape {values.shape}.")
    if np.isnan(values).any():
        raise ValueError(f"`khat` must not be NaN, got {int(np.isnan(values).sum())} NaN.")
    if labels is not None and len(labels) != values.size:
        raise ValueError(f"`labels` must have {values.size} entries, got {len(labels)}.")
    threshold = MAX_KHAT if n_particles is None else khat_threshold(int(n_particles))

    new_figure = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(float(np.clip(3.0 + 0.25 * values.size, 5.0, 14.0)), 3.2))
    else:
        fig = ax.figure
    finite = values[np.isfinite(values)]
    top = max(1.0, float(finite.max()) + 0.1) if finite.size else 1.0
    bottom = min(0.0, float(finite.min()) - 0.05) if finite.size else 0.0
    heights = np.where(np.isfinite(values), values, top)
    colors = np.where(values <= GOOD_KHAT, _GOOD, np.where(values <= threshold, _OK, _BAD))
    positions = np.arange(values.size)
    bars = ax.bar(positions, heights, color=colors, width=0.8)
    for bar, value in zip(bars, values):
        if np.isinf(value):
            bar.set_hatch("//")
            bar.set_edgecolor("black")

    ax.axhline(GOOD_KHAT, color="0.4", ls="--", lw=1, label="0.5")
    ax.axhline(MAX_KHAT, color=_BAD, ls="--", lw=1, label="0.7")
    if threshold < MAX_KHAT:
        ax.axhline(
            threshold, color=_BAD, ls=":", lw=1, label=f"{threshold:.2f} (S = {n_particles})"
        )
    ax.set_ylim(bottom, top)
    ax.set_xlim(-0.6, values.size - 0.4)
    if labels is not None:
        ax.set_xticks(positions, labels=list(labels), rotation=90 if values.size > 10 else 0)
    elif values.size <= 30:
        ax.set_xticks(positions)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(r"Pareto $\hat{k}$")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if new_figure:
        fig.tight_layout()
    return fig, ax
