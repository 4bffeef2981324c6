"""Plots for simulation-based inference with variational posteriors.

matplotlib is imported only when a plotting function is called, so ``import
sbi_vi.plotting`` is cheap and works without a display. Every function accepts torch
tensors or numpy arrays and returns the figure together with its axes.

- :func:`pairplot` — corner plot of one or more sample sets against a reference.
- :func:`marginal_plot` — one row of 1-D marginals.
- :func:`plot_loss` — training curves.
- :func:`plot_khat` — Pareto k-hat per observation with the 0.5 / 0.7 thresholds.
- :func:`plot_rank_histogram` — SBC rank histograms with the band of a calibrated posterior.
- :func:`plot_coverage` — expected coverage against credibility level.
"""

from sbi_vi.plotting.corner import marginal_plot, pairplot
from sbi_vi.plotting.curves import plot_loss
from sbi_vi.plotting.diagnostic_plots import plot_khat
from sbi_vi.plotting.sbc_plots import plot_coverage, plot_rank_histogram

__all__ = [
    "marginal_plot",
    "pairplot",
    "plot_coverage",
    "plot_khat",
    "plot_loss",
    "plot_rank_histogram",
]
