"""sample_posterior through the PPL layer agrees with the encoder's closed form."""

from __future__ import annotations

import numpy as np
import pytest

from sbi_vi.singlecell import SCVI, synthetic_counts


@pytest.fixture(scope="module")
def latent_library_model():
    adata = synthetic_counts(150, 40, n_cell_types=3, n_de_genes=6, seed=2)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_latent=3, n_hidden=16, use_observed_lib_size=False)
    model.train(max_epochs=40, show_progress_bar=False, seed=0,
                plan_kwargs={"n_epochs_kl_warmup": None, "lr": 1e-2})  # fmt: skip
    return model


def test_summaries_match_the_encoder(latent_library_model):
    model = latent_library_model
    n = 4000
    out = model.sample_posterior(num_samples=n, batch_size=64, return_samples=True, seed=1)
    assert set(out) == {"means", "stds", "q05", "q95", "posterior_samples"}
    mean, var = model.get_latent_representation(return_dist=True)
    sd = np.sqrt(var)
    assert out["means"]["z"].shape == (150, 3) and out["means"]["library"].shape == (150,)
    assert out["posterior_samples"]["z"].shape == (n, 150, 3)
    z_err = np.abs(out["means"]["z"] - mean) / (sd / np.sqrt(n))
    assert z_err.max() < 5.0  # Monte Carlo error of the mean, 5 standard errors
    np.testing.assert_allclose(out["stds"]["z"], sd, rtol=0.1)
    assert (out["q05"]["z"] < out["means"]["z"]).all() and (out["q95"]["z"] > mean).all()
    # log ℓ: the encoder's last coordinate, in closed form
    import torch

    cells = model._cell_data(None).batch(np.arange(150))
    with torch.no_grad():
        family = model.module.encoder
        base = model.module.q(cells).base
        loc = (family.shift + family.scale * base.loc)[:, -1].numpy()
        sd_l = (family.scale[-1] * base.scale[:, -1]).numpy()
    l_err = np.abs(out["means"]["library"] - loc) / (sd_l / np.sqrt(n))
    assert l_err.max() < 5.0
    np.testing.assert_allclose(out["stds"]["library"], sd_l, rtol=0.1)
    # and it follows the observed log library sizes
    log_lib = np.log(np.asarray(model.adata.X.sum(1)).ravel())
    # (0.79-0.91 over training seeds 0-3 after 40 epochs)
    assert np.corrcoef(out["means"]["library"], log_lib)[0, 1] > 0.7


def test_batches_and_seeds_and_observed_sites(latent_library_model):
    model = latent_library_model
    a = model.sample_posterior(num_samples=50, seed=3, indices=np.arange(20))
    b = model.sample_posterior(num_samples=50, seed=3, indices=np.arange(20))
    np.testing.assert_array_equal(a["means"]["z"], b["means"]["z"])
    chunked = model.sample_posterior(num_samples=50, seed=3, batch_size=7, indices=np.arange(20))
    assert chunked["means"]["z"].shape == (20, 3)
    obs = model.sample_posterior(
        num_samples=30, return_sites=["x"], return_observed=True, indices=[0, 1, 2], seed=0
    )
    assert obs["means"]["x"].shape == (3, 40) and (obs["q05"]["x"] >= 0).all()
    custom = model.sample_posterior(num_samples=10, summary_fun={"max": np.max}, seed=0)
    assert set(custom) == {"max"}


def test_flow_encoder_with_latent_library_is_refused(tiny_adata):
    SCVI.setup_anndata(tiny_adata)
    model = SCVI(tiny_adata, n_latent=2, n_hidden=8, q="maf", use_observed_lib_size=False)
    with pytest.raises(ValueError, match="flow encoder"):
        model.sample_posterior(num_samples=5)
    flow = SCVI(tiny_adata, n_latent=2, n_hidden=8, q="maf")
    assert flow.sample_posterior(num_samples=5)["means"]["z"].shape == (120, 2)
