"""Minibatches of cells as tensors, straight from dense, sparse or backed counts.

:class:`CellData` reads an AnnData through its :class:`~sbi_vi.singlecell.fields.AnnDataSetup`
once (codes, covariates, size factors: small per-cell vectors) and keeps the count matrix
as it is: a dense array becomes one float32 tensor, a scipy sparse matrix stays sparse and
each minibatch densifies only its rows, and a backed (on-disk) matrix is read row block by
row block, so a data set larger than memory trains.

A backed CSR matrix stored without compression in a local HDF5 file (what
``anndata.AnnData.write_h5ad`` writes by default) is read by :class:`CSRFileRows`: the
bytes of each row straight from the file with ``os.preadv``. Going through
h5py for each row (what anndata's backed indexing does) took about 10 ms per minibatch of
128 random rows, as long as the training step itself; the direct reads take a fraction of it.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from sbi_vi.singlecell.fields import AnnDataSetup, get_counts

__all__ = ["CSRFileRows", "CellBatch", "CellData", "epoch_permutation", "resolve_indices"]


@dataclass(frozen=True)
class CellBatch:
    """The tensors of a minibatch of ``B`` cells.

    Attributes:
        x: Counts, ``[B, G]`` float32.
        batch_index: Batch codes, ``[B]`` int64.
        labels: Label codes, ``[B]`` int64.
        cat_covs: Categorical covariate codes, ``[B, C]`` int64.
        cont_covs: Continuous covariates, ``[B, K]`` float32.
        size_factor: Size factors, ``[B]`` float32, or ``None``.
        indices: Positions of the cells in the AnnData, ``[B]`` int64.
    """

    x: Tensor
    batch_index: Tensor
    labels: Tensor
    cat_covs: Tensor
    cont_covs: Tensor
    size_factor: Tensor | None
    indices: Tensor

    def to(self, device: torch.device | str) -> CellBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return CellBatch(
            *(move(getattr(self, name)) for name in self.__dataclass_fields__)  # type: ignore[arg-type]
        )


def resolve_indices(indices: Sequence[int] | np.ndarray | None, n_obs: int) -> np.ndarray:
    """``indices`` as int64 positions in ``[0, n_obs)`` (booleans masks accepted).

    Raises:
        ValueError: Out-of-range positions, a mask of the wrong length, or no cells.
    """
    if indices is None:
        return np.arange(n_obs, dtype=np.int64)
    array = np.asarray(indices)
    if array.dtype == np.bool_:
        if array.shape != (n_obs,):
            raise ValueError(
                f"`indices` as a boolean mask must have length {n_obs}, got {array.shape}."
            )
        array = np.flatnonzero(array)
    if array.size == 0:
        raise ValueError("`indices` selects no cells.")
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`indices` must be a 1-D sequence of integers, got {array.dtype}.")
    if array.min() < -n_obs or array.max() >= n_obs:
        raise ValueError(f"`indices` must lie in [0, {n_obs}), got {array.min()}..{array.max()}.")
    return np.where(array < 0, array + n_obs, array).astype(np.int64)


class CellData:
    """Per-cell tensors of an AnnData under a set-up, and minibatches of its counts.

    Args:
        adata: The AnnData (in memory or backed).
        setup: The set-up whose fields and codes to read (checked against ``adata``).
    """

    def __init__(self, adata: Any, setup: AnnDataSetup):
        setup.transfer(adata)
        self.setup = setup
        self.n_obs = int(adata.n_obs)
        self.n_vars = int(adata.n_vars)
        counts = get_counts(adata, setup.layer)
        self._backed = bool(getattr(adata, "isbacked", False)) and setup.layer is None
        self._file_rows: CSRFileRows | None = None
        if self._backed:
            self._counts: Any = counts
            self._file_rows = CSRFileRows.open(counts)
        elif sp.issparse(counts):
            self._counts = sp.csr_matrix(counts, dtype=np.float32)
        else:
            self._counts = torch.as_tensor(np.asarray(counts, dtype=np.float32))
        # codes kept as int8 / int16 where they fit (1-2 instead of 8 bytes per cell: an
        # atlas's per-cell state stays small, and no int64 copy is made on the way);
        # minibatches get int64
        self.batch_index = _per_cell_codes(setup.batch_key, setup.batch_codes, adata)
        self.labels = _per_cell_codes(setup.labels_key, setup.labels_codes, adata)
        self.cat_covs = torch.as_tensor(setup.covariate_codes(adata, dtype=None))
        self.cont_covs = torch.as_tensor(setup.continuous_covariates(adata))
        factors = setup.size_factors(adata)
        self.size_factor = None if factors is None else torch.as_tensor(factors)

    def counts(self, idx: np.ndarray) -> Tensor:
        """Dense counts of the cells ``idx`` (in that order), ``[len(idx), G]`` float32."""
        if isinstance(self._counts, Tensor):
            return self._counts[torch.as_tensor(idx, dtype=torch.int64)]
        if not self._backed:
            return torch.from_numpy(self._counts[idx].toarray())
        if self._file_rows is not None:
            return torch.from_numpy(self._file_rows.dense(idx))
        # h5py reads need increasing indices: read sorted unique rows, then reorder.
        unique, inverse = np.unique(idx, return_inverse=True)
        rows = self._counts[unique]
        rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
        return torch.from_numpy(np.asarray(rows, dtype=np.float32)[inverse])

    def library_log_stats(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        """Per batch, mean and variance of log library size over the cells ``idx``.

        Returns:
            ``(means, variances)``, each ``[n_batch]`` (batches without cells get the
            overall values).
        """
        log_lib = torch.cat([self.counts(chunk).sum(1) for chunk in _chunks(idx, 4096)]).log()
        codes = self.batch_index[torch.as_tensor(idx, dtype=torch.int64)]
        n_batch = self.setup.n_batch
        overall_m = log_lib.mean()
        overall_v = log_lib.var(unbiased=False) if log_lib.numel() > 1 else torch.tensor(1.0)
        means = torch.full((n_batch,), float(overall_m))
        variances = torch.full((n_batch,), float(overall_v))
        for b in range(n_batch):
            sel = log_lib[codes == b]
            if sel.numel() > 0:
                means[b] = sel.mean()
            if sel.numel() > 1:
                variances[b] = sel.var(unbiased=False)
        return means, variances.clamp(min=1e-4)

    def batch(self, idx: np.ndarray) -> CellBatch:
        """The :class:`CellBatch` of the cells at positions ``idx`` (any integer dtype)."""
        t = torch.as_tensor(idx, dtype=torch.int64)
        return CellBatch(
            x=self.counts(idx),
            batch_index=self.batch_index[t].long(),
            labels=self.labels[t].long(),
            cat_covs=self.cat_covs[t].long(),
            cont_covs=self.cont_covs[t],
            size_factor=None if self.size_factor is None else self.size_factor[t],
            indices=t,
        )

    def minibatches(
        self,
        idx: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_singletons: bool = False,
    ) -> Iterator[CellBatch]:
        """Iterate over ``idx`` in minibatches (one pass).

        Args:
            idx: Cell positions.
            batch_size: Cells per minibatch.
            shuffle: Visit the cells in a random order (drawn from ``generator``).
            generator: Random generator of the order.
            drop_singletons: Skip a last minibatch of one cell (batch norm cannot train
                on it).
        """
        if shuffle:
            idx = idx[epoch_permutation(len(idx), generator)]
        for chunk in _chunks(idx, batch_size):
            if drop_singletons and len(chunk) == 1 and len(idx) > 1:
                continue
            yield self.batch(chunk)


def _per_cell_codes(key: str | None, codes: Any, adata: Any) -> Tensor:
    """Per-cell codes ``[n_obs]`` of one field: the smallest integer dtype that holds them,
    and no memory at all for a field that was not declared (every code 0)."""
    if key is None:
        return torch.zeros((), dtype=torch.int8).expand(int(adata.n_obs))
    return torch.as_tensor(codes(adata, dtype=None))


def epoch_permutation(n: int, generator: torch.Generator | None = None) -> np.ndarray:
    """A random permutation of ``0 .. n - 1`` as int32 where ``n < 2³¹`` (int64 above).

    The same permutation as ``torch.randperm(n, generator=generator)`` (torch draws it the
    same way for both dtypes), in half the memory: an epoch over an atlas of a million
    cells holds 4 MB of it instead of 8.
    """
    dtype = torch.int32 if n <= np.iinfo(np.int32).max else torch.int64
    return torch.randperm(n, generator=generator, dtype=dtype).numpy()


def _chunks(idx: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(idx), size):
        yield idx[start : start + size]


class _FileArray:
    """Where the elements of a 1-D HDF5 dataset lie in its file: the byte offset of each
    of its (uncompressed) chunks; a contiguous dataset is one chunk."""

    def __init__(self, dataset: Any):
        self.dtype = np.dtype(dataset.dtype)
        self.size = int(dataset.shape[0])
        plist = dataset.id.get_create_plist()
        if plist.get_nfilters() > 0:
            raise ValueError("compressed or filtered")
        offset = dataset.id.get_offset()  # contiguous layout; None when chunked
        if offset is not None:
            self.chunk_len = max(self.size, 1)
            self.offsets = np.array([offset], dtype=np.int64)
            return
        if dataset.chunks is None:
            raise ValueError("neither contiguous nor chunked")
        self.chunk_len = int(dataset.chunks[0])
        n_chunks = -(-self.size // self.chunk_len)
        offsets = np.full(n_chunks, -1, dtype=np.int64)

        def record(info: Any) -> None:
            offsets[info.chunk_offset[0] // self.chunk_len] = info.byte_offset

        if hasattr(dataset.id, "chunk_iter"):
            dataset.id.chunk_iter(record)
        else:  # HDF5 < 1.14: one call per chunk
            for i in range(dataset.id.get_num_chunks()):
                record(dataset.id.get_chunk_info(i))
        if (offsets < 0).any():
            raise ValueError("unallocated chunks")
        self.offsets = offsets

    def read(self, fd: int, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """The elements ``[start, stop)`` of each range, concatenated."""
        lengths = stops - starts
        out = np.empty(int(lengths.sum()), dtype=self.dtype)
        view = memoryview(out).cast("B")
        item, size = self.dtype.itemsize, self.chunk_len
        pos = 0
        for start, stop in zip(starts.tolist(), stops.tolist()):
            while start < stop:  # a range may cross chunk borders
                chunk = start // size
                end = min(stop, (chunk + 1) * size)
                n_bytes = (end - start) * item
                offset = int(self.offsets[chunk]) + (start - chunk * size) * item
                if os.preadv(fd, [view[pos : pos + n_bytes]], offset) != n_bytes:
                    raise OSError(f"short read at byte {offset} of the backed counts")
                pos += n_bytes
                start = end
        return out


def _h5py_rows(group: Any, n_cols: int, rows: np.ndarray) -> np.ndarray:
    """The ``rows`` of the matrix read by h5py (the reference the direct reads must match;
    not through anndata's backed matrix, which would cache all row pointers)."""
    out = np.zeros((len(rows), n_cols), dtype=np.float32)
    for i, row in enumerate(rows.tolist()):
        start, stop = (int(v) for v in group["indptr"][row : row + 2])
        out[i, group["indices"][start:stop]] = group["data"][start:stop]
    return out


class CSRFileRows:
    """Rows of a backed CSR matrix read straight from its HDF5 file.

    Nothing per cell is held in memory, only where the chunks of ``data``, ``indices`` and
    ``indptr`` lie in the file; each read asks the file (and the operating system's page
    cache) for the two row pointers of each requested row, then for the bytes of its
    ``data`` and ``indices``, with one ``os.preadv`` each per row (per chunk it crosses).
    An atlas's row pointers would otherwise be 4–8 bytes per cell in memory. Use
    :meth:`open`, which declines matrices this cannot read.

    Args:
        group: The h5py group of the matrix (``data``, ``indices``, ``indptr``).
        shape: ``(n_rows, n_cols)``.
    """

    def __init__(self, group: Any, shape: tuple[int, int]):
        self.shape = (int(shape[0]), int(shape[1]))
        self._data = _FileArray(group["data"])
        self._indices = _FileArray(group["indices"])
        self._indptr = _FileArray(group["indptr"])
        if self._indptr.size != self.shape[0] + 1 or self._indptr.dtype.kind not in "iu":
            raise ValueError("indptr does not match the shape")
        self._fd = os.open(group.file.filename, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)

    @classmethod
    def open(cls, matrix: Any) -> CSRFileRows | None:
        """A reader of anndata's backed CSR ``matrix``, or ``None`` if it is not an
        uncompressed CSR matrix in a local HDF5 file (then read it through anndata)."""
        group = getattr(matrix, "group", None)
        if getattr(matrix, "format", None) != "csr" or group is None:
            return None
        try:
            file = group.file
            if file.driver not in ("sec2", "stdio") or file.userblock_size:
                return None
            reader = cls(group, matrix.shape)
            probe = np.unique(np.linspace(0, reader.shape[0] - 1, 3).astype(np.int64))
            expected = _h5py_rows(group, reader.shape[1], probe)
            if not np.array_equal(reader.dense(probe), expected):
                return None
            return reader
        except (AttributeError, KeyError, OSError, TypeError, ValueError):
            return None

    def csr(self, idx: np.ndarray) -> sp.csr_matrix:
        """The rows ``idx`` (any order, repeats allowed) as a CSR matrix."""
        idx = np.asarray(idx, dtype=np.int64)
        bounds = self._indptr.read(self._fd, idx, idx + 2).reshape(-1, 2).astype(np.int64)
        starts, stops = bounds[:, 0], bounds[:, 1]
        data = self._data.read(self._fd, starts, stops)
        indices = self._indices.read(self._fd, starts, stops)
        indptr = np.concatenate([[0], np.cumsum(stops - starts)])
        return sp.csr_matrix((data, indices, indptr), shape=(len(idx), self.shape[1]))

    def dense(self, idx: np.ndarray) -> np.ndarray:
        """The rows ``idx`` as a dense float32 array ``[len(idx), n_cols]``."""
        return self.csr(idx).astype(np.float32).toarray()
