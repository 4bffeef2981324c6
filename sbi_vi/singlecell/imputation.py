"""Imputation benchmark (classic scVI): hide counts, retrain, measure their recovery.

- :func:`corrupt_counts` — a copy of the data with a fraction of non-zero counts hidden.
- :func:`imputation_score` — median absolute error of the imputed values.
- :func:`imputation_benchmark` — a model trained on the corrupted copy, scored (and plotted).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sbi_vi.singlecell.fields import SETUP_KEY
from sbi_vi.singlecell.metrics import _choice, _int

__all__ = ["corrupt_counts", "imputation_benchmark", "imputation_score"]

_CORRUPTIONS = ("uniform", "binomial")
_BINOMIAL_P = 0.2  # classic scVI: a corrupted count n becomes Binomial(n, 0.2)


# -- imputation ------------------------------------------------------------------------


def corrupt_counts(
    adata: Any,
    rate: float = 0.1,
    corruption: Literal["uniform", "binomial"] = "uniform",
    layer: str | None = None,
    seed: int | None = 0,
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """A copy of ``adata`` with a fraction of its non-zero counts hidden (scVI imputation).

    Exactly ``floor(rate · nnz)`` of the ``nnz`` non-zero entries are chosen at random
    (without replacement) and corrupted:

    - ``"uniform"``: set to zero (scVI paper: "randomly setting 10% of the non-zero entries
      to zero"; the classic code multiplied them by a Bernoulli(0.9) draw instead, which
      zeroes only about a tenth of the chosen entries);
    - ``"binomial"``: replaced by a ``Binomial(x, 0.2)`` draw (classic scVI), so some keep
      their value by chance (probability ``0.2**x``). Classic scVI chose the entries among
      all entries, zeros included (which stay zero); here among the non-zero ones.

    The copy keeps ``obs``, ``var``, ``obsm``, the other layers and ``uns`` — including the
    model set-up ``uns["_sbi_vi_setup"]``, so a model can be built on the copy directly.
    The input is not modified. Dense and scipy-sparse counts are supported (the copy has
    the same format; stored zeros of a sparse matrix are removed).

    Args:
        adata: An in-memory AnnData of counts.
        rate: Fraction of the non-zero entries to corrupt, in ``[0, 1]``.
        corruption: ``"uniform"`` or ``"binomial"``.
        layer: Layer holding the counts; ``None``: the set-up's count layer if ``adata``
            was set up for a model, else ``adata.X``.
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``(corrupted, rows, cols, original_values)``: the corrupted copy, the cell and gene
        positions of the corrupted entries (int64, row-major order) and their original
        values (the count matrix's dtype).

    Raises:
        ValueError: ``rate`` outside ``[0, 1]``, unknown ``corruption``, a missing layer, a
            backed AnnData, negative counts, or non-integer counts with ``"binomial"``.

    Example:
        >>> import anndata
        >>> adata = anndata.AnnData(np.arange(1.0, 21.0).reshape(4, 5))
        >>> corrupted, rows, cols, values = corrupt_counts(adata, rate=0.25, seed=0)
        >>> len(rows), bool((corrupted.X[rows, cols] == 0).all())
        (5, True)
        >>> bool((adata.X[rows, cols] == values).all())  # the input is unchanged
        True
    """
    if not (hasattr(adata, "obs") and hasattr(adata, "var") and hasattr(adata, "copy")):
        raise ValueError(f"`adata` must be an anndata.AnnData, got {type(adata).__name__}.")
    if getattr(adata, "isbacked", False):
        raise ValueError("`adata` is backed (on disk); load it with `adata.to_memory()` first.")
    ok = isinstance(rate, int | float) and not isinstance(rate, bool)
    if not (ok and 0.0 <= float(rate) <= 1.0):
        raise ValueError(f"`rate` must lie in [0, 1], got {rate!r}.")
    corruption = _choice("corruption", corruption, _CORRUPTIONS)
    if layer is None:
        layer = (adata.uns.get(SETUP_KEY) or {}).get("layer") or None
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"`layer`={layer!r} is not a layer of `adata` ({list(adata.layers)}).")
    counts = adata.X if layer is None else adata.layers[layer]
    if counts is None:
        raise ValueError("`adata.X` is empty; pass the `layer` that holds the counts.")
    where = "`adata.X`" if layer is None else f"`adata.layers[{layer!r}]`"

    if sp.issparse(counts):
        matrix = sp.csr_matrix(counts, copy=True)
        matrix.sum_duplicates()  # canonical: sorted column indices, row-major data
        positions = np.flatnonzero(matrix.data)
        values = matrix.data[positions]
        rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))[positions]
        cols = matrix.indices[positions].astype(np.int64)
    else:
        matrix = np.array(counts, copy=True)
        if matrix.ndim != 2:
            raise ValueError(f"{where} must be a 2-D count matrix, got shape {matrix.shape}.")
        rows, cols = np.nonzero(matrix)
        values = matrix[rows, cols]
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{where} must hold numbers, got dtype {values.dtype}.")
    if (values < 0).any():
        raise ValueError(f"{where} must hold non-negative counts.")
    if corruption == "binomial" and not np.array_equal(values, np.round(values)):
        raise ValueError(f'{where} must hold whole-number counts for corruption="binomial".')

    rng = np.random.default_rng(seed)
    n_corrupt = int(np.floor(round(float(rate) * len(values), 9)))  # 0.29 * 100 is 29
    chosen = np.sort(rng.choice(len(values), n_corrupt, replace=False))
    original = values[chosen]
    if corruption == "uniform":
        new = np.zeros_like(original)
    else:
        new = rng.binomial(original.astype(np.int64), _BINOMIAL_P).astype(values.dtype)
    if sp.issparse(counts):
        matrix.data[positions[chosen]] = new
        matrix.eliminate_zeros()
        matrix = matrix.asformat(counts.format)
        if isinstance(counts, sp.sparray):  # keep sparse arrays arrays, matrices matrices
            matrix = type(counts)(matrix)
    else:
        matrix[rows[chosen], cols[chosen]] = new

    corrupted = adata.copy()
    if layer is None:
        corrupted.X = matrix
    else:
        corrupted.layers[layer] = matrix
    return (
        corrupted,
        np.asarray(rows[chosen], dtype=np.int64),
        np.asarray(cols[chosen], dtype=np.int64),
        original,
    )


def _entries(rows: Any, cols: Any, values: Any, name: str) -> tuple[np.ndarray, ...]:
    rows, cols, values = np.asarray(rows), np.asarray(cols), np.asarray(values)
    if not (rows.ndim == cols.ndim == values.ndim == 1 and len(rows) == len(cols) == len(values)):
        raise ValueError(
            f"`rows`, `cols` and `{name}` must be 1-D of one length, got shapes {rows.shape}, "
            f"{cols.shape}, {values.shape}."
        )
    if len(rows) == 0:
        raise ValueError("No corrupted entries: `rows` is empty (was `rate` too small?).")
    for arg, array in (("rows", rows), ("cols", cols)):
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
            raise ValueError(f"`{arg}` must hold non-negative integer positions.")
    return rows.astype(np.int64), cols.astype(np.int64), values.astype(np.float64)


def imputation_score(imputed_values: Any, original_values: Any) -> float:
    """Median absolute imputation error ``median |imputed − original|`` (classic scVI).

    Args:
        imputed_values: Imputed values of the corrupted entries, shape ``[n_entries]``.
        original_values: Their original counts, shape ``[n_entries]``.

    Returns:
        The median absolute error (lower is better).

    Raises:
        ValueError: Different shapes, no entries, or non-finite values.

    Example:
        >>> imputation_score([1.0, 2.0, 5.0], [1, 4, 1])
        2.0
    """
    imputed = np.asarray(imputed_values, dtype=np.float64).ravel()
    original = np.asarray(original_values, dtype=np.float64).ravel()
    if np.shape(imputed_values) != np.shape(original_values):
        raise ValueError(
            f"`imputed_values` {np.shape(imputed_values)} and `original_values` "
            f"{np.shape(original_values)} must have the same shape."
        )
    if imputed.size == 0:
        raise ValueError("`imputed_values` is empty: there are no corrupted entries to score.")
    if not (np.isfinite(imputed).all() and np.isfinite(original).all()):
        raise ValueError("`imputed_values` and `original_values` must be finite.")
    return float(np.median(np.abs(imputed - original)))


def imputation_benchmark(
    model: Any,
    rows: Any,
    cols: Any,
    original_values: Any,
    n_samples: int = 1,
    show_plot: bool = False,
    save_path: str | os.PathLike | None = None,
    adata: Any | None = None,
) -> dict[str, Any]:
    """How well a model trained on corrupted counts recovers the hidden ones.

    The imputed value of a corrupted entry ``(n, g)`` is the model's expected count
    ``E[x_ng | z, ℓ] = ℓ_n ρ_ng`` (``get_normalized_expression(library_size="latent")``,
    averaged over ``n_samples`` draws of q(z, ℓ | x) — classic scVI's ``px_rate``) computed
    from the corrupted data.

    Args:
        model: A model with ``get_normalized_expression`` (e.g. ``SCVI``) trained on the
            corrupted AnnData.
        rows: Cell positions of the corrupted entries, ``[n_entries]``.
        cols: Gene positions, ``[n_entries]``.
        original_values: Their original counts, ``[n_entries]``.
        n_samples: Draws of the latent variables averaged per cell.
        show_plot: Draw the original-vs-imputed figure (returned under ``"figure"``;
            ``plt.show()`` is never called, so it works with any backend).
        save_path: Also save that figure to this file (implies drawing it).
        adata: The corrupted AnnData (default: the model's own).

    Returns:
        ``{"median_absolute_error", "mean_absolute_error",
        "mean_cell_median_absolute_error", "imputed", "original"}`` (+ ``"figure"``): the
        median absolute error (classic scVI's imputation score), the mean absolute error,
        the mean over cells of the per-cell median absolute error (classic scVI's second
        number, over the cells with a corrupted entry), and the imputed and original
        values, ``[n_entries]`` each (float64).

    Raises:
        ValueError: Mismatched or empty entries, or positions outside the count matrix.

    Example:
        >>> from sbi_vi.singlecell import SCVI, synthetic_counts
        >>> adata = synthetic_counts(60, 30, n_de_genes=4, seed=0)
        >>> SCVI.setup_anndata(adata)
        >>> corrupted, rows, cols, values = corrupt_counts(adata, rate=0.1, seed=0)
        >>> model = SCVI(corrupted, n_latent=2, n_hidden=16)  # the copy is set up
        >>> model.train(max_epochs=2, show_progress_bar=False, seed=0)
        >>> result = imputation_benchmark(model, rows, cols, values)
        >>> result["imputed"].shape == values.shape, result["median_absolute_error"] > 0
        (True, True)
    """
    rows, cols, original = _entries(rows, cols, original_values, "original_values")
    n_samples = _int("n_samples", n_samples)
    data = model.adata if adata is None else adata
    n_obs, n_vars = data.shape
    if rows.max() >= n_obs or cols.max() >= n_vars:
        raise ValueError(
            f"`rows` / `cols` must index the {n_obs} × {n_vars} count matrix, got maxima "
            f"{rows.max()} and {cols.max()}."
        )
    cells, where = np.unique(rows, return_inverse=True)
    expected = model.get_normalized_expression(
        adata=adata,
        indices=cells,
        library_size="latent",
        n_samples=n_samples,
        return_numpy=True,
    )
    imputed = np.asarray(expected, dtype=np.float64)[where, cols]
    errors = np.abs(imputed - original)
    result: dict[str, Any] = {
        "median_absolute_error": imputation_score(imputed, original),
        "mean_absolute_error": float(errors.mean()),
        "mean_cell_median_absolute_error": float(pd.Series(errors).groupby(rows).median().mean()),
        "imputed": imputed,
        "original": original,
    }
    if show_plot or save_path is not None:
        figure = _imputation_figure(original, imputed, result["median_absolute_error"])
        if save_path is not None:
            figure.savefig(save_path, bbox_inches="tight", dpi=150)
        result["figure"] = figure
    return result


def _imputation_figure(original: np.ndarray, imputed: np.ndarray, median_error: float) -> Any:
    """2-D histogram of original vs imputed counts on log axes, with the identity line."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    positive = np.r_[original[original > 0], imputed[imputed > 0]]
    low = float(positive.min()) if positive.size else 1.0
    high = max(float(positive.max()) if positive.size else 1.0, low * 10.0)
    x, y = np.clip(original, low, None), np.clip(imputed, low, None)
    edges = np.geomspace(low, high * 1.001, 51)
    figure = Figure(figsize=(5.0, 5.0))
    ax = figure.add_subplot()
    *_, image = ax.hist2d(x, y, bins=[edges, edges], cmin=1, cmap="Reds", norm=LogNorm())
    ax.plot([low, high], [low, high], color="black", linestyle=":", label="imputed = original")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Original counts")
    ax.set_ylabel("Imputed counts (expected)")
    ax.set_title(f"Imputation: median |error| = {median_error:.3g}")
    ax.legend(loc="upper left", frameon=False)
    figure.colorbar(image, ax=ax, label="entries")
    return figure
