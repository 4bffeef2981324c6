"""Fuzzing the single-cell front end: a clear error or a finite, correct answer.

Hypothesis draws count matrices (shapes, dtypes, dense / CSR / CSC, NaN, inf, negative and
fractional entries), cell selections (positions, negative positions, boolean masks, empty,
out of range) and minibatch sizes. Every call must either raise a ``ValueError`` /
``TypeError`` whose message names what was wrong, or return finite values of the right
shape. Examples are bounded so that the module runs in a few seconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

anndata = pytest.importorskip("anndata")

from sbi_vi.singlecell import SCVI, synthetic_counts  # noqa: E402

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
N_CELLS, N_GENES = 40, 12


@pytest.fixture(scope="module")
def model():
    adata = synthetic_counts(N_CELLS, N_GENES, n_cell_types=2, n_de_genes=2, seed=0)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_latent=2, n_hidden=8)
    model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    return model


def _matrix(draw_values: np.ndarray, layout: str, dtype: str):
    values = draw_values.astype(dtype)
    if layout == "csr":
        return sp.csr_matrix(values)
    if layout == "csc":
        return sp.csc_matrix(values)
    return values


@FUZZ
@given(
    n_cells=st.integers(1, 6),
    n_genes=st.integers(1, 5),
    dtype=st.sampled_from(["int32", "int64", "float32", "float64", "uint16"]),
    layout=st.sampled_from(["dense", "csr", "csc"]),
    bad=st.sampled_from([None, np.nan, np.inf, -1.0, 0.5]),
    data=st.data(),
)
def test_setup_anndata_clear_error_or_valid_record(n_cells, n_genes, dtype, layout, bad, data):
    counts = np.asarray(
        data.draw(
            st.lists(
                st.lists(st.integers(0, 50), min_size=n_genes, max_size=n_genes),
                min_size=n_cells,
                max_size=n_cells,
            )
        ),
        dtype=np.float64,
    )
    if bad is not None and np.issubdtype(np.dtype(dtype), np.floating):
        row, col = data.draw(st.integers(0, n_cells - 1)), data.draw(st.integers(0, n_genes - 1))
        counts[row, col] = bad
    adata = anndata.AnnData(_matrix(counts, layout, dtype))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            setup = SCVI.setup_anndata(adata) or adata.uns["_sbi_vi_setup"]
        except ValueError as err:
            assert bad is not None and not np.isfinite(bad), err
            assert "finite" in str(err) and "entry" in str(err)
            return
    not_counts = [w for w in caught if "does not hold counts" in str(w.message)]
    is_integer_data = np.issubdtype(np.dtype(dtype), np.integer) or bad in (None,)
    if is_integer_data:
        assert not not_counts
        assert setup["is_count_data"] is True
    else:  # -1 or 0.5 in a float matrix: warned and recorded, as scvi-tools warns
        assert not_counts and setup["is_count_data"] is False


def _indices():
    positions = st.lists(st.integers(-2 * N_CELLS, 2 * N_CELLS), min_size=0, max_size=8)
    masks = st.lists(st.booleans(), min_size=N_CELLS, max_size=N_CELLS)
    wrong_masks = st.lists(st.booleans(), min_size=1, max_size=N_CELLS - 1)
    return st.one_of(st.none(), positions, masks.map(np.asarray), wrong_masks.map(np.asarray))


def _selected(indices) -> int | None:
    """How many cells ``indices`` selects, or ``None`` if it is not a valid selection."""
    if indices is None:
        return N_CELLS
    array = np.asarray(indices)
    if array.dtype == bool:
        n = int(array.sum()) if array.shape == (N_CELLS,) else 0
    else:
        ok = array.size == 0 or (array.min() >= -N_CELLS and array.max() < N_CELLS)
        n = array.size if ok else 0
    return n or None


@FUZZ
@given(indices=_indices(), batch_size=st.one_of(st.none(), st.integers(1, 50)))
def test_vae_methods_clear_error_or_finite_answer(model, indices, batch_size):
    n = _selected(indices)
    try:
        elbo = model.get_elbo(indices=indices, batch_size=batch_size, return_mean=False)
    except ValueError as err:
        assert "indices" in str(err) and n is None, err
        return
    assert n is not None, "an invalid selection was accepted"
    assert isinstance(elbo, torch.Tensor) and elbo.shape == (n,)
    assert torch.isfinite(elbo).all()
    z = model.get_latent_representation(indices=indices, batch_size=batch_size)
    assert z.shape == (n, 2) and np.isfinite(z).all()
    ll = model.get_marginal_ll(indices=indices, batch_size=batch_size, n_mc_samples=3)
    assert np.isfinite(float(ll))


@FUZZ
@given(
    train_size=st.one_of(st.none(), st.floats(-0.5, 1.5), st.just(float("nan"))),
    validation_size=st.one_of(st.none(), st.floats(-0.5, 1.5)),
    batch_size=st.integers(-2, 60),
    max_epochs=st.integers(-1, 2),
)
def test_train_arguments_clear_error_or_trained(
    train_size, validation_size, batch_size, max_epochs
):
    adata = synthetic_counts(N_CELLS, N_GENES, n_cell_types=2, n_de_genes=2, seed=1)
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_latent=2, n_hidden=8)
    before = [p.detach().clone() for p in model.module.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            model.train(
                max_epochs=max_epochs,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=batch_size,
                enable_progress_bar=False,
                seed=0,
            )
        except (ValueError, TypeError) as err:
            message = str(err)
            assert any(
                name in message
                for name in ("train_size", "validation_size", "batch_size", "max_epochs", "1 cell")
            ), message
            assert not model.is_trained
            for a, b in zip(before, model.module.parameters(), strict=True):
                assert torch.equal(a, b.detach())  # nothing changed on a refused call
            return
    assert model.is_trained
    assert np.isfinite(model.history["elbo_train"].to_numpy()).all()
