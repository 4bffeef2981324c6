"""Tests of sbi_vi.plotting.sbc_plots: rank histograms and coverage curves."""

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_vi.diagnostics import run_coverage, run_sbc
from sbi_vi.plotting.sbc_plots import plot_coverage, plot_rank_histogram

QUIET = {"show_progress_bar": False}


def _data(n: int = 120):
    g = torch.Generator().manual_seed(0)
    thetas = torch.randn(n, 2, generator=g)
    return thetas, thetas + 0.5 * torch.randn(n, 2, generator=g)


def _posterior(scale: float = 1.0):
    def posterior(x):
        return Independent(Normal(x / 1.25, scale * 0.2**0.5), 1)

    return posterior


def test_rank_histogram_from_result(tmp_path):
    thetas, xs = _data()
    result = run_sbc(thetas, xs, _posterior(), 100, seed=0, **QUIET)
    fig, axes = plot_rank_histogram(result)
    assert isinstance(axes, np.ndarray) and axes.shape == (2,)
    assert [ax.get_title() for ax in axes] == [r"$\theta_{1}$", r"$\theta_{2}$"]
    # Bars: one per bin (12 for N = 120); their heights are the binned rank counts.
    bars = [p for p in axes[0].patches if type(p).__name__ == "Rectangle"]
    assert len(bars) == 12
    assert sum(b.get_height() for b in bars) == 120
    assert axes[0].get_xlim() == (-0.5, 100.5)
    fig.savefig(tmp_path / "ranks.png")


def test_rank_histogram_from_raw_ranks_and_given_axes():
    import matplotlib.pyplot as plt

    ranks = torch.randint(0, 11, (200,), generator=torch.Generator().manual_seed(1))
    fig, given = plt.subplots(1, 1)
    out_fig, axes = plot_rank_histogram(ranks, 10, num_bins=11, labels=["log q"], axes=[given])
    assert out_fig is fig and axes[0] is given
    bars = [p for p in given.patches if type(p).__name__ == "Rectangle"]
    assert [int(b.get_height()) for b in bars] == np.bincount(ranks.numpy(), minlength=11).tolist()
    assert given.get_title() == "log q"


def test_rank_histogram_errors():
    ranks = torch.zeros(20, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="num_posterior_samples"):
        plot_rank_histogram(ranks)
    with pytest.raises(ValueError, match=r"integers in 0\.\.10"):
        plot_rank_histogram(ranks + 11, 10)
    with pytest.raises(ValueError, match="labels"):
        plot_rank_histogram(ranks, 10, labels=["a"])
    with pytest.raises(ValueError, match="band"):
        plot_rank_histogram(ranks, 10, band=1.0)
    with pytest.raises(ValueError, match="axes"):
        import matplotlib.pyplot as plt

        plot_rank_histogram(ranks, 10, axes=[plt.subplots()[1]])


def test_coverage_plot_curves_band_and_legend(tmp_path):
    thetas, xs = _data()
    exact = run_coverage(thetas, xs, _posterior(), 100, seed=0, **QUIET)
    narrow = run_coverage(thetas, xs, _posterior(0.3), 100, seed=0, **QUIET)
    fig, ax = plot_coverage({"exact": exact, "too narrow": narrow})
    assert ax.get_xlabel() == "credibility level"
    curves = [line for line in ax.lines if line.get_label() in ("exact", "too narrow")]
    assert len(curves) == 2
    np.testing.assert_allclose(curves[1].get_ydata(), narrow.coverage.numpy())
    assert len(ax.collections) == 1  # the band
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["95% band", "exact", "too narrow"]
    fig.savefig(tmp_path / "coverage.png")
    _fig, ax = plot_coverage([exact, narrow])
    _fig, ax = plot_coverage(exact, band=0.99)
    assert ax.get_xlim() == (0.0, 1.0)


def test_coverage_plot_errors():
    with pytest.raises(ValueError, match="results"):
        plot_coverage([])
    with pytest.raises(TypeError, match="CoverageResult"):
        plot_coverage([1.0])
    thetas, xs = _data(20)
    result = run_coverage(thetas, xs, _posterior(), 10, seed=0, **QUIET)
    with pytest.raises(ValueError, match="band"):
        plot_coverage(result, band=0.0)
