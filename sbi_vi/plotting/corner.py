"""Corner plots (``pairplot``) and rows of 1-D marginals (``marginal_plot``).

matplotlib is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from sbi_vi.plotting._utils import (
    POINTS_COLOR,
    REFERENCE_COLOR,
    ArrayLike,
    as_points,
    as_sample_sets,
    check_dims,
    finite_rows,
    resolve_colors,
    resolve_labels,
    resolve_limits,
    resolve_subset,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["marginal_plot", "pairplot"]

OffDiag = Literal["scatter", "hist2d", "contour"]
Diag = Literal["hist", "kde"]

_OFFDIAG = ("scatter", "hist2d", "contour")
_DIAG = ("hist", "kde")
_CONTOUR_MASSES = (0.68, 0.95)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    return int(value)


def _draw_diag(
    ax: Axes,
    x: np.ndarray,
    lim: np.ndarray,
    *,
    kind: str,
    bins: int,
    color: str,
    filled: bool,
) -> None:
    """One 1-D marginal: a density histogram or a Gaussian KDE."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return
    if kind == "kde" and x.size > 1 and np.ptp(x) > 0:
        from scipy.stats import gaussian_kde

        grid = np.linspace(lim[0], lim[1], 256)
        density = gaussian_kde(x)(grid)
        ax.plot(grid, density, color=color, lw=1.5)
        if filled:
            ax.fill_between(grid, density, color=color, alpha=0.25, lw=0)
        return
    edges = np.linspace(lim[0], lim[1], bins + 1)
    if filled:
        ax.hist(x, bins=edges, density=True, histtype="stepfilled", color=color, alpha=0.3)
    ax.hist(x, bins=edges, density=True, histtype="step", color=color, lw=1.5)


def _fill_diag_panel(
    ax: Axes,
    d: int,
    lim: np.ndarray,
    sets: Sequence[np.ndarray],
    colors: Sequence[str],
    reference: np.ndarray | None,
    points: np.ndarray,
    kind: str,
    bins: int,
) -> None:
    """Marginals of dimension ``d``: reference outline, filled sets, vertical point lines."""
    if reference is not None:
        _draw_diag(
            ax, reference[:, d], lim, kind=kind, bins=bins, color=REFERENCE_COLOR, filled=False
        )
    for s, c in zip(sets, colors):
        _draw_diag(ax, s[:, d], lim, kind=kind, bins=bins, color=c, filled=True)
    for p in points:
        ax.axvline(p[d], color=POINTS_COLOR, lw=1.5)
    ax.set_xlim(*lim)
    ax.set_ylim(bottom=0)
    ax.set_yticks([])


def _hdr_levels(density: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Density thresholds enclosing the given probability masses (highest-density regions)."""
    flat = np.sort(density.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return []
    cumulative = np.cumsum(flat) / total
    levels = {float(flat[min(np.searchsorted(cumulative, m), flat.size - 1)]) for m in masses}
    return sorted(level for level in levels if level > 0)


def _draw_offdiag(
    ax: Axes,
    xy: np.ndarray,
    lim_x: np.ndarray,
    lim_y: np.ndarray,
    *,
    kind: str,
    bins: int,
    color: str,
    max_scatter: int,
    rng: np.random.Generator,
) -> None:
    """One pairwise panel: scatter, 2-D histogram or HDR contours of ``xy`` ``[n, 2]``."""
    xy = finite_rows(xy)
    if xy.shape[0] == 0:
        return
    if kind == "scatter":
        if xy.shape[0] > max_scatter:
            xy = xy[rng.choice(xy.shape[0], size=max_scatter, replace=False)]
        size = 4.0 if xy.shape[0] < 1000 else 1.0
        ax.scatter(xy[:, 0], xy[:, 1], s=size, color=color, alpha=0.4, lw=0, rasterized=True)
        return
    x_edges = np.linspace(lim_x[0], lim_x[1], bins + 1)
    y_edges = np.linspace(lim_y[0], lim_y[1], bins + 1)
    hist, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=(x_edges, y_edges))
    if kind == "hist2d":
        from matplotlib.colors import LinearSegmentedColormap

        cmap = LinearSegmentedColormap.from_list("_sbi_vi_hist2d", ["white", color])
        masked = np.ma.masked_equal(hist.T, 0)
        ax.pcolormesh(x_edges, y_edges, masked, cmap=cmap, rasterized=True)
        return
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(hist, sigma=max(bins / 50.0, 0.5))
    levels = _hdr_levels(smooth, _CONTOUR_MASSES)
    if not levels or smooth.max() <= levels[0]:
        return
    x_mid = 0.5 * (x_edges[:-1] + x_edges[1:])
    y_mid = 0.5 * (y_edges[:-1] + y_edges[1:])
    ax.contour(x_mid, y_mid, smooth.T, levels=levels, colors=[color], linewidths=1.2)


def _legend_handles(
    colors: Sequence[str],
    sample_labels: Sequence[str] | None,
    has_reference: bool,
    reference_label: str,
    has_points: bool,
) -> list[Any]:
    from matplotlib.lines import Line2D

    handles: list[Any] = []
    if sample_labels is not None:
        handles += [Line2D([], [], color=c, lw=2, label=n) for c, n in zip(colors, sample_labels)]
    elif has_reference:
        handles.append(Line2D([], [], color=colors[0], lw=2, label="samples"))
    if has_reference:
        handles.append(Line2D([], [], color=REFERENCE_COLOR, lw=2, label=reference_label))
    if has_points and handles:
        handles.append(
            Line2D([], [], color=POINTS_COLOR, marker="x", ls="none", mew=2, label="points")
        )
    return handles


def _prepare(
    samples: ArrayLike | Sequence[ArrayLike],
    reference: ArrayLike | None,
    points: ArrayLike | None,
    subset: Sequence[int] | None,
    labels: Sequence[str] | None,
    limits: ArrayLike | None,
    colors: Sequence[str] | str | None,
    sample_labels: Sequence[str] | None,
) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray, list[int], list[str], Any, list[str]]:
    sets = as_sample_sets("samples", samples)
    n_dims = sets[0].shape[1]
    ref = None
    if reference is not None:
        ref = as_sample_sets("reference", reference)[0]
        check_dims("reference", [ref], n_dims)
    pts = as_points(points, n_dims)
    dims = resolve_subset(subset, n_dims)
    names = resolve_labels(labels, dims, n_dims)
    arrays = [*sets, *([] if ref is None else [ref]), pts]
    lims = resolve_limits(limits, arrays, dims, n_dims)
    cols = resolve_colors(colors, len(sets))
    if sample_labels is not None and len(sample_labels) != len(sets):
        raise ValueError(
            f"`sample_labels` must name each of the {len(sets)} sample set(s), "
            f"got {len(sample_labels)}."
        )
    return sets, ref, pts, dims, names, lims, cols


def pairplot(
    samples: ArrayLike | Sequence[ArrayLike],
    reference: ArrayLike | None = None,
    *,
    labels: Sequence[str] | None = None,
    limits: ArrayLike | None = None,
    points: ArrayLike | None = None,
    subset: Sequence[int] | None = None,
    bins: int = 50,
    figsize: tuple[float, float] | None = None,
    colors: Sequence[str] | str | None = None,
    upper: OffDiag | None = "scatter",
    lower: OffDiag | None = None,
    diag: Diag = "hist",
    sample_labels: Sequence[str] | None = None,
    reference_label: str = "reference",
    max_scatter: int = 5000,
    seed: int = 0,
) -> tuple[Figure, np.ndarray]:
    """Corner plot: 1-D marginals on the diagonal, pairwise marginals off it.

    One or several sample sets are drawn in their own colours, an optional reference set
    (e.g. samples of the true posterior) in black, and optional ``points`` (e.g. the true
    θ) as red crosses and lines.

    Args:
        samples: Samples of shape ``[N, D]`` (``[N]`` when D = 1), or a list of such sets
            with the same D.
        reference: Reference samples ``[M, D]`` drawn in black under the samples.
        labels: Axis labels, one per dimension (default θ₁ … θ_D).
        limits: Axis limits: one ``(low, high)`` for all dimensions, or one pair per
            dimension ``[D, 2]``; default: the range of all data padded by 5 %.
        points: Points to mark, shape ``[D]`` or ``[K, D]``.
        subset: Dimensions to plot (default all), e.g. ``[0, 3]``.
        bins: Number of bins of the histograms (also the grid of ``hist2d``/``contour``).
        figsize: Figure size in inches; default grows with the number of dimensions.
        colors: One matplotlib colour per sample set.
        upper: What to draw above the diagonal: ``"scatter"``, ``"hist2d"`` (the first
            set as a 2-D histogram, the others and the reference as contours),
            ``"contour"`` (68 % and 95 % highest-density contours) or None (blank).
        lower: The same below the diagonal (default None: blank).
        diag: ``"hist"`` (density histograms) or ``"kde"`` (Gaussian kernel density).
        sample_labels: Legend names of the sample sets; a legend is drawn when these
            are given or a reference is present.
        reference_label: Legend name of the reference.
        max_scatter: Largest number of points a scatter panel draws per set (a seeded
            random subset beyond that).
        seed: Seed of that subset.

    Returns:
        ``(fig, axes)``: the figure and a ``[K, K]`` array of axes, K the number of plotted
        dimensions; panels of a blank triangle are switched off.

    Raises:
        ValueError: On inconsistent shapes, unknown options or invalid limits.
        TypeError: If an input is not a tensor or array of numbers.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> import torch
        >>> theta = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
        >>> fig, axes = pairplot(theta, points=torch.zeros(3), labels=["a", "b", "c"])
        >>> axes.shape
        (3, 3)
        >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt

    for name, kind in (("upper", upper), ("lower", lower)):
        if kind is not None and kind not in _OFFDIAG:
            raise ValueError(f"`{name}` must be one of {_OFFDIAG} or None, got {kind!r}.")
    if diag not in _DIAG:
        raise ValueError(f"`diag` must be one of {_DIAG}, got {diag!r}.")
    bins = _check_int("bins", bins, 1)
    max_scatter = _check_int("max_scatter", max_scatter, 1)
    sets, ref, pts, dims, names, lims, cols = _prepare(
        samples, reference, points, subset, labels, limits, colors, sample_labels
    )
    k = len(dims)
    if figsize is None:
        side = float(np.clip(2.2 * k, 3.0, 22.0))
        figsize = (side, side)
    fig, axes = plt.subplots(k, k, figsize=figsize, squeeze=False)
    rng = np.random.default_rng(seed)
    tick_size = max(5.0, 9.0 - 0.3 * k)

    for row in range(k):
        for col in range(k):
            ax = axes[row, col]
            ax.tick_params(labelsize=tick_size)
            kind = None if row == col else (upper if row < col else lower)
            if row != col and kind is None:
                ax.set_axis_off()
                continue
            if row == col:
                _fill_diag_panel(ax, dims[row], lims[row], sets, cols, ref, pts, diag, bins)
                continue
            dx, dy = dims[col], dims[row]
            common = {"bins": bins, "max_scatter": max_scatter, "rng": rng}
            if ref is not None:
                ref_kind = "contour" if kind == "hist2d" else kind
                _draw_offdiag(
                    ax,
                    ref[:, [dx, dy]],
                    lims[col],
                    lims[row],
                    kind=ref_kind,
                    color=REFERENCE_COLOR,
                    **common,
                )
            for i, (s, c) in enumerate(zip(sets, cols)):
                set_kind = "contour" if kind == "hist2d" and i > 0 else kind
                _draw_offdiag(
                    ax, s[:, [dx, dy]], lims[col], lims[row], kind=set_kind, color=c, **common
                )
            if pts.size:
                ax.plot(
                    pts[:, dx],
                    pts[:, dy],
                    ls="none",
                    marker="x",
                    ms=7,
                    mew=2,
                    color=POINTS_COLOR,
                )
            ax.set_xlim(*lims[col])
            ax.set_ylim(*lims[row])

    _label_grid(axes, names, has_upper=upper is not None, has_lower=lower is not None)
    handles = _legend_handles(cols, sample_labels, ref is not None, reference_label, pts.size > 0)
    fig.subplots_adjust(wspace=0.08, hspace=0.08)
    if handles:
        if k == 1:
            axes[0, 0].legend(handles=handles, fontsize="small")
        elif upper is not None and lower is not None:  # no blank triangle: legend on top
            fig.subplots_adjust(top=0.93)
            fig.legend(
                handles=handles,
                loc="upper center",
                ncol=len(handles),
                fontsize="small",
                frameon=False,
            )
        else:  # in the blank triangle
            loc = "lower left" if lower is None else "upper right"
            fig.legend(handles=handles, loc=loc, fontsize="small", frameon=False)
    return fig, axes


def _label_grid(
    axes: np.ndarray, names: Sequence[str], *, has_upper: bool, has_lower: bool
) -> None:
    """Tick labels and axis labels only on the outer edge of the visible panels."""
    k = axes.shape[0]
    for row in range(k):
        for col in range(k):
            ax = axes[row, col]
            if not ax.axison:
                continue
            bottom = (row == k - 1) if has_lower else (row == col)
            if bottom:
                ax.set_xlabel(names[col])
            else:
                ax.tick_params(labelbottom=False)
            if row == col:
                continue
            if has_lower and not (row > col and col == 0):
                ax.tick_params(labelleft=False)
            elif not has_lower:
                if col == k - 1:
                    ax.yaxis.tick_right()
                    ax.yaxis.set_label_position("right")
                    ax.set_ylabel(names[row])
                else:
                    ax.tick_params(labelleft=False)
            if has_lower and row > col and col == 0:
                ax.set_ylabel(names[row])


def marginal_plot(
    samples: ArrayLike | Sequence[ArrayLike],
    reference: ArrayLike | None = None,
    *,
    labels: Sequence[str] | None = None,
    limits: ArrayLike | None = None,
    points: ArrayLike | None = None,
    subset: Sequence[int] | None = None,
    bins: int = 50,
    figsize: tuple[float, float] | None = None,
    colors: Sequence[str] | str | None = None,
    diag: Diag = "hist",
    sample_labels: Sequence[str] | None = None,
    reference_label: str = "reference",
) -> tuple[Figure, np.ndarray]:
    """One row of 1-D marginals, one panel per dimension.

    Args:
        samples: Samples ``[N, D]`` (``[N]`` when D = 1), or a list of such sets.
        reference: Reference samples ``[M, D]``, drawn as a black outline.
        labels: Axis labels, one per dimension.
        limits: ``(low, high)`` for all panels, or ``[D, 2]``; default: the data range.
        points: Values to mark with vertical red lines, shape ``[D]`` or ``[K, D]``.
        subset: Dimensions to plot (default all).
        bins: Number of histogram bins.
        figsize: Figure size in inches; default 2.8 inches per panel.
        colors: One matplotlib colour per sample set.
        diag: ``"hist"`` or ``"kde"``.
        sample_labels: Legend names of the sample sets.
        reference_label: Legend name of the reference.

    Returns:
        ``(fig, axes)``: the figure and a 1-D array of K axes.

    Raises:
        ValueError: On inconsistent shapes, unknown options or invalid limits.
        TypeError: If an input is not a tensor or array of numbers.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> import numpy as np
        >>> fig, axes = marginal_plot(np.random.default_rng(0).normal(size=(500, 4)))
        >>> len(axes)
        4
        >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt

    if diag not in _DIAG:
        raise ValueError(f"`diag` must be one of {_DIAG}, got {diag!r}.")
    bins = _check_int("bins", bins, 1)
    sets, ref, pts, dims, names, lims, cols = _prepare(
        samples, reference, points, subset, labels, limits, colors, sample_labels
    )
    k = len(dims)
    if figsize is None:
        figsize = (min(2.8 * k + 0.4, 28.0), 2.6)
    fig, axes = plt.subplots(1, k, figsize=figsize, squeeze=False)
    axes = axes[0]
    for i, d in enumerate(dims):
        ax = axes[i]
        _fill_diag_panel(ax, d, lims[i], sets, cols, ref, pts, diag, bins)
        ax.set_xlabel(names[i])
    handles = _legend_handles(cols, sample_labels, ref is not None, reference_label, pts.size > 0)
    if handles:
        axes[-1].legend(handles=handles, fontsize="small")
    fig.tight_layout()
    return fig, axes
