"""Tests of sbi_vi.plotting.diagnostic_plots: plot_khat."""

import math

import pytest
import torch

from sbi_vi.diagnostics import psis
from sbi_vi.plotting import plot_khat


def test_plot_khat_bars_colours_and_lines(tmp_path):
    fig, ax = plot_khat(torch.tensor([0.1, 0.6, 0.9, math.inf]))
    assert len(fig.axes) == 1
    assert len(ax.patches) == 4
    heights = [p.get_height() for p in ax.patches]
    assert heights[3] == ax.get_ylim()[1]  # infinite k-hat drawn to the top
    lines = sorted(line.get_ydata()[0] for line in ax.lines)
    assert lines == [0.5, 0.7]
    colours = [p.get_facecolor()[:3] for p in ax.patches]
    assert colours[0] != colours[1] != colours[2]
    fig.savefig(tmp_path / "khat.png")


def test_plot_khat_from_psis_result_uses_particle_bound():
    log_w = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
    result = psis(log_w)
    _fig, ax = plot_khat(result, labels=[f"x{i}" for i in range(5)])
    assert len(ax.patches) == 5
    # 100 particles: bound 1 − 1/log10(100) = 0.5 drawn besides 0.5 and 0.7.
    assert len(ax.lines) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"x{i}" for i in range(5)]


def test_plot_khat_scalar_and_errors():
    _fig, ax = plot_khat(0.3)
    assert len(ax.patches) == 1
    with pytest.raises(ValueError, match="khat"):
        plot_khat([0.1, math.nan])
    with pytest.raises(ValueError, match="labels"):
        plot_khat([0.1, 0.2], labels=["a"])
