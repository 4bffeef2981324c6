"""Tests of sbi_vi.plotting.corner: pairplot and marginal_plot."""

import numpy as np
import pytest
import torch

from sbi_vi.plotting import marginal_plot, pairplot


def _samples(n: int, d: int, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def _visible(axes: np.ndarray) -> int:
    return sum(ax.axison for ax in axes.ravel())


@pytest.mark.parametrize("d", [1, 2, 4])
def test_pairplot_grid_shape_and_upper_triangle(d, tmp_path):
    fig, axes = pairplot(_samples(500, d), points=torch.zeros(d))
    assert axes.shape == (d, d)
    assert len(fig.axes) == d * d
    assert _visible(axes) == d * (d + 1) // 2  # diagonal + upper triangle
    fig.savefig(tmp_path / "pair.png")
    assert (tmp_path / "pair.png").stat().st_size > 0


@pytest.mark.parametrize("upper", ["scatter", "hist2d", "contour"])
def test_pairplot_kinds_with_reference_and_several_sets(upper, tmp_path):
    sets = [_samples(800, 3, seed=1), _samples(800, 3, seed=2, shift=0.5)]
    fig, axes = pairplot(
        sets,
        reference=_samples(800, 3, seed=3).numpy(),
        upper=upper,
        lower="scatter",
        labels=["a", "b", "c"],
        sample_labels=["q1", "q2"],
        points=np.zeros((2, 3)),
        diag="kde" if upper == "contour" else "hist",
    )
    assert _visible(axes) == 9
    assert axes[2, 0].get_xlabel() == "a"
    assert axes[1, 0].get_ylabel() == "b"
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["q1", "q2", "reference", "points"]
    fig.savefig(tmp_path / f"pair_{upper}.png")


def test_pairplot_lower_only_subset_limits_and_many_dims():
    theta = _samples(300, 12)
    fig, axes = pairplot(theta, upper=None, lower="hist2d", bins=20)
    assert len(fig.axes) == 144
    assert axes.shape == (12, 12)
    assert _visible(axes) == 12 * 13 // 2
    _, axes = pairplot(theta, subset=[0, 5, 11], limits=(-4, 4))
    assert axes.shape == (3, 3)
    assert axes[0, 1].get_xlim() == (-4.0, 4.0)
    assert axes[0, 0].get_xlabel() == r"$\theta_{1}$"
    assert axes[2, 2].get_xlabel() == r"$\theta_{12}$"
    limits = np.array([[-1.0, 1.0]] * 12)
    _, axes = pairplot(theta, subset=[1, 2], limits=limits)
    assert axes[1, 1].get_xlim() == (-1.0, 1.0)


def test_pairplot_one_dimensional_input_and_nonfinite_rows():
    x = np.random.default_rng(0).normal(size=400)
    x[:5] = np.nan
    _fig, axes = pairplot(x, reference=np.random.default_rng(1).normal(size=(400, 1)))
    assert axes.shape == (1, 1)


def test_pairplot_errors():
    with pytest.raises(ValueError, match="reference"):
        pairplot(_samples(10, 2), reference=_samples(10, 3))
    with pytest.raises(ValueError, match="upper"):
        pairplot(_samples(10, 2), upper="violin")
    with pytest.raises(ValueError, match="points"):
        pairplot(_samples(10, 2), points=torch.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        pairplot(_samples(10, 2), labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="limits"):
        pairplot(_samples(10, 2), limits=[[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="subset"):
        pairplot(_samples(10, 2), subset=[2])
    with pytest.raises(ValueError, match="samples"):
        pairplot([_samples(10, 2), _samples(10, 3)])


def test_marginal_plot(tmp_path):
    fig, axes = marginal_plot(
        _samples(500, 4), reference=_samples(500, 4, seed=1), points=torch.ones(4)
    )
    assert axes.shape == (4,)
    assert len(fig.axes) == 4
    assert next(ax.get_xlabel() for ax in axes) == r"$\theta_{1}$"
    fig.savefig(tmp_path / "marginals.png")
    fig, axes = marginal_plot([_samples(200, 3), _samples(200, 3, 1)], subset=[2], diag="kde")
    assert axes.shape == (1,)
