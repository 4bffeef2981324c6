"""Per-cell state of an atlas stays compact: codes without per-cell strings, int32 splits and
permutations, a count check of a backed matrix in bounded blocks."""

from __future__ import annotations

import tracemalloc
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sbi_vi.singlecell import fields
from sbi_vi.singlecell.fields import AnnDataSetup, setup_anndata
from sbi_vi.singlecell.loader import CellData, epoch_permutation
from sbi_vi.singlecell.split import split_cells


def _reference_codes(column: pd.Series, categories: tuple[str, ...]) -> np.ndarray:
    """The codes as they were computed before: every value as a string, then looked up."""
    lookup = {c: i for i, c in enumerate(categories)}
    return np.array([lookup.get(v, -1) for v in column.astype(str)], dtype=np.int64)


def _reference_categories(column: pd.Series) -> tuple[str, ...]:
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(column.astype(str))
        return tuple(str(c) for c in column.cat.categories if str(c) in present)
    return tuple(sorted({str(v) for v in column}))


def _adata(column: pd.Series) -> anndata.AnnData:
    adata = anndata.AnnData(sp.csr_matrix(np.ones((len(column), 2), dtype=np.float32)))
    adata.obs["key"] = column.to_numpy() if not hasattr(column, "cat") else column.values
    return adata


values = st.one_of(
    st.lists(st.sampled_from(["a", "b", "c10", "B"]), min_size=1, max_size=40),
    st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=1, max_size=40),
    st.lists(st.booleans(), min_size=1, max_size=40),
)


@settings(max_examples=60, deadline=None)
@given(values=values, categorical=st.booleans(), unused=st.booleans())
def test_codes_and_categories_equal_the_string_lookup(values, categorical, unused):
    column = pd.Series(values)
    if categorical:
        column = column.astype("category")
        if unused:
            column = column.cat.add_categories(["zz_unused"])
    adata = _adata(column)
    cats = fields._categories(adata, "key", "batch_key")
    assert cats == _reference_categories(adata.obs["key"])
    expected = _reference_codes(adata.obs["key"], cats)
    codes = fields._codes(adata, "key", cats, "batch_key")
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, expected)
    compact = fields._codes(adata, "key", cats, "batch_key", dtype=None)
    assert compact.dtype == np.int8
    np.testing.assert_array_equal(compact, expected)


@pytest.mark.parametrize("categorical", [False, True])
def test_unknown_and_missing_values_are_named(categorical):
    column = pd.Series(["a", "b", None, "x"], dtype="category" if categorical else object)
    adata = _adata(column)
    with pytest.raises(ValueError, match="missing values"):
        fields._categories(adata, "key", "batch_key")
    with pytest.raises(ValueError, match=r"not set up with: \['nan', 'x'\]"):
        fields._codes(adata, "key", ("a", "b"), "batch_key")


def test_code_dtype_grows_with_the_number_of_categories():
    assert fields._code_dtype(3) == np.int8
    assert fields._code_dtype(300) == np.int16
    assert fields._code_dtype(40_000) == np.int32
    assert fields._code_dtype(2**31 + 5) == np.int64


def test_undeclared_fields_cost_no_memory_per_cell():
    adata = _adata(pd.Series(["a", "b"] * 50, dtype="category"))
    setup = setup_anndata(adata, batch_key="key")
    data = CellData(adata, setup)
    assert data.batch_index.dtype == torch.int8
    assert data.labels.stride() == (0,)  # an expanded zero: one element in memory
    batch = data.batch(np.array([3, 0, 99], dtype=np.int32))
    assert batch.labels.tolist() == [0, 0, 0]
    assert batch.batch_index.tolist() == [1, 0, 1]
    assert batch.indices.dtype == torch.int64


@pytest.mark.parametrize("n", [1, 10, 1000, 12_345])
def test_epoch_permutation_is_torch_randperm_in_int32(n):
    perm = epoch_permutation(n, torch.Generator().manual_seed(4))
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(4)).numpy()
    assert perm.dtype == np.int32
    np.testing.assert_array_equal(perm, expected)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3000),
    train=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**31 - 2),
)
def test_split_is_int32_and_the_same_as_the_int64_split(n, train, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tiny last minibatch warns
        split = split_cells(n, train_size=train, seed=seed)
    order = np.random.RandomState(seed=seed).permutation(np.arange(n, dtype=np.int64))
    parts = np.concatenate([split.validation, split.train, split.test])
    for part in (split.train, split.validation, split.test):
        assert part.dtype == np.int32
    np.testing.assert_array_equal(parts, order)


def _write_backed(path, counts: sp.csr_matrix, obs: pd.DataFrame) -> anndata.AnnData:
    adata = anndata.AnnData(counts, obs=obs)
    adata.write_h5ad(path)
    return anndata.read_h5ad(path, backed="r")


@pytest.mark.parametrize("position", [0, 6, 7, 8, 41])
def test_backed_check_names_the_entry_across_block_borders(tmp_path, monkeypatch, position):
    monkeypatch.setattr(fields, "_BACKED_BLOCK", 7)
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(1.5, (12, 9)).astype(np.float32))
    counts.data[position] = 2.5
    row = int(np.searchsorted(counts.indptr, position, side="right") - 1)
    col = int(counts.indices[position])
    adata = _write_backed(tmp_path / "x.h5ad", counts, pd.DataFrame(index=map(str, range(12))))
    entry = fields.find_non_count(adata.X, "`adata.X`")
    assert entry == f"entry [{row}, {col}] is {np.float32(2.5)!r}"


def test_backed_setup_memory_does_not_grow_with_the_cells(tmp_path):
    """numpy memory traced during set-up and CellData: a few bytes per cell (the compact
    codes and row pointers), not a string per cell nor a copy of the matrix."""
    peaks = {}
    for n in (20_000, 200_000):
        rng = np.random.default_rng(1)
        counts = sp.random(n, 4, density=0.5, format="csr", random_state=1, dtype=np.float32)
        counts.data = np.ceil(counts.data * 5)
        names = np.array([f"batch_{i}" for i in range(3)])
        obs = pd.DataFrame(
            {
                "batch": pd.Categorical(names[rng.integers(0, 3, n)]),
                "donor": names[rng.integers(0, 3, n)].astype(object),
            },
            index=pd.RangeIndex(n).astype(str),
        )
        adata = _write_backed(tmp_path / f"a{n}.h5ad", counts, obs)
        tracemalloc.start()
        setup = setup_anndata(adata, batch_key="batch", labels_key="donor")
        data = CellData(adata, setup)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert isinstance(setup, AnnDataSetup) and data.n_obs == n
        adata.file.close()
    per_cell = (peaks[200_000] - peaks[20_000]) / 180_000
    # before: ~70 bytes per cell (a string per cell and field, int64 copies of the codes)
    assert per_cell < 20, per_cell
