"""setup_anndata: declared fields, count validation, transfer; CellData minibatches."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sbi_vi.singlecell.fields import SETUP_KEY, AnnDataSetup, check_counts, setup_anndata
from sbi_vi.singlecell.loader import CellData, resolve_indices


def test_setup_records_fields_and_codes(tiny_adata):
    setup = setup_anndata(
        tiny_adata,
        batch_key="batch",
        labels_key="cell_type",
        continuous_covariate_keys=["age"],
    )
    assert setup.n_batch == 2 and setup.n_labels == 3 and setup.n_vars == 40
    assert AnnDataSetup.from_dict(tiny_adata.uns[SETUP_KEY]) == setup
    codes = setup.batch_codes(tiny_adata)
    names = np.asarray(setup.batch_categories)[codes]
    assert (names == tiny_adata.obs["batch"].astype(str).to_numpy()).all()
    assert setup.continuous_covariates(tiny_adata).shape == (120, 1)


def test_setup_survives_h5ad_roundtrip(tiny_adata, tmp_path):
    setup = setup_anndata(tiny_adata, batch_key="batch")
    path = tmp_path / "a.h5ad"
    tiny_adata.write_h5ad(path)
    back = anndata.read_h5ad(path)
    assert AnnDataSetup.from_dict(back.uns[SETUP_KEY]) == setup


@pytest.mark.parametrize("value", [-1.0, 1.5])
@pytest.mark.parametrize("sparse", [False, True])
def test_non_counts_warn_naming_the_entry_and_are_recorded(tiny_adata, value, sparse):
    x = np.asarray(tiny_adata.X.toarray(), dtype=np.float32)
    x[7, 5] = value
    tiny_adata.layers["raw"] = sp.csr_matrix(x) if sparse else x
    with pytest.warns(UserWarning, match=r"layers\['raw'\].*\[7, 5\]"):
        setup = setup_anndata(tiny_adata, layer="raw")
    assert setup.is_count_data is False
    assert AnnDataSetup.from_dict(tiny_adata.uns[SETUP_KEY]).is_count_data is False
    with pytest.raises(ValueError, match=r"\[7, 5\]"):
        check_counts(tiny_adata.layers["raw"], "raw")


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_nan_or_inf_is_an_error_naming_the_entry(tiny_adata, value, sparse):
    x = np.asarray(tiny_adata.X.toarray(), dtype=np.float32)
    x[7, 5] = value
    tiny_adata.layers["raw"] = sp.csr_matrix(x) if sparse else x
    with pytest.raises(ValueError, match=r"layers\['raw'\].*finite.*\[7, 5\]"):
        setup_anndata(tiny_adata, layer="raw")


def test_float_whole_numbers_are_counts(tiny_adata):
    tiny_adata.X = tiny_adata.X.astype(np.float32)
    check_counts(tiny_adata.X, "X")
    with pytest.raises(TypeError, match="numbers"):
        check_counts(np.array([["a"]], dtype=object), "X")


def test_missing_columns_and_layers(tiny_adata):
    with pytest.raises(ValueError, match="batch_key"):
        setup_anndata(tiny_adata, batch_key="nope")
    with pytest.raises(ValueError, match="layer"):
        setup_anndata(tiny_adata, layer="nope")
    with pytest.raises(TypeError, match="AnnData"):
        setup_anndata(np.zeros((3, 3)))


def test_transfer_rejects_reordered_genes_and_unknown_batches(tiny_adata):
    setup = setup_anndata(tiny_adata, batch_key="batch")
    other = tiny_adata[:, tiny_adata.var_names[::-1]].copy()
    with pytest.raises(ValueError, match="another order"):
        setup.transfer(other)
    other = tiny_adata.copy()
    other.obs["batch"] = other.obs["batch"].astype(str)
    other.obs.loc[other.obs_names[0], "batch"] = "batch_9"
    with pytest.raises(ValueError, match="batch_9"):
        setup.transfer(other)
    fewer = tiny_adata[:, :30].copy()
    with pytest.raises(ValueError, match="genes"):
        setup.transfer(fewer)


@pytest.mark.parametrize("kind", ["dense", "sparse", "backed"])
def test_minibatches_match_the_matrix(tiny_adata, tmp_path, kind):
    setup = setup_anndata(tiny_adata, batch_key="batch")
    dense = np.asarray(tiny_adata.X.toarray(), dtype=np.float32)
    adata = tiny_adata
    if kind == "dense":
        adata = tiny_adata.copy()
        adata.X = dense
    elif kind == "backed":
        path = tmp_path / "backed.h5ad"
        tiny_adata.write_h5ad(path)
        adata = anndata.read_h5ad(path, backed="r")
    data = CellData(adata, setup)
    idx = np.array([5, 2, 99, 2, 50])
    torch.testing.assert_close(data.counts(idx), torch.from_numpy(dense[idx]))
    seen = np.concatenate(
        [b.indices.numpy() for b in data.minibatches(np.arange(120), 32, shuffle=True)]
    )
    assert sorted(seen.tolist()) == list(range(120))
    sizes = [b.x.shape[0] for b in data.minibatches(np.arange(33), 32, drop_singletons=True)]
    assert sizes == [32]


def test_library_stats_per_batch(tiny_adata):
    setup = setup_anndata(tiny_adata, batch_key="batch")
    data = CellData(tiny_adata, setup)
    means, variances = data.library_log_stats(np.arange(120))
    log_lib = np.log(np.asarray(tiny_adata.X.sum(1)).ravel())
    codes = setup.batch_codes(tiny_adata)
    for b in range(2):
        assert means[b].item() == pytest.approx(log_lib[codes == b].mean(), rel=1e-5)
        assert variances[b].item() == pytest.approx(log_lib[codes == b].var(), rel=1e-4)


def test_resolve_indices():
    assert resolve_indices(None, 3).tolist() == [0, 1, 2]
    assert resolve_indices(np.array([True, False, True]), 3).tolist() == [0, 2]
    assert resolve_indices([-1], 3).tolist() == [2]
    with pytest.raises(ValueError, match="indices"):
        resolve_indices([3], 3)
    with pytest.raises(ValueError, match="no cells"):
        resolve_indices([], 3)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("value", [0.5, np.nan])
def test_backed_matrix_is_checked_from_its_stored_values(tiny_adata, tmp_path, fmt, value):
    x = np.asarray(tiny_adata.X.toarray(), dtype=np.float32)
    x[7, 5] = value
    tiny_adata.X = sp.csr_matrix(x) if fmt == "csr" else sp.csc_matrix(x)
    path = tmp_path / "cells.h5ad"
    tiny_adata.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    assert hasattr(backed.X, "group")  # the on-disk path, not a loaded matrix
    if np.isnan(value):
        with pytest.raises(ValueError, match=r"finite.*\[7, 5\]"):
            setup_anndata(backed)
    else:
        with pytest.warns(UserWarning, match=r"\[7, 5\] is .*0\.5"):
            assert setup_anndata(backed).is_count_data is False
