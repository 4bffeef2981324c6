"""Plots of calibration: SBC rank histograms and expected-coverage curves.

matplotlib (and scipy) are imported inside the functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sbi_vi.plotting._utils import DEFAULT_COLORS, ArrayLike, to_numpy

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sbi_vi.diagnostics.coverage import CoverageResult
    from sbi_vi.diagnostics.sbc import SBCResult

__all__ = ["plot_coverage", "plot_rank_histogram"]

_BAND_COLOR = "0.85"


def _check_level(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"`{name}` must be a probability in (0, 1), got {value!r}.")
    return float(value)


def plot_rank_histogram(
    ranks: SBCResult | ArrayLike,
    num_posterior_samples: int | None = None,
    *,
    num_bins: int | None = None,
    labels: Sequence[str] | None = None,
    band: float = 0.99,
    axes: Sequence[Axes] | None = None,
) -> tuple[Figure, np.ndarray]:
    """Histograms of SBC ranks, one panel per statistic, with the band of a calibrated q.

    Ranks of a calibrated posterior are uniform on ``0..S``: the bars should stay inside
    the grey band (the central ``band`` range of each bin's Binomial count, pointwise).
    Bars high at both ends mean q is too narrow (over-confident), high in the middle too
    wide, a slope that q is shifted. Bins are those of the chi-square test of
    :func:`sbi_vi.diagnostics.sbc.check_sbc`.

    Args:
        ranks: An :class:`~sbi_vi.diagnostics.sbc.SBCResult`, or ranks of shape ``[N, K]``
            (or ``[N]``).
        num_posterior_samples: S; needed with raw ranks, taken from a result otherwise.
        num_bins: Bins per histogram; default
            :func:`~sbi_vi.diagnostics.sbc.default_num_bins` (about ten ranks per bin).
        labels: One title per statistic; default the result's names (``theta_k`` drawn
            as θ_k) or ``statistic k``.
        band: Probability of the band drawn behind the bars, in (0, 1).
        axes: K axes to draw into; default a new figure with one row of K panels.

    Returns:
        ``(fig, axes)`` with ``axes`` a numpy array of K axes.

    Raises:
        ValueError: If ranks are malformed or out of ``0..S``, S is missing, or ``labels``
            or ``axes`` do not have K entries.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> import torch
        >>> ranks = torch.randint(0, 101, (300, 2), generator=torch.Generator().manual_seed(0))
        >>> fig, axes = plot_rank_histogram(ranks, 100)
        >>> len(axes), axes[0].get_xlabel()
        (2, 'rank')
        >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt
    from scipy import stats

    from sbi_vi.diagnostics.sbc import _rank_bins, check_sbc, default_num_bins

    if hasattr(ranks, "ranks") and hasattr(ranks, "num_posterior_samples"):
        if num_posterior_samples is None:
            num_posterior_samples = ranks.num_posterior_samples
        if labels is None:
            labels = list(ranks.names)
        ranks = ranks.ranks
    if num_posterior_samples is None:
        raise ValueError("`num_posterior_samples` is needed with raw ranks (S of the SBC run).")
    values = to_numpy("ranks", ranks)
    if values.ndim == 1:
        values = values[:, None]
    check_sbc(values, num_posterior_samples, num_bins=num_bins)  # validates ranks and bins
    n, k = values.shape
    s = int(num_posterior_samples)
    num_bins = default_num_bins(n, s) if num_bins is None else int(num_bins)
    band = _check_level("band", band)
    labels = [f"statistic {i + 1}" for i in range(k)] if labels is None else list(labels)
    labels = [re.sub(r"^theta_(\d+)$", r"$\\theta_{\1}$", str(label)) for label in labels]
    if len(labels) != k:
        raise ValueError(f"`labels` must have one entry per statistic ({k}), got {len(labels)}.")

    if axes is None:
        fig, axes_list = plt.subplots(1, k, figsize=(2.8 * k + 0.6, 2.8), squeeze=False)
        axes_array = axes_list[0]
    else:
        axes_array = np.asarray(axes, dtype=object).reshape(-1)
        if axes_array.size != k:
            raise ValueError(
                f"`axes` must hold one axes per statistic ({k}), got {axes_array.size}."
            )
        fig = axes_array[0].figure

    edges = _rank_bins(s, num_bins).astype(np.float64) - 0.5  # bin b: ranks edges[b]..
    widths = np.diff(edges)
    probability = widths / (s + 1)
    low, high = stats.binom.interval(band, n, probability)
    for i, ax in enumerate(axes_array):
        counts = np.add.reduceat(
            np.bincount(values[:, i].astype(np.int64), minlength=s + 1),
            _rank_bins(s, num_bins)[:-1],
        )
        ax.fill_between(
            edges,
            np.append(low, low[-1]),
            np.append(high, high[-1]),
            step="post",
            color=_BAND_COLOR,
            lw=0,
            label=f"{band:.0%} band",
        )
        ax.stairs(n * probability, edges, color="0.4", ls="--", lw=1)
        ax.bar(
            edges[:-1],
            counts,
            width=widths,
            align="edge",
            color=DEFAULT_COLORS[0],
            alpha=0.8,
            edgecolor="white",
            lw=0.5,
        )
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(labels[i], fontsize="medium")
        ax.set_xlabel("rank")
        ax.set_yticks([])
    axes_array[0].set_ylabel("count")
    if axes is None:
        fig.tight_layout()
    return fig, axes_array


def plot_coverage(
    results: CoverageResult | Sequence[CoverageResult] | Mapping[str, CoverageResult],
    *,
    band: float = 0.95,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Expected coverage against credibility level, with the band of a calibrated q.

    A calibrated posterior follows the diagonal; a curve below it is over-confident (its
    credible regions miss the truth too often — the dangerous direction), above it
    conservative.

    Args:
        results: One :class:`~sbi_vi.diagnostics.coverage.CoverageResult`, several, or a
            mapping from a name to a result (one curve each, named in the legend).
        band: Probability of the grey band (pointwise Binomial range of the coverage of a
            calibrated q with the first result's N and S), in (0, 1).
        ax: Axes to draw into; default a new figure.

    Returns:
        ``(fig, ax)``.

    Raises:
        ValueError: If ``results`` is empty or ``band`` is not in (0, 1).
        TypeError: If an entry is not a coverage result.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> import torch
        >>> from torch.distributions import Independent, Normal
        >>> from sbi_vi.diagnostics import run_coverage
        >>> g = torch.Generator().manual_seed(0)
        >>> thetas = torch.randn(100, 2, generator=g)  # θ ~ N(0, I)
        >>> xs = torch.randn(100, 2, generator=g)  # x tells nothing: the posterior is the prior
        >>> def exact(x):
        ...     return Independent(Normal(torch.zeros(2), 1.0), 1)
        >>> result = run_coverage(thetas, xs, exact, 100, seed=0, show_progress_bar=False)
        >>> fig, ax = plot_coverage({"exact": result})
        >>> ax.get_xlabel()
        'credibility level'
        >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt

    band = _check_level("band", band)
    if isinstance(results, Mapping):
        named = [(str(name), r) for name, r in results.items()]
    elif isinstance(results, Sequence):
        named = [(None, r) for r in results]
    else:
        named = [(None, results)]
    if not named:
        raise ValueError("`results` must hold at least one coverage result, got none.")
    for name, r in named:
        if not all(hasattr(r, a) for a in ("levels", "coverage", "band")):
            label = "results" if name is None else f"results[{name!r}]"
            raise TypeError(f"`{label}` must be a CoverageResult, got {type(r).__name__}.")

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.0, 4.0))
    else:
        fig = ax.figure
    first = named[0][1]
    levels = to_numpy("levels", first.levels)
    low, high = (to_numpy("band", b) for b in first.band(alpha=1.0 - band))
    ax.fill_between(levels, low, high, color=_BAND_COLOR, lw=0, label=f"{band:.0%} band")
    ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1)
    for i, (name, r) in enumerate(named):
        ax.plot(
            to_numpy("levels", r.levels),
            to_numpy("coverage", r.coverage),
            color=DEFAULT_COLORS[i % len(DEFAULT_COLORS)],
            lw=1.8,
            label=name,
        )
    ax.text(0.04, 0.96, "conservative", va="top", fontsize="small", color="0.4")
    ax.text(0.96, 0.04, "over-confident", ha="right", fontsize="small", color="0.4")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.legend(fontsize="small", loc="lower right", bbox_to_anchor=(1.0, 0.08), frameon=False)
    return fig, ax
