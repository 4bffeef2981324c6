"""Backed CSR counts read straight from the h5ad file: the same rows as in memory."""

from __future__ import annotations

import anndata
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sbi_vi.singlecell.fields import setup_anndata
from sbi_vi.singlecell.loader import CellData, CSRFileRows


def _counts(n_cells: int = 60, n_genes: int = 25, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.4, (n_cells, n_genes)).astype(np.float32)
    dense[3] = 0.0  # an empty row
    dense[7] = rng.poisson(20.0, n_genes)  # a full one
    return sp.csr_matrix(dense)


def _write(path, counts: sp.csr_matrix, **dataset_kwargs) -> None:
    """An h5ad with ``X`` written by anndata's writer and the given dataset options."""
    adata = anndata.AnnData(counts)
    adata.obs["batch"] = np.where(np.arange(counts.shape[0]) % 2, "a", "b")
    adata.obs["batch"] = adata.obs["batch"].astype("category")
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        for key in ("obs", "var"):
            anndata.io.write_elem(f, key, getattr(adata, key))
        anndata.io.write_elem(f, "X", counts, dataset_kwargs=dataset_kwargs)


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory):
    """Chunks of 7 entries: most rows cross a chunk border."""
    counts = _counts()
    path = tmp_path_factory.mktemp("backed") / "chunks7.h5ad"
    _write(path, counts, chunks=(7,))
    adata = anndata.read_h5ad(path, backed="r")
    return counts, adata


@pytest.mark.parametrize("chunks", [None, (7,), (1000,)])
def test_rows_equal_the_matrix_in_memory(tmp_path, chunks):
    counts = _counts(seed=1)
    path = tmp_path / "x.h5ad"
    _write(path, counts, **({} if chunks is None else {"chunks": chunks}))
    reader = CSRFileRows.open(anndata.read_h5ad(path, backed="r").X)
    assert reader is not None
    idx = np.array([7, 3, 59, 0, 7, 12])  # unsorted, a repeat, the empty row, the last row
    np.testing.assert_array_equal(reader.dense(idx), counts[idx].toarray())
    assert reader.dense(idx).dtype == np.float32


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 59), min_size=1, max_size=40))
def test_any_selection_of_rows_equals_the_matrix(small_chunks, rows):
    counts, adata = small_chunks
    reader = CSRFileRows.open(adata.X)
    idx = np.array(rows)
    np.testing.assert_array_equal(reader.csr(idx).toarray(), counts[idx].toarray())


def test_compressed_counts_are_left_to_anndata(tmp_path):
    counts = _counts(seed=2)
    path = tmp_path / "gzip.h5ad"
    _write(path, counts, compression="gzip")
    adata = anndata.read_h5ad(path, backed="r")
    assert CSRFileRows.open(adata.X) is None
    setup = setup_anndata(adata, batch_key="batch")
    data = CellData(adata, setup)  # reads through anndata instead
    idx = np.array([5, 1, 5])
    torch.testing.assert_close(data.counts(idx), torch.from_numpy(counts[idx].toarray()))


def test_in_memory_and_dense_matrices_are_declined():
    assert CSRFileRows.open(_counts()) is None
    assert CSRFileRows.open(np.zeros((3, 2))) is None


def test_minibatches_from_the_file_equal_those_in_memory(small_chunks):
    counts, backed = small_chunks
    memory = anndata.AnnData(counts, obs=backed.obs.copy())
    batches = []
    for adata in (backed, memory):
        data = CellData(adata, setup_anndata(adata, batch_key="batch"))
        order = torch.Generator().manual_seed(3)
        batches.append(list(data.minibatches(np.arange(60), 16, shuffle=True, generator=order)))
    assert len(batches[0]) == len(batches[1]) == 4
    for on_disk, in_memory in zip(*batches):
        torch.testing.assert_close(on_disk.indices, in_memory.indices)
        torch.testing.assert_close(on_disk.x, in_memory.x)
        torch.testing.assert_close(on_disk.batch_index, in_memory.batch_index)
        assert on_disk.batch_index.dtype == on_disk.labels.dtype == torch.int64
