"""Benchmarks of a single-cell latent space and of imputation (classic scVI's ``Posterior``).

Pure functions on arrays (numpy / scikit-learn; matplotlib is imported only to draw):

- :func:`entropy_batch_mixing` — how well batches mix among each cell's neighbours.
- :func:`knn_purity` — how often a cell's neighbours share its label.
- :func:`clustering_scores` — silhouette, NMI, ARI and clustering accuracy.
- :func:`nn_overlap_score` — agreement of the latent and protein nearest-neighbour graphs.
- :func:`label_accuracy` — accuracy of a kNN classifier on the latent space.

Imputation (:mod:`~sbi_vi.singlecell.imputation`) and the embedding plot
(:mod:`~sbi_vi.singlecell.plots`) live next door.

The definitions follow scVI (Lopez et al., 2018, *Deep generative modeling for single-cell
transcriptomics*, Nat. Methods 15:1053) and its original ``scvi.inference.Posterior``
(``entropy_batch_mixing``, ``knn_purity``, ``clustering_scores``, ``nn_overlap_score``,
``imputation_*``, ``show_t_sne``); differences are noted in each docstring.
:class:`~sbi_vi.singlecell.evaluation.EvaluationMixin` calls them with a model's latent
representation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "clustering_scores",
    "entropy_batch_mixing",
    "knn_purity",
    "label_accuracy",
    "nn_overlap_score",
]

_CLUSTERING = ("knn", "kmeans", "gmm")


# -- argument checks -------------------------------------------------------------------


def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value}.")
    return int(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}."
        )
    return value


def _matrix(name: str, value: Any, min_rows: int = 2) -> np.ndarray:
    """``value`` as a finite float64 array ``[n, d]`` with ``n >= min_rows``."""
    if sp.issparse(value):
        value = value.toarray()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array [n_cells, n_dims], got shape {array.shape}."
        )
    if array.shape[0] < min_rows or array.shape[1] < 1:
        raise ValueError(
            f"`{name}` must have at least {min_rows} cells and 1 dimension, got shape "
            f"{array.shape}."
        )
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` must hold finite numbers (it has NaN or inf).")
    return array


def _codes(name: str, values: Any, n_cells: int) -> tuple[np.ndarray, int]:
    """Integer codes ``[n_cells]`` of a 1-D label array (any dtype) and the number of codes."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (one value per cell), got shape {array.shape}.")
    if array.shape[0] != n_cells:
        raise ValueError(
            f"`{name}` has {array.shape[0]} values but `latent` has {n_cells} cells; they must "
            "match."
        )
    codes, uniques = pd.factorize(pd.Series(array), sort=True)
    if (codes < 0).any():
        raise ValueError(f"`{name}` has missing values (NaN / None).")
    return codes.astype(np.int64), len(uniques)


def _neighbors_arg(n_neighbors: Any, n_cells: int) -> int:
    k = _int("n_neighbors", n_neighbors)
    if k >= n_cells:
        raise ValueError(
            f"`n_neighbors` must be smaller than the number of cells ({n_cells}), got {k}."
        )
    return k


def _knn(points: np.ndarray, n_neighbors: int, query: np.ndarray | None = None) -> np.ndarray:
    """The ``n_neighbors`` nearest other cells of each ``query`` cell, ``[n_query, k]``.

    A cell is never its own neighbour, even when other cells sit at the same point.
    """
    from sklearn.neighbors import NearestNeighbors

    query = np.arange(len(points)) if query is None else np.asarray(query)
    index = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(points)
    found = index.kneighbors(points[query], return_distance=False)
    drop = found == query[:, None]  # the cell itself, where found
    drop[~drop.any(axis=1), -1] = True  # else the farthest of the k + 1
    return found[~drop].reshape(len(query), n_neighbors)


# -- latent-space metrics --------------------------------------------------------------


def entropy_batch_mixing(
    latent: Any,
    batch: Any,
    n_neighbors: int = 50,
    n_pools: int = 50,
    n_samples_per_pool: int = 100,
    seed: int | None = 0,
) -> float:
    """Entropy of batch mixing (Lopez et al., 2018): how mixed batches are locally.

    ``n_pools`` pools of ``n_samples_per_pool`` cells are drawn at random (with
    replacement, as classic scVI); for each drawn cell, the frequencies ``p_b`` of the
    batches among its ``n_neighbors`` nearest other cells (Euclidean, in ``latent``) give
    the entropy ``-Σ_b p_b log p_b`` (natural log). The score is the mean over pools of the
    mean entropy in a pool. It lies in ``[0, log n_batches]``: 0 when every neighbourhood
    holds one batch (batches separated), ``log n_batches`` when every neighbourhood holds
    the batches in equal shares (perfect mixing; with batches of unequal sizes the
    attainable maximum is lower). Higher is better for batch correction. Classic scVI
    computes it for two batches only; this version takes any number of batches.

    Args:
        latent: Cell coordinates, shape ``[n_cells, n_dims]``.
        batch: Batch of each cell (any labels), shape ``[n_cells]``.
        n_neighbors: Neighbours per cell (``< n_cells``).
        n_pools: Number of pools of random cells.
        n_samples_per_pool: Cells drawn per pool.
        seed: Seed of the random cells (``numpy.random.default_rng``).

    Returns:
        The entropy of batch mixing (nats).

    Raises:
        ValueError: Shapes that do not match, ``n_neighbors >= n_cells``, non-positive
            sizes.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> latent = rng.normal(size=(200, 2))
        >>> mixed = rng.integers(0, 2, 200)
        >>> round(entropy_batch_mixing(latent, mixed, n_neighbors=20), 2)  # near log 2
        0.68
        >>> apart = np.r_[latent[:100], latent[100:] + 100.0]
        >>> entropy_batch_mixing(apart, np.repeat([0, 1], 100), n_neighbors=20)
        0.0
    """
    latent = _matrix("latent", latent)
    n_cells = latent.shape[0]
    codes, n_batches = _codes("batch", batch, n_cells)
    k = _neighbors_arg(n_neighbors, n_cells)
    n_pools = _int("n_pools", n_pools)
    n_samples_per_pool = _int("n_samples_per_pool", n_samples_per_pool)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_cells, size=n_pools * n_samples_per_pool)
    cells, where = np.unique(drawn, return_inverse=True)
    neighbor_batches = codes[_knn(latent, k, cells)]  # [n_unique, k]
    offsets = n_batches * np.arange(len(cells))[:, None]
    counts = np.bincount((neighbor_batches + offsets).ravel(), minlength=len(cells) * n_batches)
    freq = counts.reshape(len(cells), n_batches) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(freq > 0, freq * np.log(freq), 0.0)
    entropy = -terms.sum(axis=1)
    # pools have equal sizes: the mean of pool means is the mean over all drawn cells
    return float(max(entropy[where].mean(), 0.0))


def knn_purity(latent: Any, labels: Any, n_neighbors: int = 30) -> float:
    """kNN purity (classic scVI): how often a cell's neighbours share its label.

    For each cell, the fraction of its ``n_neighbors`` nearest other cells (Euclidean) with
    its label; these fractions are averaged within each label, and the per-label means are
    averaged over labels (so small populations weigh as much as large ones). It lies in
    ``[0, 1]``: 1 when every neighbourhood is pure.

    Args:
        latent: Cell coordinates, shape ``[n_cells, n_dims]``.
        labels: Label of each cell (any labels), shape ``[n_cells]``.
        n_neighbors: Neighbours per cell (``< n_cells``).

    Returns:
        The kNN purity.

    Raises:
        ValueError: Shapes that do not match or ``n_neighbors >= n_cells``.

    Example:
        >>> latent = np.r_[np.zeros((20, 2)), np.full((20, 2), 10.0)]
        >>> knn_purity(latent, ["a"] * 20 + ["b"] * 20, n_neighbors=5)
        1.0
    """
    latent = _matrix("latent", latent)
    codes, n_labels = _codes("labels", labels, latent.shape[0])
    k = _neighbors_arg(n_neighbors, latent.shape[0])
    same = (codes[_knn(latent, k)] == codes[:, None]).mean(axis=1)
    per_label = np.bincount(codes, weights=same, minlength=n_labels) / np.bincount(codes)
    return float(per_label.mean())


def _clustering_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Unsupervised clustering accuracy: accuracy under the best one-to-one matching."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(truth, predicted)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(truth))


def clustering_scores(
    latent: Any,
    labels: Any,
    prediction_algorithm: Literal["knn", "kmeans", "gmm"] = "knn",
    n_clusters: int | None = None,
    seed: int | None = 0,
    n_init: int = 10,
) -> dict[str, float]:
    """Silhouette, NMI, ARI and clustering accuracy of the latent space (classic scVI).

    ``"silhouette"`` is the mean silhouette width of the *true* labels in ``latent``
    (in ``[-1, 1]``). The other scores compare clusters predicted on ``latent`` with the
    labels: ``"nmi"`` (normalised mutual information, in ``[0, 1]``), ``"ari"`` (adjusted
    Rand index, 1 for a perfect match, about 0 for random clusters) and ``"uca"``
    (unsupervised clustering accuracy: the accuracy of the clusters under the best
    one-to-one matching of clusters to labels, Hungarian algorithm). Clusters come from
    k-means (``"knn"``, the classic scVI name, which also ran k-means, or ``"kmeans"``;
    scikit-learn ``KMeans`` with ``n_init`` restarts — classic scVI used 200) or a Gaussian
    mixture (``"gmm"``, scikit-learn ``GaussianMixture``, full covariances).

    Args:
        latent: Cell coordinates, shape ``[n_cells, n_dims]``.
        labels: True label of each cell (any labels), shape ``[n_cells]``, with between 2
            and ``n_cells - 1`` distinct values.
        prediction_algorithm: ``"knn"`` / ``"kmeans"`` (k-means) or ``"gmm"``.
        n_clusters: Clusters to predict (default: the number of distinct labels).
        seed: Seed of the clustering.
        n_init: Restarts of k-means / the Gaussian mixture.

    Returns:
        ``{"silhouette": ..., "nmi": ..., "ari": ..., "uca": ...}``.

    Raises:
        ValueError: Unknown ``prediction_algorithm``, mismatched shapes, fewer than 2
            (or as many as cells) distinct labels, ``n_clusters`` out of ``[1, n_cells]``.

    Example:
        >>> latent = np.r_[np.zeros((10, 2)), np.full((10, 2), 5.0)]
        >>> latent += np.random.default_rng(0).normal(scale=0.1, size=latent.shape)
        >>> scores = clustering_scores(latent, [0] * 10 + [1] * 10)
        >>> scores["ari"], scores["nmi"], scores["uca"]
        (1.0, 1.0, 1.0)
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    algorithm = _choice("prediction_algorithm", prediction_algorithm, _CLUSTERING)
    latent = _matrix("latent", latent)
    n_cells = latent.shape[0]
    codes, n_labels = _codes("labels", labels, n_cells)
    if not 2 <= n_labels <= n_cells - 1:
        raise ValueError(
            f"`labels` must have between 2 and n_cells - 1 = {n_cells - 1} distinct values "
            f"(the silhouette needs it), got {n_labels}."
        )
    n_clusters = n_labels if n_clusters is None else _int("n_clusters", n_clusters)
    if n_clusters > n_cells:
        raise ValueError(f"`n_clusters` must be at most n_cells = {n_cells}, got {n_clusters}.")
    n_init = _int("n_init", n_init)
    if algorithm == "gmm":
        from sklearn.mixture import GaussianMixture

        model = GaussianMixture(n_components=n_clusters, n_init=n_init, random_state=seed)
        predicted = model.fit(latent).predict(latent)
    else:
        from sklearn.cluster import KMeans

        predicted = KMeans(n_clusters, n_init=n_init, random_state=seed).fit_predict(latent)
    return {
        "silhouette": float(silhouette_score(latent, codes)),
        "nmi": float(normalized_mutual_info_score(codes, predicted)),
        "ari": float(adjusted_rand_score(codes, predicted)),
        "uca": _clustering_accuracy(codes, predicted),
    }


def nn_overlap_score(latent: Any, protein: Any, n_neighbors: int = 100) -> tuple[float, float]:
    """Agreement of the nearest-neighbour graphs of the latent and protein spaces.

    As classic scVI (totalVI-era ``nn_overlap``): build the directed ``n_neighbors``-nearest
    neighbour graph (Euclidean, a cell is not its own neighbour) of ``latent`` and of
    ``protein``, as 0/1 adjacency matrices ``A``, ``B`` over the ``N = n (n - 1)`` ordered
    pairs of distinct cells. With ``a`` the number of edges in both graphs and
    ``e = n k`` the edges of each:

    - the Spearman correlation of the entries of ``A`` and ``B`` (for 0/1 entries it equals
      the Pearson / phi coefficient, computed exactly from the counts without forming the
      ``n × n`` matrices): ``(N a − e²) / (e (N − e))``, 1 for identical graphs, about 0
      for unrelated ones;
    - the fold enrichment of the overlap over that of random graphs, ``a N / e²``, about 1
      for unrelated graphs and ``(n − 1) / k`` (its maximum) for identical ones.

    Classic scVI flattened the ``n × n`` matrices, diagonal included; excluding the
    always-empty diagonal changes the fold enrichment by the factor ``(n − 1) / n``.

    Args:
        latent: Cell coordinates, shape ``[n_cells, n_dims]``.
        protein: Protein measurements of the same cells, ``[n_cells, n_proteins]`` (for
            counts, a transform such as the centred log-ratio first; classic scVI used it).
        n_neighbors: Neighbours per cell (``< n_cells - 1``).

    Returns:
        ``(spearman_correlation, fold_enrichment)``.

    Raises:
        ValueError: Different numbers of cells, or ``n_neighbors >= n_cells - 1``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 3))
        >>> nn_overlap_score(x, x, n_neighbors=7)  # identical graphs: (1, 49 / 7)
        (1.0, 7.0)
    """
    latent = _matrix("latent", latent)
    protein = _matrix("protein", protein)
    n = latent.shape[0]
    if protein.shape[0] != n:
        raise ValueError(
            f"`protein` has {protein.shape[0]} cells but `latent` has {n}; they must match."
        )
    k = _neighbors_arg(n_neighbors, n)
    if k >= n - 1:
        raise ValueError(
            f"`n_neighbors` must be smaller than n_cells - 1 = {n - 1} (else both graphs are "
            f"complete), got {k}."
        )
    sources = np.repeat(np.arange(n, dtype=np.int64), k) * n
    edges_1 = sources + _knn(latent, k).ravel()
    edges_2 = sources + _knn(protein, k).ravel()
    overlap = float(np.intersect1d(edges_1, edges_2, assume_unique=True).size)
    n_pairs = float(n) * (n - 1)
    n_edges = float(n) * k
    spearman = (n_pairs * overlap - n_edges**2) / (n_edges * (n_pairs - n_edges))
    fold_enrichment = overlap * n_pairs / n_edges**2
    return float(spearman), float(fold_enrichment)


def label_accuracy(
    latent: Any,
    labels: Any,
    train_indices: Sequence[int] | np.ndarray | None = None,
    n_neighbors: int = 15,
    test_fraction: float = 0.3,
    seed: int | None = 0,
) -> float:
    """Accuracy of a kNN classifier of the labels on the latent space.

    A scikit-learn ``KNeighborsClassifier`` (``n_neighbors``, uniform weights, Euclidean)
    is fitted on the training cells and scored on all the other cells.

    Args:
        latent: Cell coordinates, shape ``[n_cells, n_dims]``.
        labels: Label of each cell (any labels), shape ``[n_cells]``.
        train_indices: Positions (or a boolean mask) of the training cells; default: a
            random ``1 - test_fraction`` of the cells.
        n_neighbors: Neighbours of the classifier (at most the number of training cells).
        test_fraction: Fraction of test cells when ``train_indices`` is None, in (0, 1).
        seed: Seed of the random split.

    Returns:
        The fraction of test cells whose label is predicted correctly.

    Raises:
        ValueError: Mismatched shapes, bad ``train_indices`` (out of range, or no test
            cells left), ``n_neighbors`` larger than the training set.

    Example:
        >>> latent = np.r_[np.zeros((20, 2)), np.full((20, 2), 10.0)]
        >>> label_accuracy(latent, [0] * 20 + [1] * 20, n_neighbors=3)
        1.0
    """
    from sklearn.neighbors import KNeighborsClassifier

    latent = _matrix("latent", latent)
    n_cells = latent.shape[0]
    codes, _ = _codes("labels", labels, n_cells)
    k = _int("n_neighbors", n_neighbors)
    if train_indices is None:
        ok = isinstance(test_fraction, int | float) and not isinstance(test_fraction, bool)
        if not (ok and 0.0 < float(test_fraction) < 1.0):
            raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction!r}.")
        order = np.random.default_rng(seed).permutation(n_cells)
        n_test = min(max(1, round(float(test_fraction) * n_cells)), n_cells - 1)
        test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    else:
        mask = np.zeros(n_cells, dtype=bool)
        array = np.asarray(train_indices)
        if array.dtype == np.bool_:
            if array.shape != (n_cells,):
                raise ValueError(
                    f"`train_indices` as a boolean mask must have length {n_cells}, got "
                    f"shape {array.shape}."
                )
            mask = array.copy()
        else:
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise ValueError("`train_indices` must be 1-D integer positions or a mask.")
            if array.size and (array.min() < 0 or array.max() >= n_cells):
                raise ValueError(f"`train_indices` must lie in [0, {n_cells}).")
            mask[array] = True
        train, test = np.flatnonzero(mask), np.flatnonzero(~mask)
        if len(train) == 0 or len(test) == 0:
            raise ValueError(
                f"`train_indices` must leave both training and test cells, got {len(train)} "
                f"training and {len(test)} test cells."
            )
    if k > len(train):
        raise ValueError(
            f"`n_neighbors` must be at most the number of training cells ({len(train)}), got {k}."
        )
    classifier = KNeighborsClassifier(n_neighbors=k).fit(latent[train], codes[train])
    return float(np.mean(classifier.predict(latent[test]) == codes[test]))
