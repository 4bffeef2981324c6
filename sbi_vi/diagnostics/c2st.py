"""Classifier two-sample test (C2ST), as the SBI benchmark (sbibm) defines it.

A classifier is trained to tell ``samples`` from ``reference``; its cross-validated
accuracy is the metric [1, 2]. 0.5 means the two sets cannot be told apart (the posterior
approximation matches the reference posterior); 1.0 means they are perfectly separable.

Setup, as in ``sbibm.metrics.c2st`` (whose first argument ``X`` is the reference posterior
sample in sbibm's benchmark runs):

- both sets are z-scored with the per-dimension mean and (unbiased) standard deviation of
  the **reference**;
- classifier ``MLPClassifier(activation="relu", hidden_layer_sizes=(10·D, 10·D),
  max_iter=10000, solver="adam", random_state=seed)``, or with ``classifier="rf"`` the
  ``RandomForestClassifier(random_state=seed)`` that ``sbi.utils.metrics.c2st`` defaults to;
- ``KFold(n_splits=n_folds, shuffle=True, random_state=seed)`` over the pooled,
  labelled data, and the mean of ``cross_val_score(..., scoring="accuracy")``.

References:
    [1] Lopez-Paz, Oquab. *Revisiting classifier two-sample tests*. ICLR 2017.
    https://arxiv.org/abs/1610.06545

    [2] Lueckmann et al. *Benchmarking simulation-based inference*. AISTATS 2021.
    https://arxiv.org/abs/2101.04653
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["c2st"]


def _as_matrix(name: str, value: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, Tensor):
        array = value.detach().to("cpu", torch.float64).numpy()
    elif isinstance(value, np.ndarray):
        array = value.astype(np.float64, copy=False)
    else:
        raise TypeError(f"`{name}` must be a tensor or numpy array, got {type(value).__name__}.")
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape [n, D] (2-D), got shape {array.shape}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"`{name}` must be non-empty, got shape {array.shape}.")
    n_bad = int((~np.isfinite(array)).sum())
    if n_bad:
        raise ValueError(f"`{name}` must be finite, but {n_bad} entries are NaN or inf.")
    return array


def _subset(array: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    if array.shape[0] <= max_samples:
        return array
    return array[rng.choice(array.shape[0], size=max_samples, replace=False)]


def c2st(
    samples: Tensor | np.ndarray,
    reference: Tensor | np.ndarray,
    *,
    seed: int = 1,
    n_folds: int = 5,
    classifier: Literal["mlp", "rf"] = "mlp",
    z_score: bool = True,
    noise_scale: float | None = None,
    max_samples: int | None = None,
) -> float:
    """Cross-validated accuracy of a classifier telling ``samples`` from ``reference``.

    Args:
        samples: Samples to assess, e.g. from the variational posterior, shape ``[N, D]``.
        reference: Reference samples, e.g. from the true posterior, shape ``[M, D]``.
        seed: Seed of the classifier, the folds, the noise and the subsets.
        n_folds: Number of cross-validation folds (at least 2).
        classifier: ``"mlp"`` (sbibm's two-layer ReLU network of width 10·D) or ``"rf"``
            (a random forest, faster and the default of ``sbi.utils.metrics.c2st``).
        z_score: Standardise both sets with the mean and standard deviation of
            ``reference`` (sbibm standardises by its first argument, the reference).
        noise_scale: If given, add Gaussian noise of this standard deviation to both sets
            after z-scoring (seeded; sbibm draws it from torch's global generator).
        max_samples: If given, use a seeded random subset of at most this many rows of each
            set, to bound the cost.

    Returns:
        The mean accuracy over folds as a Python float: ≈ 0.5 for indistinguishable sets,
        up to 1.0 for disjoint ones.

    Raises:
        ValueError: If an input is not 2-D, empty, non-finite, or their ``D`` differ; if
            ``reference`` is constant in a dimension while ``z_score=True``; if an option
            is out of range or there are fewer rows than folds.
        TypeError: If an input is not a tensor or array.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g) + 10
        >>> c2st(a, b, classifier="rf")
        1.0
    """
    x_samples = _as_matrix("samples", samples)
    x_reference = _as_matrix("reference", reference)
    if x_samples.shape[1] != x_reference.shape[1]:
        raise ValueError(
            f"`samples` and `reference` must have the same number of dimensions D, got "
            f"`samples` {x_samples.shape} and `reference` {x_reference.shape}."
        )
    if classifier not in ("mlp", "rf"):
        raise ValueError(f"`classifier` must be 'mlp' or 'rf', got {classifier!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValueError(f"`n_folds` must be an integer >= 2, got {n_folds!r}.")
    if noise_scale is not None and not (
        isinstance(noise_scale, int | float) and np.isfinite(noise_scale) and noise_scale >= 0
    ):
        raise ValueError(f"`noise_scale` must be a non-negative number, got {noise_scale!r}.")
    if max_samples is not None and (
        isinstance(max_samples, bool)
        or not isinstance(max_samples, int | np.integer)
        or max_samples < 1
    ):
        raise ValueError(f"`max_samples` must be a positive integer, got {max_samples!r}.")

    rng = np.random.default_rng(seed)
    if max_samples is not None:
        x_samples = _subset(x_samples, int(max_samples), rng)
        x_reference = _subset(x_reference, int(max_samples), rng)
    n_rows = x_samples.shape[0] + x_reference.shape[0]
    if n_rows < n_folds:
        raise ValueError(
            f"`n_folds` = {n_folds} exceeds the {n_rows} rows of `samples` and `reference`."
        )

    if z_score:
        if x_reference.shape[0] < 2:
            raise ValueError("`reference` needs at least 2 rows to z-score; pass z_score=False.")
        mean = x_reference.mean(axis=0)
        std = x_reference.std(axis=0, ddof=1)
        constant = np.flatnonzero(std == 0)
        if constant.size:
            raise ValueError(
                f"`reference` is constant in dimension(s) {constant.tolist()}, so it cannot "
                "be z-scored; pass z_score=False."
            )
        x_samples = (x_samples - mean) / std
        x_reference = (x_reference - mean) / std
    if noise_scale is not None:
        x_reference = x_reference + noise_scale * rng.standard_normal(x_reference.shape)
        x_samples = x_samples + noise_scale * rng.standard_normal(x_samples.shape)

    from sklearn.model_selection import KFold, cross_val_score

    n_dims = x_samples.shape[1]
    if classifier == "mlp":
        from sklearn.neural_network import MLPClassifier

        clf = MLPClassifier(
            activation="relu",
            hidden_layer_sizes=(10 * n_dims, 10 * n_dims),
            max_iter=10000,
            solver="adam",
            random_state=seed,
        )
    else:
        from sklearn.ensemble import RandomForestClassifier

        clf = RandomForestClassifier(random_state=seed)

    # Reference first and labelled 0, as sbibm orders X (reference) and Y (algorithm).
    data = np.concatenate([x_reference, x_samples])
    target = np.concatenate([np.zeros(x_reference.shape[0]), np.ones(x_samples.shape[0])])
    folds = KFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
    scores = cross_val_score(clf, data, target, cv=folds, scoring="accuracy")
    return float(np.mean(scores))
