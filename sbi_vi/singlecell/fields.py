"""AnnData set-up: declared fields, validated once, and transferred to new data.

``setup_anndata`` records which parts of an ``AnnData`` the model reads — the count
``layer`` (or ``X``), the batch, label and size-factor columns of ``obs``, categorical and
continuous covariates — in a :class:`AnnDataSetup` (a frozen record, stored as a plain dict
in ``adata.uns["_sbi_vi_setup"]`` so it survives ``write_h5ad``). Categories are encoded
once; a model trained on one AnnData re-encodes another with the same codes
(:meth:`AnnDataSetup.transfer`), so genes in another order or an unseen batch are clear
errors instead of silently wrong numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "SETUP_KEY",
    "AnnDataSetup",
    "MissingFieldError",
    "check_counts",
    "find_non_count",
    "get_counts",
    "setup_anndata",
]

SETUP_KEY = "_sbi_vi_setup"
"""Where :func:`setup_anndata` stores its record in ``adata.uns``."""

_CHUNK_ROWS = 4096


class MissingFieldError(ValueError, KeyError):
    """An AnnData lacks a column or layer of the set-up (a ``ValueError``, and a
    ``KeyError`` as scvi-tools raises there)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class AnnDataSetup:
    """The fields a model reads from an AnnData, with their category codes.

    Attributes:
        layer: Layer holding the counts (``None``: ``adata.X``).
        batch_key: ``obs`` column of the batch (``None``: one batch).
        labels_key: ``obs`` column of the cell labels (``None``: none).
        size_factor_key: ``obs`` column of per-cell size factors (``None``: none).
        categorical_covariate_keys: Extra categorical ``obs`` columns.
        continuous_covariate_keys: Extra continuous ``obs`` columns.
        var_names: The genes, in order.
        batch_categories: Batch names in code order.
        labels_categories: Label names in code order.
        covariate_categories: Per categorical covariate, its names in code order.
        is_count_data: Whether the data held non-negative whole numbers at set-up.
    """

    layer: str | None = None
    batch_key: str | None = None
    labels_key: str | None = None
    size_factor_key: str | None = None
    categorical_covariate_keys: tuple[str, ...] = ()
    continuous_covariate_keys: tuple[str, ...] = ()
    var_names: tuple[str, ...] = ()
    batch_categories: tuple[str, ...] = ("0",)
    labels_categories: tuple[str, ...] = ("0",)
    covariate_categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    is_count_data: bool = True

    @property
    def n_vars(self) -> int:
        return len(self.var_names)

    @property
    def n_batch(self) -> int:
        return len(self.batch_categories)

    @property
    def n_labels(self) -> int:
        return len(self.labels_categories)

    @property
    def n_cats_per_cov(self) -> tuple[int, ...]:
        return tuple(len(self.covariate_categories[k]) for k in self.categorical_covariate_keys)

    @property
    def n_continuous_cov(self) -> int:
        return len(self.continuous_covariate_keys)

    def to_dict(self) -> dict[str, Any]:
        """A plain-dict form (lists and strings) that ``h5ad`` files and JSON can hold."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["covariate_categories"] = {k: list(v) for k, v in self.covariate_categories.items()}
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> AnnDataSetup:
        record = dict(record)
        for key in (
            "categorical_covariate_keys",
            "continuous_covariate_keys",
            "var_names",
            "batch_categories",
            "labels_categories",
        ):
            record[key] = tuple(str(v) for v in record.get(key, ()))
        record["covariate_categories"] = {
            str(k): tuple(str(v) for v in vals)
            for k, vals in dict(record.get("covariate_categories", {})).items()
        }
        record["is_count_data"] = bool(record.get("is_count_data", True))
        for key in ("layer", "batch_key", "labels_key", "size_factor_key"):
            value = record.get(key)
            record[key] = None if value is None or value == "" else str(value)
        return cls(**record)

    # -- reading an AnnData with this set-up --------------------------------------------

    def check_compatible(self, adata: Any) -> None:
        """Raise if ``adata`` does not have this set-up's genes, in order, and columns.

        Raises:
            ValueError: Different genes or gene order, or a missing column or layer.
        """
        names = tuple(str(v) for v in adata.var_names)
        if names != self.var_names:
            if set(names) == set(self.var_names):
                raise ValueError(
                    "`adata` has the model's genes in another order; reorder it with "
                    "`adata = adata[:, model.adata.var_names]` first."
                )
            missing = [g for g in self.var_names if g not in set(names)][:5]
            raise ValueError(
                f"`adata` has {len(names)} genes, the model was set up with {self.n_vars}; "
                f"e.g. missing: {missing}."
            )
        if self.layer is not None and self.layer not in adata.layers:
            raise MissingFieldError(
                f"`adata` has no layer {self.layer!r} (the model's count layer)."
            )
        for key in self._obs_keys():
            if key not in adata.obs:
                raise MissingFieldError(
                    f"`adata.obs` has no column {key!r}, which the model reads."
                )

    def _obs_keys(self) -> list[str]:
        keys = [self.batch_key, self.labels_key, self.size_factor_key]
        keys += list(self.categorical_covariate_keys) + list(self.continuous_covariate_keys)
        return [k for k in keys if k is not None]

    def batch_codes(self, adata: Any, dtype: Any = np.int64) -> np.ndarray:
        """Batch code of every cell, shape ``[n_obs]``.

        Args:
            adata: The AnnData.
            dtype: Integer dtype of the codes (``None``: the smallest of int8 / int16 /
                int32 / int64 that holds them).
        """
        return _codes(adata, self.batch_key, self.batch_categories, "batch_key", dtype)

    def labels_codes(self, adata: Any, dtype: Any = np.int64) -> np.ndarray:
        """Label code of every cell, shape ``[n_obs]`` (``dtype`` as in :meth:`batch_codes`)."""
        return _codes(adata, self.labels_key, self.labels_categories, "labels_key", dtype)

    def covariate_codes(self, adata: Any, dtype: Any = np.int64) -> np.ndarray:
        """Codes of the categorical covariates, shape ``[n_obs, n_cat_cov]`` (``dtype`` as in
        :meth:`batch_codes`)."""
        cols = [
            _codes(adata, k, self.covariate_categories[k], "categorical_covariate_keys", dtype)
            for k in self.categorical_covariate_keys
        ]
        if cols:
            return np.stack(cols, 1)
        return np.zeros((adata.n_obs, 0), dtype=_code_dtype(0) if dtype is None else dtype)

    def continuous_covariates(self, adata: Any) -> np.ndarray:
        """The continuous covariates, shape ``[n_obs, n_cont_cov]`` (float32)."""
        cols = []
        for key in self.continuous_covariate_keys:
            values = pd.to_numeric(adata.obs[key], errors="coerce").to_numpy(np.float64)
            if not np.isfinite(values).all():
                bad = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(
                    f"`adata.obs[{key!r}]` (continuous covariate) must be finite numbers; "
                    f"cell {adata.obs_names[bad]!r} has {adata.obs[key].iloc[bad]!r}."
                )
            cols.append(values.astype(np.float32))
        return np.stack(cols, 1) if cols else np.zeros((adata.n_obs, 0), dtype=np.float32)

    def size_factors(self, adata: Any) -> np.ndarray | None:
        """Per-cell size factors, shape ``[n_obs]``, or ``None`` if none were declared."""
        if self.size_factor_key is None:
            return None
        values = pd.to_numeric(adata.obs[self.size_factor_key], errors="coerce").to_numpy()
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError(
                f"`adata.obs[{self.size_factor_key!r}]` (size_factor_key) must hold positive "
                "finite numbers."
            )
        return values.astype(np.float32)

    def transfer(self, adata: Any) -> AnnDataSetup:
        """Check ``adata`` against this set-up (genes, columns, known categories).

        Returns:
            This set-up (the codes of a new AnnData are this set-up's codes).

        Raises:
            ValueError: Genes differ, a column is missing, or a batch / label / covariate
                category was not seen at set-up.
        """
        self.check_compatible(adata)
        self.batch_codes(adata, dtype=None)
        self.labels_codes(adata, dtype=None)
        self.covariate_codes(adata, dtype=None)
        return self


def _code_dtype(n_categories: int) -> np.dtype:
    """The smallest of int8 / int16 / int32 / int64 that holds codes ``0 .. n_categories - 1``."""
    for dtype in (np.int8, np.int16, np.int32):
        if n_categories <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _levels(column: pd.Series) -> tuple[list[str], np.ndarray]:
    """``(names, inverse)``: the distinct values of ``column`` as strings and, per cell, the
    position of its value among them (``-1``: missing).

    No per-cell Python object is made: a categorical column gives its stored codes, any
    other column is factorised by pandas' hash table (an atlas's ``obs`` column of a million
    cells would otherwise become a million strings).
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories], column.cat.codes.to_numpy()
    inverse, uniques = pd.factorize(column, use_na_sentinel=True)
    return [str(v) for v in uniques], inverse


_CELL_BLOCK = 2**16  # cells per step of the per-cell loops (bounded temporaries)


def _lookup(table: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """``table[inverse]`` in blocks of cells, so that no int64 copy of ``inverse`` (numpy's
    index type) is made for all cells at once."""
    out = np.empty(inverse.size, dtype=table.dtype)
    for start in range(0, inverse.size, _CELL_BLOCK):
        out[start : start + _CELL_BLOCK] = table[inverse[start : start + _CELL_BLOCK]]
    return out


def _codes(
    adata: Any, key: str | None, categories: Sequence[str], arg: str, dtype: Any = np.int64
) -> np.ndarray:
    out_dtype = _code_dtype(len(categories)) if dtype is None else np.dtype(dtype)
    if key is None:
        return np.zeros(adata.n_obs, dtype=out_dtype)
    names, inverse = _levels(adata.obs[key])
    lookup = {c: i for i, c in enumerate(categories)}
    # the table's last entry is the code of a missing value (inverse -1): unknown
    table = np.array([lookup.get(n, -1) for n in names] + [-1], dtype=out_dtype)
    codes = _lookup(table, inverse)
    if (codes < 0).any():
        seen = np.unique(inverse[codes < 0])
        unknown = sorted({"nan" if i < 0 else names[i] for i in seen.tolist()})[:5]
        raise ValueError(
            f"`adata.obs[{key!r}]` ({arg}) has categories the model was not set up with: "
            f"{unknown}; known: {list(categories)[:10]}."
        )
    return codes


def _categories(adata: Any, key: str | None, arg: str) -> tuple[str, ...]:
    if key is None:
        return ("0",)
    if key not in adata.obs:
        raise ValueError(f"`{arg}`={key!r} is not a column of `adata.obs`.")
    column = adata.obs[key]
    names, inverse = _levels(column)
    if (inverse < 0).any():
        raise ValueError(f"`adata.obs[{key!r}]` ({arg}) has missing values.")
    present = np.zeros(len(names), dtype=np.int64)
    for start in range(0, inverse.size, _CELL_BLOCK):
        present += np.bincount(inverse[start : start + _CELL_BLOCK], minlength=len(names))
    used = [n for n, p in zip(names, (present > 0).tolist(), strict=True) if p]
    if isinstance(column.dtype, pd.CategoricalDtype):
        return tuple(dict.fromkeys(used))  # category order, as scvi-tools
    return tuple(sorted(set(used)))


def get_counts(adata: Any, layer: str | None) -> Any:
    """The count matrix of ``adata`` (``X`` or ``layers[layer]``): dense, sparse or backed."""
    if layer is None:
        if adata.X is None:
            raise ValueError("`adata.X` is empty; pass the `layer` that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        raise ValueError(
            f"`layer`={layer!r} is not a layer of `adata` (layers: {list(adata.layers)})."
        )
    return adata.layers[layer]


def _bad_masks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(non-finite, not a count)`` masks of ``values``."""
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        return np.zeros(values.shape, dtype=bool), values < 0
    infinite = ~np.isfinite(values)
    return infinite, infinite | (values < 0) | (values != np.round(values))


def _first_bad(chunks: Any, where: str, locate: Any) -> str | None:
    """Scan ``(offset, values)`` chunks: raise at the first non-finite entry, else describe
    the first non-count entry (``locate(offset, position_in_chunk) -> (row, col)``)."""
    found = None
    for offset, values in chunks:
        infinite, bad = _bad_masks(values)
        for mask, fatal in ((infinite, True), (bad, False)):
            if not mask.any() or (not fatal and found is not None):
                continue
            first = np.unravel_index(int(np.flatnonzero(mask.reshape(-1))[0]), mask.shape)
            row, col = locate(offset, first)
            entry = f"entry [{row}, {col}] is {values[first]!r}"
            if fatal:
                raise ValueError(f"{where} must hold finite numbers; {entry}.")
            found = entry
    return found


def find_non_count(matrix: Any, where: str) -> str | None:
    """The first entry of ``matrix`` that is not a count, described, or ``None``.

    Dense arrays and scipy sparse matrices are read in chunks of rows. A backed (on-disk)
    sparse matrix is read straight from its stored non-zero values in slices, so a matrix
    larger than memory is checked without loading it and without growing the process's
    memory with the cells (reading it row block by row block through anndata does).

    Raises:
        TypeError: If the dtype is not numeric.
        ValueError: NaN or inf entries (naming ``where`` and the first one).
    """
    dtype = getattr(matrix, "dtype", None)
    if dtype is None or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise TypeError(f"{where} must hold numbers, got dtype {dtype}.")
    group = getattr(matrix, "group", None)
    if group is not None and all(k in group for k in ("data", "indices", "indptr")):
        return _backed_non_count(group, getattr(matrix, "format", "csr"), where)

    def chunks() -> Any:
        for start in range(0, matrix.shape[0], _CHUNK_ROWS):
            chunk = matrix[start : start + _CHUNK_ROWS]
            if sp.issparse(chunk):
                chunk = sp.csr_matrix(chunk)
                located[start] = chunk
                yield start, chunk.data
            else:
                yield start, np.asarray(chunk)

    located: dict[int, Any] = {}

    def locate(start: int, first: tuple[int, ...]) -> tuple[int, int]:
        chunk = located.get(start)
        if chunk is None:
            return start + int(first[0]), int(first[1])
        pos = int(first[0])  # position in the CSR data array
        row = int(np.searchsorted(chunk.indptr, pos, side="right") - 1)
        return start + row, int(chunk.indices[pos])

    return _first_bad(chunks(), where, locate)


_BACKED_BLOCK = 2**18  # stored values per read of a backed matrix's check (1 MB of float32)


def _backed_non_count(group: Any, fmt: str, where: str) -> str | None:
    """:func:`find_non_count` of a backed sparse matrix, from its stored values.

    The values are read in blocks of :data:`_BACKED_BLOCK` into one reused buffer, so the
    memory of the check does not depend on the size of the matrix; the row pointers are
    read only to locate a bad entry.
    """
    data = group["data"]
    buffer = np.empty(min(_BACKED_BLOCK, max(int(data.shape[0]), 1)), dtype=data.dtype)

    def chunks() -> Any:
        for start in range(0, data.shape[0], buffer.size):
            n = min(buffer.size, data.shape[0] - start)
            data.read_direct(buffer, np.s_[start : start + n], np.s_[0:n])
            yield start, buffer[:n]

    def locate(start: int, first: tuple[int, ...]) -> tuple[int, int]:
        pos = start + int(first[0])
        major = int(np.searchsorted(group["indptr"][...], pos, side="right") - 1)
        minor = int(group["indices"][pos])
        return (major, minor) if fmt == "csr" else (minor, major)

    return _first_bad(chunks(), where, locate)


def check_counts(matrix: Any, where: str) -> None:
    """Check that ``matrix`` holds non-negative whole numbers, chunk by chunk.

    Raises:
        TypeError: If the dtype is not numeric.
        ValueError: Naming ``where`` and the first bad entry (row, column, value).
    """
    entry = find_non_count(matrix, where)
    if entry is not None:
        raise ValueError(f"{where} must hold counts (non-negative whole numbers); {entry}.")


def setup_anndata(
    adata: Any,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    size_factor_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
) -> AnnDataSetup:
    """Declare and validate the fields a single-cell model reads from ``adata``.

    Args:
        adata: An ``AnnData`` (in memory or backed) of raw counts, cells × genes.
        layer: Layer with the counts (``None``: ``adata.X``).
        batch_key: ``obs`` column with the batch of each cell.
        labels_key: ``obs`` column with cell labels.
        size_factor_key: ``obs`` column with per-cell size factors (then the library size
            is not learnt but ``log`` of that factor).
        categorical_covariate_keys: More categorical ``obs`` columns injected like the batch.
        continuous_covariate_keys: Continuous ``obs`` columns injected into the decoder.

    Returns:
        The :class:`AnnDataSetup`, also stored in ``adata.uns["_sbi_vi_setup"]``.

    Warns:
        UserWarning: The data are not counts (non-negative whole numbers; the first other
            entry is named), as scvi-tools warns; only ``gene_likelihood="normal"`` can
            model them, and the count likelihoods refuse them.

    Raises:
        ValueError: Missing layer or column, NaN or inf entries, or an empty AnnData.
    """
    if not (hasattr(adata, "obs") and hasattr(adata, "var_names") and hasattr(adata, "uns")):
        raise TypeError(f"`adata` must be an anndata.AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"`adata` is empty ({adata.n_obs} cells × {adata.n_vars} genes).")
    where = "`adata.X`" if layer is None else f"`adata.layers[{layer!r}]`"
    non_count = find_non_count(get_counts(adata, layer), where)
    if non_count is not None:  # scvi-tools warns too: only gene_likelihood="normal" fits it
        warnings.warn(
            f"{where} does not hold counts (non-negative whole numbers; {non_count}); only "
            "`gene_likelihood='normal'` can model it.",
            UserWarning,
            stacklevel=3,
        )
    cat_keys = tuple(categorical_covariate_keys or ())
    cont_keys = tuple(continuous_covariate_keys or ())
    for key in (size_factor_key, *cont_keys):
        if key is not None and key not in adata.obs:
            raise ValueError(f"{key!r} is not a column of `adata.obs`.")
    setup = AnnDataSetup(
        layer=layer,
        batch_key=batch_key,
        labels_key=labels_key,
        size_factor_key=size_factor_key,
        categorical_covariate_keys=cat_keys,
        continuous_covariate_keys=cont_keys,
        var_names=tuple(str(v) for v in adata.var_names),
        batch_categories=_categories(adata, batch_key, "batch_key"),
        labels_categories=_categories(adata, labels_key, "labels_key"),
        covariate_categories={
            k: _categories(adata, k, "categorical_covariate_keys") for k in cat_keys
        },
        is_count_data=non_count is None,
    )
    setup.continuous_covariates(adata)
    setup.size_factors(adata)
    adata.uns[SETUP_KEY] = setup.to_dict()
    return setup
