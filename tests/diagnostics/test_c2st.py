"""Tests of sbi_vi.diagnostics.c2st (sbibm's classifier two-sample test)."""

import numpy as np
import pytest
import torch

from sbi_vi.diagnostics import c2st


def _normal(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    x[:, 0] += shift
    return x


def test_same_distribution_is_chance():
    value = c2st(_normal(2000, 2, seed=0), _normal(2000, 2, seed=1))
    assert isinstance(value, float)
    assert abs(value - 0.5) < 0.05


def test_disjoint_is_one():
    assert c2st(_normal(1000, 2, seed=0, shift=20.0), _normal(1000, 2, seed=1)) > 0.99


def test_one_sd_shift_is_in_between():
    # The Bayes-optimal accuracy for N(0, 1) vs N(1, 1) is Φ(0.5) ≈ 0.69.
    value = c2st(_normal(2000, 2, seed=0, shift=1.0), _normal(2000, 2, seed=1))
    assert 0.62 < value < 0.74


def test_random_forest_classifier():
    same = c2st(_normal(1000, 2, seed=0), _normal(1000, 2, seed=1), classifier="rf")
    shifted = c2st(_normal(1000, 2, seed=0, shift=3.0), _normal(1000, 2, seed=1), classifier="rf")
    assert abs(same - 0.5) < 0.07
    assert shifted > 0.9


def test_reproducible_with_seed_and_accepts_numpy():
    a, b = _normal(400, 2, seed=0, shift=1.0), _normal(400, 2, seed=1)
    first = c2st(a, b, seed=3, noise_scale=0.1, max_samples=300)
    assert first == c2st(a.numpy(), b.numpy(), seed=3, noise_scale=0.1, max_samples=300)
    assert 0.5 < first < 0.85


def test_max_samples_caps_each_side(monkeypatch):
    import sklearn.model_selection

    seen = {}
    original = sklearn.model_selection.cross_val_score

    def spy(clf, data, target, **kwargs):
        seen["shape"], seen["ones"] = data.shape, int(target.sum())
        return original(clf, data, target, **kwargs)

    monkeypatch.setattr(sklearn.model_selection, "cross_val_score", spy)
    c2st(_normal(1000, 2, seed=0), _normal(300, 2, seed=1), max_samples=200, classifier="rf")
    assert seen["shape"] == (400, 2)
    assert seen["ones"] == 200  # samples are labelled 1, the reference 0


def test_z_scoring_uses_reference_scale():
    # Scaling both sets by the same factor leaves the z-scored problem unchanged.
    a, b = _normal(500, 2, seed=0, shift=1.0), _normal(500, 2, seed=1)
    assert c2st(a, b, classifier="rf") == c2st(1e4 * a, 1e4 * b, classifier="rf")


def test_errors_name_the_argument():
    a = _normal(50, 2, seed=0)
    with pytest.raises(ValueError, match="same number of dimensions"):
        c2st(a, _normal(50, 3, seed=1))
    with pytest.raises(ValueError, match="samples"):
        c2st(a[:, 0], a)
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="reference"):
        c2st(a, bad)
    with pytest.raises(ValueError, match="reference"):
        c2st(a, torch.ones(50, 2))
    with pytest.raises(ValueError, match="classifier"):
        c2st(a, a, classifier="svm")
    with pytest.raises(ValueError, match="n_folds"):
        c2st(a, a, n_folds=1)
    with pytest.raises(ValueError, match="max_samples"):
        c2st(a, a, max_samples=0)
    with pytest.raises(TypeError, match="samples"):
        c2st([[0.0, 1.0]], np.zeros((5, 2)))
