"""Tests of sbi_vi.plotting.curves: plot_loss and its moving average."""

import numpy as np
import pytest
import torch

from sbi_vi.plotting import plot_loss
from sbi_vi.plotting.curves import moving_average


def test_plot_loss_single_curve(tmp_path):
    losses = torch.linspace(5.0, 1.0, 100) + 0.1 * torch.randn(100)
    fig, ax = plot_loss(losses, log_scale=True)
    assert len(fig.axes) == 1
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == 1
    fig.savefig(tmp_path / "loss.png")


def test_plot_loss_mapping_smoothing_and_negative_values():
    losses = {"train": np.linspace(2.0, -3.0, 50), "validation": [1.0, 0.5, float("nan"), 0.0]}
    _fig, ax = plot_loss(losses, smoothing=5, log_scale=True)
    assert ax.get_yscale() == "symlog"
    assert len(ax.lines) == 4  # raw + smoothed per curve
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]


def test_plot_loss_into_existing_axes():
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2)
    out_fig, out_ax = plot_loss([3.0, 2.0, 1.0], ax=right)
    assert out_fig is fig and out_ax is right
    assert len(right.lines) == 1 and not left.lines


def test_plot_loss_errors():
    with pytest.raises(ValueError, match="smoothing"):
        plot_loss([1.0, 2.0], smoothing=0)
    with pytest.raises(ValueError, match="losses"):
        plot_loss(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="losses"):
        plot_loss([])


def test_moving_average():
    values = np.array([1.0, 2.0, 3.0, np.inf, 5.0, 6.0])
    np.testing.assert_allclose(moving_average(values, 3), [1.0, 1.5, 2.0, 2.5, 4.0, 5.5])
    assert np.isnan(moving_average(np.array([np.nan, np.nan]), 1)).all()
