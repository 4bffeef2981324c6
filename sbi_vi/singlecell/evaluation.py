"""Latent-space and imputation benchmarks as model methods (classic scVI's ``Posterior``).

:class:`EvaluationMixin` is a plain class (no base): every method reads the model's
latent representation (posterior means of q(z | x)) of the chosen cells and the labels,
batches or protein measurements of those cells, and calls the matching function of
:mod:`sbi_vi.singlecell.metrics`, where the definitions and references are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from sbi_vi.singlecell import imputation, metrics, plots
from sbi_vi.singlecell.fields import AnnDataSetup
from sbi_vi.singlecell.loader import resolve_indices

__all__ = ["EvaluationMixin"]


class EvaluationMixin:
    """Benchmarks of a trained model: batch mixing, purity, clustering, imputation, t-SNE.

    A mixin for single-cell models: it needs, from the class it is mixed into,
    ``get_latent_representation(adata, indices)`` (``[n_cells, n_latent]``), ``setup``
    (the :class:`~sbi_vi.singlecell.fields.AnnDataSetup`, for batch and label codes),
    ``adata`` (the model's AnnData) and ``_validate_adata(adata)`` (the AnnData to read,
    checked against the set-up), and ``get_normalized_expression`` for
    :meth:`imputation_benchmark`.

    In every method, ``adata=None`` means the model's AnnData and ``indices`` selects cells
    (positions or a boolean mask; default: all).

    Example:
        >>> from sbi_vi.singlecell import SCVI as Model, synthetic_counts
        >>> adata = synthetic_counts(60, 30, n_de_genes=4, seed=0)
        >>> Model.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
        >>> model = Model(adata, n_latent=2, n_hidden=16)
        >>> model.train(max_epochs=2, show_progress_bar=False, seed=0)
        >>> 0.0 <= model.knn_purity(n_neighbors=5) <= 1.0
        True
        >>> sorted(model.clustering_scores())
        ['ari', 'nmi', 'silhouette', 'uca']
    """

    # provided by the model class (declarations only: nothing is defined here)
    adata: Any
    setup: AnnDataSetup
    get_latent_representation: Callable[..., Any]
    get_normalized_expression: Callable[..., Any]
    _validate_adata: Callable[[Any], Any]

    # -- what the methods read ---------------------------------------------------------

    def _eval_cells(
        self, adata: Any | None, indices: Sequence[int] | np.ndarray | None
    ) -> tuple[Any, np.ndarray, np.ndarray]:
        """``(adata, positions, latent)`` of the chosen cells."""
        data = self._validate_adata(adata)
        idx = resolve_indices(indices, data.n_obs)
        latent = self.get_latent_representation(adata, idx)
        return data, idx, np.asarray(latent)

    def _eval_labels(self, data: Any, idx: np.ndarray, labels_key: str | None) -> np.ndarray:
        """Labels of the cells: ``obs[labels_key]``, else the set-up's label names."""
        setup = self.setup
        if labels_key is None:
            if setup.labels_key is None:
                raise ValueError(
                    "The model was set up without `labels_key`; pass `labels_key`, an "
                    "`adata.obs` column with the cell labels."
                )
            names = np.asarray(setup.labels_categories, dtype=object)
            return names[setup.labels_codes(data)[idx]]
        return _obs_column(data, labels_key, "labels_key")[idx]

    # -- latent-space metrics ----------------------------------------------------------

    def entropy_batch_mixing(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        **kwargs: Any,
    ) -> float:
        """Entropy of batch mixing of the latent space (higher: batches better mixed).

        The batches are the set-up's ``batch_key``; see
        :func:`~sbi_vi.singlecell.metrics.entropy_batch_mixing` (range ``[0, log n_batches]``).

        Args:
            adata: AnnData (default: the model's).
            indices: Cells to use.
            **kwargs: ``n_neighbors``, ``n_pools``, ``n_samples_per_pool``, ``seed``.

        Raises:
            ValueError: The chosen cells come from fewer than two batches.
        """
        data, idx, latent = self._eval_cells(adata, indices)
        batch = self.setup.batch_codes(data)[idx]
        if np.unique(batch).size < 2:
            raise ValueError(
                "Entropy of batch mixing needs cells from at least two batches; the chosen "
                f"cells are all in batch {self.setup.batch_categories[batch[0]]!r}."
            )
        return metrics.entropy_batch_mixing(latent, batch, **kwargs)

    def knn_purity(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        labels_key: str | None = None,
        **kwargs: Any,
    ) -> float:
        """kNN purity of the labels in the latent space (1: pure neighbourhoods).

        See :func:`~sbi_vi.singlecell.metrics.knn_purity`.

        Args:
            adata: AnnData (default: the model's).
            indices: Cells to use.
            labels_key: ``obs`` column of the labels (default: the set-up's labels).
            **kwargs: ``n_neighbors``.
        """
        data, idx, latent = self._eval_cells(adata, indices)
        return metrics.knn_purity(latent, self._eval_labels(data, idx, labels_key), **kwargs)

    def clustering_scores(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        labels_key: str | None = None,
        prediction_algorithm: Literal["knn", "kmeans", "gmm"] = "knn",
        **kwargs: Any,
    ) -> dict[str, float]:
        """Silhouette, NMI, ARI and clustering accuracy of the latent space.

        See :func:`~sbi_vi.singlecell.metrics.clustering_scores`.

        Args:
            adata: AnnData (default: the model's).
            indices: Cells to use.
            labels_key: ``obs`` column of the labels (default: the set-up's labels).
            prediction_algorithm: ``"knn"`` / ``"kmeans"`` (k-means) or ``"gmm"``.
            **kwargs: ``n_clusters``, ``seed``, ``n_init``.

        Returns:
            ``{"silhouette", "nmi", "ari", "uca"}``.
        """
        data, idx, latent = self._eval_cells(adata, indices)
        labels = self._eval_labels(data, idx, labels_key)
        return metrics.clustering_scores(
            latent, labels, prediction_algorithm=prediction_algorithm, **kwargs
        )

    def nn_overlap_score(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        protein_key: str = "protein_expression",
        protein_transform: Literal["clr", "none"] = "clr",
        **kwargs: Any,
    ) -> tuple[float, float]:
        """Agreement of the latent and protein nearest-neighbour graphs (CITE-seq).

        See :func:`~sbi_vi.singlecell.metrics.nn_overlap_score`.

        Args:
            adata: AnnData (default: the model's).
            indices: Cells to use.
            protein_key: ``obsm`` key of the protein counts ``[n_cells, n_proteins]`` (an
                array or a DataFrame).
            protein_transform: ``"clr"``: the centred log-ratio ``log(1 + y) − mean``
                over the proteins of the cell (as classic scVI's ``protein_expression_clr``;
                needs non-negative counts); ``"none"``: use the values as they are.
            **kwargs: ``n_neighbors``.

        Returns:
            ``(spearman_correlation, fold_enrichment)``.

        Raises:
            ValueError: No ``obsm[protein_key]``, or negative values with ``"clr"``.
        """
        if protein_transform not in ("clr", "none"):
            raise ValueError(
                f"`protein_transform` must be 'clr' or 'none', got {protein_transform!r}."
            )
        data, idx, latent = self._eval_cells(adata, indices)
        if protein_key not in data.obsm:
            raise ValueError(
                f"`adata.obsm` has no {protein_key!r} (`protein_key`); keys: {list(data.obsm)}."
            )
        protein = data.obsm[protein_key]
        protein = protein.to_numpy() if hasattr(protein, "to_numpy") else protein
        protein = protein.toarray() if hasattr(protein, "toarray") else np.asarray(protein)
        protein = np.asarray(protein, dtype=np.float64)[idx]
        if protein_transform == "clr":
            if (protein < 0).any():
                raise ValueError(
                    f"`adata.obsm[{protein_key!r}]` has negative values; pass "
                    "`protein_transform='none'` if it is already transformed."
                )
            log = np.log1p(protein)
            protein = log - log.mean(axis=1, keepdims=True)
        return metrics.nn_overlap_score(latent, protein, **kwargs)

    def label_accuracy(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        labels_key: str | None = None,
        **kwargs: Any,
    ) -> float:
        """Accuracy of a kNN classifier of the labels on the latent space.

        See :func:`~sbi_vi.singlecell.metrics.label_accuracy`; ``train_indices`` (if given)
        are positions among the chosen cells.

        Args:
            adata: AnnData (default: the model's).
            indices: Cells to use.
            labels_key: ``obs`` column of the labels (default: the set-up's labels).
            **kwargs: ``train_indices``, ``n_neighbors``, ``test_fraction``, ``seed``.
        """
        data, idx, latent = self._eval_cells(adata, indices)
        return metrics.label_accuracy(latent, self._eval_labels(data, idx, labels_key), **kwargs)

    # -- imputation and pictures -------------------------------------------------------

    def imputation_benchmark(
        self,
        rows: Any,
        cols: Any,
        original_values: Any,
        adata: Any | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Imputation errors at the entries hidden by ``corrupt_counts``.

        The entries come from :func:`~sbi_vi.singlecell.imputation.corrupt_counts`, and the
        model must have been trained on the corrupted AnnData; see
        :func:`~sbi_vi.singlecell.imputation.imputation_benchmark`.

        Args:
            rows: Cell positions of the corrupted entries.
            cols: Gene positions.
            original_values: Their original counts.
            adata: The corrupted AnnData (default: the model's).
            **kwargs: ``n_samples``, ``show_plot``, ``save_path``.
        """
        return imputation.imputation_benchmark(
            self, rows, cols, original_values, adata=adata, **kwargs
        )

    def embedding_plot(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        color_by: str | None = "labels",
        method: Literal["tsne", "umap"] = "tsne",
        n_samples: int | None = 1000,
        save_path: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, Any] | tuple[np.ndarray, np.ndarray, Any]:
        """A t-SNE (or UMAP) picture of the latent space (classic scVI's ``show_t_sne``).

        See :func:`~sbi_vi.singlecell.plots.embedding_plot`.

        Args:
            adata: AnnData (default: the model's).
            indices: Cells to use.
            color_by: ``"labels"`` (the set-up's labels), ``"batch"`` (the set-up's
                batches), another ``obs`` column, or ``None`` (one colour).
            method: ``"tsne"`` or ``"umap"``.
            n_samples: Cells drawn at random for the picture (``None``: all).
            save_path: Save the figure to this file.
            **kwargs: ``seed``, ``ax``, ``title``, ``method_kwargs``, ``return_indices``
                (positions among the chosen cells).

        Returns:
            ``(embedding, figure)`` (or ``(embedding, indices, figure)``).

        Raises:
            ValueError: ``color_by="labels"`` without set-up labels, or an unknown column.
        """
        data, idx, latent = self._eval_cells(adata, indices)
        setup = self.setup
        if color_by is None:
            color = None
        elif color_by == "labels" and (setup.labels_key is not None or "labels" not in data.obs):
            if setup.labels_key is None:
                raise ValueError(
                    "`color_by='labels'` but the model was set up without `labels_key`; pass "
                    "an `adata.obs` column name."
                )
            color = self._eval_labels(data, idx, None)
        elif color_by == "batch" and (setup.batch_key is not None or "batch" not in data.obs):
            names = np.asarray(setup.batch_categories, dtype=object)
            color = names[setup.batch_codes(data)[idx]]
        else:
            color = _obs_column(data, color_by, "color_by")[idx]
        return plots.embedding_plot(
            latent, color=color, method=method, n_samples=n_samples, save_path=save_path, **kwargs
        )


def _obs_column(data: Any, key: str, arg: str) -> np.ndarray:
    if not isinstance(key, str) or key not in data.obs:
        raise ValueError(
            f"`{arg}`={key!r} is not a column of `adata.obs` (columns: {list(data.obs)[:10]})."
        )
    column = data.obs[key]
    if column.isna().any():
        raise ValueError(f"`adata.obs[{key!r}]` ({arg}) has missing values.")
    return column.to_numpy()
