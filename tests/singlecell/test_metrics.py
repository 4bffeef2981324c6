"""Tests of the latent-space and imputation benchmarks and of ``EvaluationMixin``."""

from __future__ import annotations

import math

import anndata
import matplotlib
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
from threadpoolctl import threadpool_limits

from sbi_vi.singlecell import metrics
from sbi_vi.singlecell.evaluation import EvaluationMixin
from sbi_vi.singlecell.imputation import corrupt_counts, imputation_benchmark, imputation_score
from sbi_vi.singlecell.metrics import (
    clustering_scores,
    entropy_batch_mixing,
    knn_purity,
    label_accuracy,
    nn_overlap_score,
)
from sbi_vi.singlecell.plots import embedding_plot

matplotlib.use("Agg")
from matplotlib.figure import Figure


def _blobs(n_per: int, n_blobs: int, dim: int = 3, spread: float = 0.3, seed: int = 0):
    """Well separated Gaussian blobs: ``(points, blob index)``."""
    rng = np.random.default_rng(seed)
    centers = 20.0 * np.eye(max(dim, n_blobs))[:n_blobs, :dim]
    labels = np.repeat(np.arange(n_blobs), n_per)
    return centers[labels] + spread * rng.normal(size=(n_per * n_blobs, dim)), labels


def _counts(n_cells: int = 40, n_genes: int = 15, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.5, size=(n_cells, n_genes)).astype(np.float32)


# -- neighbours ------------------------------------------------------------------------


def test_knn_never_returns_the_cell_itself_even_for_duplicate_points():
    points = np.zeros((8, 2))  # every cell at one point: self need not come first
    neighbors = metrics._knn(points, 7)
    for i, row in enumerate(neighbors):
        assert sorted(row) == [j for j in range(8) if j != i]
    query = np.array([5, 2])
    assert all(i not in row for i, row in zip(query, metrics._knn(points, 3, query)))


# -- entropy of batch mixing -----------------------------------------------------------


def test_entropy_batch_mixing_mixed_vs_separated():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(400, 2))
    mixed = rng.permutation(np.repeat([0, 1], 200))
    score = entropy_batch_mixing(latent, mixed, n_neighbors=50)
    # E[H] of Binomial(50, 1/2) frequencies is log 2 - 1/(2 * 50) + O(k^-2) ≈ 0.683
    assert abs(score - math.log(2)) < 0.03
    apart, _ = _blobs(200, 2)
    assert entropy_batch_mixing(apart, np.repeat(["a", "b"], 200), n_neighbors=50) == 0.0
    three = rng.permutation(np.repeat([0, 1, 2], 134)[:400])
    score3 = entropy_batch_mixing(latent, three, n_neighbors=50)
    assert math.log(2) < score3 <= math.log(3) and abs(score3 - math.log(3)) < 0.05


def test_entropy_batch_mixing_matches_brute_force_and_is_seeded():
    rng = np.random.default_rng(2)
    latent, batch = rng.normal(size=(60, 3)), rng.integers(0, 3, 60)
    k, pools, per_pool = 7, 3, 11
    score = entropy_batch_mixing(latent, batch, k, pools, per_pool, seed=5)
    drawn = np.random.default_rng(5).integers(0, 60, size=pools * per_pool)
    dist = np.linalg.norm(latent[:, None] - latent[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    entropies = []
    for i in drawn:
        freq = np.bincount(batch[np.argsort(dist[i])[:k]], minlength=3) / k
        entropies.append(scipy.stats.entropy(freq))
    assert score == pytest.approx(np.mean(entropies), abs=1e-12)
    assert score == entropy_batch_mixing(latent, batch, k, pools, per_pool, seed=5)
    assert score != entropy_batch_mixing(latent, batch, k, pools, per_pool, seed=6)


# -- kNN purity, clustering, label accuracy ----------------------------------------------


def test_knn_purity_separated_and_brute_force_definition():
    latent, labels = _blobs(30, 3)
    assert knn_purity(latent, labels, n_neighbors=10) == 1.0
    rng = np.random.default_rng(3)
    points, lab = rng.normal(size=(50, 2)), rng.choice(["x", "y", "z"], 50, p=[0.6, 0.3, 0.1])
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    per_cell = np.array([np.mean(lab[np.argsort(d)[:6]] == lab[i]) for i, d in enumerate(dist)])
    expected = np.mean([per_cell[lab == c].mean() for c in np.unique(lab)])  # per-label mean
    assert knn_purity(points, lab, n_neighbors=6) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("algorithm", ["knn", "kmeans", "gmm"])
def test_clustering_scores_perfect_clusters(algorithm):
    latent, labels = _blobs(25, 3)
    scores = clustering_scores(latent, labels + 7, prediction_algorithm=algorithm)
    assert set(scores) == {"silhouette", "nmi", "ari", "uca"}
    assert scores["ari"] == pytest.approx(1.0) and scores["nmi"] == pytest.approx(1.0)
    assert scores["uca"] == 1.0 and scores["silhouette"] > 0.9


def test_clustering_scores_random_labels_and_accuracy_matching():
    latent, _ = _blobs(25, 3)
    random_labels = np.random.default_rng(4).integers(0, 3, 75)
    scores = clustering_scores(latent, random_labels)
    assert abs(scores["ari"]) < 0.1 and scores["silhouette"] < 0.1
    truth, predicted = np.array([0, 0, 0, 1, 1, 2]), np.array([1, 1, 0, 0, 0, 2])
    assert metrics._clustering_accuracy(truth, predicted) == pytest.approx(5 / 6)


def test_label_accuracy_separated_random_and_given_split():
    latent, labels = _blobs(20, 2)
    assert label_accuracy(latent, labels, n_neighbors=5) == 1.0
    rng = np.random.default_rng(5)
    points, random_labels = rng.normal(size=(400, 2)), rng.integers(0, 2, 400)
    assert abs(label_accuracy(points, random_labels) - 0.5) < 0.12
    train = np.arange(40) % 2 == 0
    assert label_accuracy(latent, labels, train_indices=train, n_neighbors=3) == 1.0
    assert label_accuracy(latent, labels, train_indices=np.flatnonzero(train)) == 1.0
    with pytest.raises(ValueError, match="train_indices"):
        label_accuracy(latent, labels, train_indices=np.arange(40))
    with pytest.raises(ValueError, match="n_neighbors"):
        label_accuracy(latent, labels, train_indices=[0, 1], n_neighbors=3)
    with pytest.raises(ValueError, match="test_fraction"):
        label_accuracy(latent, labels, test_fraction=1.0)


# -- nearest-neighbour overlap ---------------------------------------------------------


def test_nn_overlap_identical_vs_unrelated():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 4))
    spearman, enrichment = nn_overlap_score(x, 3.0 * x + 1.0, n_neighbors=20)
    assert spearman == pytest.approx(1.0) and enrichment == pytest.approx(299 / 20)
    spearman, enrichment = nn_overlap_score(x, rng.normal(size=(300, 4)), n_neighbors=20)
    assert abs(spearman) < 0.03 and abs(enrichment - 1.0) < 0.35


def test_nn_overlap_closed_form_equals_spearman_of_adjacency():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(30, 2))
    b = a + rng.normal(scale=0.5, size=(30, 2))  # related, not identical
    k = 5

    def adjacency(points):
        out = np.zeros((30, 30))
        np.put_along_axis(out, metrics._knn(points, k), 1.0, axis=1)
        return out[~np.eye(30, dtype=bool)]  # off-diagonal pairs

    adj_a, adj_b = adjacency(a), adjacency(b)
    spearman, enrichment = nn_overlap_score(a, b, n_neighbors=k)
    assert spearman == pytest.approx(scipy.stats.spearmanr(adj_a, adj_b)[0], abs=1e-12)
    expected = (adj_a * adj_b).sum() * adj_a.size / (adj_a.sum() * adj_b.sum())
    assert enrichment == pytest.approx(expected)
    assert 0.1 < spearman < 1.0 and enrichment > 1.5


# -- argument errors -------------------------------------------------------------------


def test_argument_errors_name_the_argument():
    latent, labels = _blobs(5, 2)
    with pytest.raises(ValueError, match="n_neighbors"):
        knn_purity(latent, labels, n_neighbors=10)
    with pytest.raises(ValueError, match="n_neighbors"):
        entropy_batch_mixing(latent, labels, n_neighbors=0)
    with pytest.raises(ValueError, match="`labels` has 9 values"):
        knn_purity(latent, labels[:9], n_neighbors=2)
    with pytest.raises(ValueError, match="`batch` must be 1-D"):
        entropy_batch_mixing(latent, labels[:, None], n_neighbors=2)
    with pytest.raises(ValueError, match="`latent` must be a 2-D"):
        knn_purity(latent[:, 0], labels)
    with pytest.raises(ValueError, match="finite"):
        knn_purity(np.full((10, 2), np.nan), labels)
    with pytest.raises(ValueError, match="prediction_algorithm"):
        clustering_scores(latent, labels, prediction_algorithm="dbscan")
    with pytest.raises(ValueError, match="distinct"):
        clustering_scores(latent, np.zeros(10))
    with pytest.raises(ValueError, match="`protein` has 9 cells"):
        nn_overlap_score(latent, latent[:9], n_neighbors=2)
    with pytest.raises(ValueError, match="n_cells - 1"):
        nn_overlap_score(latent, latent, n_neighbors=9)
    with pytest.raises(ValueError, match="missing"):
        knn_purity(latent, [None] + ["a"] * 9, n_neighbors=2)


# -- corruption and imputation ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
@pytest.mark.parametrize("corruption", ["uniform", "binomial"])
def test_corrupt_counts_contract(fmt, corruption):
    dense = _counts() * 3
    x = dense if fmt == "dense" else sp.csr_matrix(dense).asformat(fmt)
    adata = anndata.AnnData(x.copy())
    adata.obs["batch"] = np.repeat(["a", "b"], 20)
    adata.uns["_sbi_vi_setup"] = {"layer": None, "batch_key": "batch"}
    corrupted, rows, cols, values = corrupt_counts(adata, 0.25, corruption, seed=3)

    nnz = np.count_nonzero(dense)
    assert len(rows) == len(cols) == len(values) == int(np.floor(0.25 * nnz))
    assert len(set(zip(rows, cols))) == len(rows)  # distinct entries
    np.testing.assert_array_equal(values, dense[rows, cols])
    assert (values > 0).all() and values.dtype == dense.dtype
    new = corrupted.X.toarray() if sp.issparse(corrupted.X) else corrupted.X
    if corruption == "uniform":
        assert (new[rows, cols] == 0).all()
    else:
        assert (new[rows, cols] <= values).all() and (new[rows, cols] < values).mean() > 0.8
    restored = new.copy()
    restored[rows, cols] = values
    np.testing.assert_array_equal(restored, dense)  # nothing else changed
    # the input is untouched, the copy keeps format, obs and the model set-up
    current = adata.X.toarray() if sp.issparse(adata.X) else adata.X
    np.testing.assert_array_equal(current, dense)
    if fmt == "dense":
        assert isinstance(corrupted.X, np.ndarray)
    else:
        assert corrupted.X.format == fmt and (corrupted.X.data != 0).all()
    assert corrupted.uns["_sbi_vi_setup"] == adata.uns["_sbi_vi_setup"]
    assert list(corrupted.obs["batch"]) == list(adata.obs["batch"])
    again = corrupt_counts(adata, 0.25, corruption, seed=3)
    np.testing.assert_array_equal(again[1], rows)
    np.testing.assert_array_equal(again[2], cols)
    other = corrupt_counts(adata, 0.25, corruption, seed=4)
    assert not np.array_equal(other[1] * 100 + other[2], rows * 100 + cols)


def test_corrupt_counts_layer_and_errors():
    adata = anndata.AnnData(np.zeros((40, 15), dtype=np.float32))
    adata.layers["counts"] = _counts()
    adata.uns["_sbi_vi_setup"] = {"layer": "counts"}
    corrupted, rows, cols, _ = corrupt_counts(adata, 0.5)  # the set-up's layer by default
    assert (corrupted.layers["counts"][rows, cols] == 0).all() and not corrupted.X.any()
    with pytest.raises(ValueError, match="rate"):
        corrupt_counts(adata, 1.5)
    with pytest.raises(ValueError, match="corruption"):
        corrupt_counts(adata, 0.1, corruption="gaussian")
    with pytest.raises(ValueError, match="layer"):
        corrupt_counts(adata, 0.1, layer="missing")
    adata.layers["counts"][0, 0] = 1.5
    with pytest.raises(ValueError, match="whole-number"):
        corrupt_counts(adata, 0.1, corruption="binomial")
    assert len(corrupt_counts(adata, 0.0)[1]) == 0
    hundred = anndata.AnnData(np.ones((10, 10)))
    assert len(corrupt_counts(hundred, 0.29)[1]) == 29  # floor(0.29 * 100) despite rounding
    as_array = anndata.AnnData(sp.csr_array(_counts()))
    assert isinstance(corrupt_counts(as_array, 0.1)[0].X, sp.csr_array)


def test_imputation_score_arithmetic_and_errors():
    assert imputation_score([1.0, 2.0, 5.0, 10.0], [1, 4, 1, 4]) == pytest.approx(3.0)
    assert imputation_score(np.array([3.0]), np.array([3])) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        imputation_score([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        imputation_score([], [])


class _FakeModel:
    """A model whose expected counts are a known matrix."""

    def __init__(self, expected: np.ndarray):
        self.expected = expected
        self.adata = anndata.AnnData(np.zeros_like(expected))
        self.calls: list[dict] = []

    def get_normalized_expression(self, adata=None, indices=None, **kwargs):
        self.calls.append({"indices": indices, **kwargs})
        return self.expected[indices]


def test_imputation_benchmark_reads_the_expected_counts_at_the_entries(tmp_path):
    expected = np.arange(1.0, 41.0).reshape(8, 5)
    model = _FakeModel(expected)
    rows, cols = np.array([6, 1, 6, 3]), np.array([0, 4, 2, 2])
    original = np.array([30.0, 12.0, 30.0, 10.0])
    result = imputation_benchmark(model, rows, cols, original, n_samples=3)
    np.testing.assert_array_equal(result["imputed"], [31.0, 10.0, 33.0, 18.0])
    np.testing.assert_array_equal(result["original"], original)
    assert result["median_absolute_error"] == pytest.approx(2.5)  # |errors| = 1, 2, 3, 8
    assert result["mean_absolute_error"] == pytest.approx(3.5)
    assert result["mean_cell_median_absolute_error"] == pytest.approx((2 + 2 + 8) / 3)
    call = model.calls[0]
    assert call["library_size"] == "latent" and call["n_samples"] == 3
    np.testing.assert_array_equal(call["indices"], [1, 3, 6])
    assert "figure" not in result
    path = tmp_path / "imputation.png"
    result = imputation_benchmark(model, rows, cols, original, save_path=path)
    assert isinstance(result["figure"], Figure) and path.stat().st_size > 0
    with pytest.raises(ValueError, match="count matrix"):
        imputation_benchmark(model, [8], [0], [1.0])
    with pytest.raises(ValueError, match="one length"):
        imputation_benchmark(model, [1, 2], [0], [1.0])


# -- embedding -------------------------------------------------------------------------


def test_embedding_plot_shapes_figure_and_errors(tmp_path):
    latent, labels = _blobs(30, 2, dim=5)
    with threadpool_limits(1):  # OpenMP t-SNE is slow on oversubscribed cores
        embedding, indices, figure = embedding_plot(
            latent, color=labels, n_samples=40, return_indices=True, title="t"
        )
    assert embedding.shape == (40, 2) and np.isfinite(embedding).all()
    assert isinstance(figure, Figure) and figure.axes[0].get_title() == "t"
    assert len(np.unique(indices)) == 40 and (np.diff(indices) > 0).all()
    texts = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert texts == ["0", "1"]
    # a 2-D latent is drawn as is, into a given axes, and saved
    ax = Figure().add_subplot()
    path = tmp_path / "embedding.png"
    points, fig = embedding_plot(latent[:, :2], ax=ax, n_samples=None, save_path=path)
    np.testing.assert_array_equal(points, latent[:, :2])
    assert fig is ax.figure and path.stat().st_size > 0
    with pytest.raises(ValueError, match="method"):
        embedding_plot(latent, method="pca")
    with pytest.raises(ValueError, match="`color` has 3 values"):
        embedding_plot(latent, color=[1, 2, 3])
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="umap-learn"):
            embedding_plot(latent, method="umap")


# -- the mixin on a trained SCVI -------------------------------------------------------


def test_evaluation_mixin_end_to_end_on_a_tiny_scvi():
    from sbi_vi.singlecell import SCVI, synthetic_counts

    assert issubclass(SCVI, EvaluationMixin)
    _M = SCVI

    adata = synthetic_counts(300, 50, n_de_genes=4, seed=0)
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    protein = np.random.default_rng(0).poisson(5.0 * (1 + types[:, None] * np.arange(1, 6)))
    adata.obsm["protein_expression"] = protein
    _M.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    corrupted, rows, cols, values = corrupt_counts(adata, rate=0.1)  # keeps the set-up
    model = _M(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=10, show_progress_bar=False, seed=0)

    latent = model.get_latent_representation()
    labels = adata.obs["cell_type"].to_numpy()
    with threadpool_limits(1):
        ebm = model.entropy_batch_mixing(n_neighbors=20)
        assert 0.0 <= ebm <= math.log(2)
        assert ebm == entropy_batch_mixing(latent, adata.obs["batch"].to_numpy(), 20)
        purity = model.knn_purity(n_neighbors=10)
        assert purity == knn_purity(latent, labels, n_neighbors=10) > 0.3  # chance: 0.2
        assert model.knn_purity(labels_key="cell_type", n_neighbors=10) == purity
        some = np.arange(0, 300, 2)
        assert model.knn_purity(indices=some, n_neighbors=10) == knn_purity(
            latent[some], labels[some], n_neighbors=10
        )
        scores = model.clustering_scores(prediction_algorithm="kmeans")
        assert set(scores) == {"silhouette", "nmi", "ari", "uca"}
        assert 0.0 <= model.label_accuracy() <= 1.0
        spearman, enrichment = model.nn_overlap_score(n_neighbors=20)
        assert -1.0 <= spearman <= 1.0 and enrichment >= 0.0
        embedding, figure = model.embedding_plot(color_by="batch", n_samples=60)
        assert embedding.shape == (60, 2) and isinstance(figure, Figure)
        texts = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
        assert texts == ["batch_0", "batch_1"]
        _, figure = model.embedding_plot(color_by="labels", n_samples=60)
        assert len(figure.axes[0].get_legend().get_texts()) == 5
    one_batch = np.flatnonzero(adata.obs["batch"].to_numpy() == "batch_0")
    with pytest.raises(ValueError, match="at least two batches"):
        model.entropy_batch_mixing(indices=one_batch)
    with pytest.raises(ValueError, match="protein_key"):
        model.nn_overlap_score(protein_key="adt")
    with pytest.raises(ValueError, match="color_by"):
        model.embedding_plot(color_by="no_such_column")

    imputer = _M(corrupted, n_latent=3, n_hidden=16)
    imputer.train(max_epochs=10, show_progress_bar=False, seed=0)
    result = imputer.imputation_benchmark(rows, cols, values, n_samples=2)
    assert len(result["imputed"]) == len(rows) and (result["imputed"] > 0).all()
    assert 0.0 < result["median_absolute_error"] < np.median(values)
