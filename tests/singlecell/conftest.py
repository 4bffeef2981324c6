"""Small synthetic AnnData objects and a trained tiny model, shared by the tests."""

from __future__ import annotations

import pytest

from sbi_vi.singlecell import SCVI, synthetic_counts


@pytest.fixture
def tiny_adata():
    """120 cells × 40 genes, 3 types, 2 batches, counts as a sparse matrix."""
    adata = synthetic_counts(120, 40, n_cell_types=3, n_de_genes=6, seed=3)
    adata.obs["age"] = (adata.obs["library_size"] / 1e3).astype(float)
    return adata


@pytest.fixture(scope="module")
def trained_model():
    """A tiny SCVI trained for a few epochs (module scope: shared within a test file)."""
    adata = synthetic_counts(200, 50, n_cell_types=3, n_de_genes=6, seed=5)
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCVI(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=8, show_progress_bar=False, seed=0)
    return model
