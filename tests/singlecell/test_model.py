"""SCVI on a tiny synthetic AnnData: every public method and the arguments that matter."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from sbi_vi.singlecell import SCVI, synthetic_counts


def _model(adata, **kwargs):
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    return SCVI(adata, n_latent=3, n_hidden=16, **kwargs)


def test_untrained_setup_is_required(tiny_adata):
    with pytest.raises(ValueError, match="setup_anndata"):
        SCVI(tiny_adata)


def test_history_split_and_epoch_heuristic(tiny_adata):
    model = _model(tiny_adata)
    model.train(max_epochs=3, show_progress_bar=False, seed=0, check_val_every_n_epoch=1)
    history = model.history
    for key in ("elbo_train", "reconstruction_loss_train", "kl_local_train", "train_loss",
                "kl_weight", "elbo_validation", "reconstruction_loss_validation"):  # fmt: skip
        assert key in history and len(history[key]) == 3, key
    assert isinstance(history["elbo_train"], pd.DataFrame)
    assert len(model.train_indices) == 108 and len(model.validation_indices) == 12
    assert not set(model.train_indices) & set(model.validation_indices)
    # KL warm-up over 400 epochs by default: weight epoch / 400
    np.testing.assert_allclose(history["kl_weight"]["kl_weight"], [0.0, 1 / 400, 2 / 400])
    full = _model(tiny_adata.copy())
    full.train(max_epochs=2, train_size=1.0, show_progress_bar=False, seed=0)
    assert "elbo_validation" not in full.history and len(full.train_indices) == 120


def test_training_improves_and_resumes(tiny_adata):
    model = _model(tiny_adata)
    before = model.get_elbo()
    model.train(max_epochs=15, show_progress_bar=False, seed=0,
                plan_kwargs={"lr": 1e-2, "n_epochs_kl_warmup": None})  # fmt: skip
    after = model.get_elbo()
    assert after > before + 10
    model.train(max_epochs=2, show_progress_bar=False, seed=1)
    assert len(model.history["elbo_train"]) == 17  # history extends


def test_early_stopping_restores_best(tiny_adata):
    model = _model(tiny_adata)
    model.train(max_epochs=300, early_stopping=True, early_stopping_patience=3,
                show_progress_bar=False, seed=0,
                plan_kwargs={"lr": 3e-2, "n_epochs_kl_warmup": None})  # fmt: skip
    val = model.history["elbo_validation"]["elbo_validation"].to_numpy()
    assert len(val) < 300
    assert len(val) - 1 - int(np.argmin(val)) == 3  # stopped `patience` epochs after the best
    with pytest.raises(ValueError, match="validation"):
        model.train(max_epochs=2, train_size=1.0, early_stopping=True, show_progress_bar=False)


def test_plan_kwargs_and_argument_errors(tiny_adata):
    model = _model(tiny_adata)
    with pytest.raises(TypeError, match="learning_rate"):
        model.train(max_epochs=1, plan_kwargs={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="train_size"):
        model.train(max_epochs=1, train_size=1.5)
    with pytest.raises(ValueError, match="training cell"):
        model.train(max_epochs=1, train_size=0.005)
    model.train(max_epochs=4, show_progress_bar=False, seed=0,
                plan_kwargs={"reduce_lr_on_plateau": True, "lr_patience": 0, "lr_factor": 0.5,
                             "optimizer": "AdamW", "n_steps_kl_warmup": 2})  # fmt: skip
    lrs = model.history["lr"]["lr"].to_numpy()
    assert lrs[-1] <= lrs[0]
    weights = model.history["kl_weight"]["kl_weight"].to_numpy()
    assert weights[-1] == 1.0  # step warm-up over 2 steps


def test_vae_methods(trained_model):
    model = trained_model
    elbo = model.get_elbo()  # scvi-tools' types: 0-d tensors, a numpy float for the LL
    assert isinstance(elbo, torch.Tensor) and elbo.ndim == 0 and elbo < 0
    per_cell = model.get_elbo(return_mean=False, indices=[0, 1, 2])
    assert isinstance(per_cell, torch.Tensor) and per_cell.shape == (3,)
    recon = model.get_reconstruction_error()["reconstruction_loss"]
    assert isinstance(recon, torch.Tensor) and recon.ndim == 0 and recon > 0
    torch.manual_seed(0)
    mll = model.get_marginal_ll(n_mc_samples=200)
    assert isinstance(mll, np.float64) and mll.ndim == 0
    assert mll >= elbo  # the IS bound is tighter than the ELBO
    assert model.get_marginal_ll(n_mc_samples=20, return_mean=False).shape == (200,)
    z = model.get_latent_representation()
    mean, var = model.get_latent_representation(return_dist=True)
    np.testing.assert_allclose(z, mean)
    assert z.shape == (200, 3) and (var > 0).all()
    assert model.get_latent_representation(give_mean=False, indices=[3, 4]).shape == (2, 3)
    khat = model.get_psis_khat(n_mc_samples=100, indices=np.arange(10))
    assert khat.shape == (10,) and np.isfinite(khat).all()


def test_expression_methods(trained_model):
    model = trained_model
    genes = list(model.adata.var_names[[5, 1]])
    ne = model.get_normalized_expression(gene_list=genes, indices=[0, 1, 2, 3])
    assert isinstance(ne, pd.DataFrame) and list(ne.columns) == sorted(
        genes, key=lambda g: int(g.split("_")[1])
    )
    full = model.get_normalized_expression(return_numpy=True)
    np.testing.assert_allclose(full.sum(1), 1.0, rtol=1e-5)
    ten = model.get_normalized_expression(library_size=1e4, n_samples=2, return_mean=False)
    assert ten.shape == (2, 200, 50)
    np.testing.assert_allclose(ten.sum(-1), 1e4, rtol=1e-4)
    latent = model.get_normalized_expression(library_size="latent", return_numpy=True)
    lib = np.asarray(model.adata.X.sum(1)).ravel()
    np.testing.assert_allclose(latent.sum(1), lib, rtol=1e-4)
    b0 = model.get_normalized_expression(transform_batch="batch_0", return_numpy=True)
    b1 = model.get_normalized_expression(transform_batch=1, return_numpy=True)
    both = model.get_normalized_expression(transform_batch=["batch_0", "batch_1"],
                                           return_numpy=True, n_samples=1)  # fmt: skip
    assert not np.allclose(b0, b1)
    assert both.shape == b0.shape
    with pytest.raises(ValueError, match="transform_batch"):
        model.get_normalized_expression(transform_batch="batch_7")
    overall = model.get_normalized_expression(n_samples_overall=30)
    assert overall.shape == (30, 50)
    pp = model.posterior_predictive_sample(n_samples=4, indices=[0, 1, 2])
    assert pp.shape == (3, 50, 4) and (pp >= 0).all() and np.allclose(pp, np.round(pp))
    sparse = model.posterior_predictive_sample(return_sparse=True, gene_list=genes)
    assert sp.issparse(sparse) and sparse.shape == (200, 2)
    # what scvi-tools users call on its GCXS return value works on ours
    assert isinstance(pp.todense(), np.ndarray) and type(pp.todense()) is np.ndarray
    np.testing.assert_array_equal(pp.todense(), np.asarray(pp))
    assert pp.nnz == np.count_nonzero(np.asarray(pp)) and 0 < pp.density <= 1
    one = model.posterior_predictive_sample(indices=[0, 1, 2], silent=True)
    np.testing.assert_array_equal(one.to_scipy_sparse().toarray(), one.todense())
    with pytest.raises(ValueError, match="2-D"):
        pp.to_scipy_sparse()
    assert type(pp.sum()) is not type(pp) and float(pp.sum()) == np.asarray(pp).sum()
    params = model.get_likelihood_parameters(indices=[0, 1])
    assert set(params) == {"mean", "dispersions", "dropout"}
    assert ((params["dropout"] >= 0) & (params["dropout"] <= 1)).all()
    assert model.get_likelihood_parameters(n_samples=3)["mean"].shape == (3, 200, 50)
    corr = model.get_feature_correlation_matrix(
        n_samples=2, correlation_type="pearson", silent=True
    )
    assert corr.shape == (50, 50) and np.allclose(np.diag(corr), 1.0)


def test_new_adata_is_transferred(trained_model):
    model = trained_model
    new = synthetic_counts(30, 50, n_cell_types=3, n_de_genes=6, seed=9)
    z = model.get_latent_representation(new)  # never set up: the model's set-up is used
    assert z.shape == (30, 3)
    bad = new[:, ::-1].copy()
    with pytest.raises(ValueError, match="order"):
        model.get_elbo(bad)


def test_save_load_roundtrip(trained_model, tmp_path):
    model = trained_model
    model.save(tmp_path / "m", save_anndata=True)
    with pytest.raises(ValueError, match="exists"):
        model.save(tmp_path / "m")
    loaded = SCVI.load(tmp_path / "m")
    torch.manual_seed(3)
    a = model.get_latent_representation(give_mean=False)
    torch.manual_seed(3)
    b = loaded.get_latent_representation(give_mean=False)
    np.testing.assert_array_equal(a, b)
    assert loaded.history["elbo_train"].equals(model.history["elbo_train"])
    model.save(tmp_path / "noadata")
    with pytest.raises(ValueError, match="AnnData"):
        SCVI.load(tmp_path / "noadata")
    again = SCVI.load(tmp_path / "noadata", adata=model.adata.copy())
    assert again.is_trained_


@pytest.mark.parametrize(
    "options",
    [
        {"divergence": "IW", "divergence_kwargs": {"K": 4, "dreg": True}},
        {"divergence": "alpha", "divergence_kwargs": {"alpha": 0.5}},
        {"use_observed_lib_size": False, "dispersion": "gene-batch", "gene_likelihood": "nb"},
        {"q": "maf", "latent_distribution": "ln", "gene_likelihood": "poisson"},
    ],
)
def test_options_train_and_roundtrip(tiny_adata, tmp_path, options):
    model = _model(tiny_adata, **options)
    model.train(max_epochs=2, show_progress_bar=False, seed=0)
    assert np.isfinite(model.get_elbo())
    model.save(tmp_path / "m")
    loaded = SCVI.load(tmp_path / "m", adata=tiny_adata)
    torch.manual_seed(0)
    a = model.get_elbo()
    torch.manual_seed(0)
    assert loaded.get_elbo() == pytest.approx(a)


def test_divergence_errors(tiny_adata):
    SCVI.setup_anndata(tiny_adata)
    with pytest.raises(ValueError, match="fKL"):
        SCVI(tiny_adata, divergence="fKL")
    with pytest.raises(ValueError, match="divergence"):
        SCVI(tiny_adata, divergence="KL")
    with pytest.raises(ValueError, match="`K`"):
        SCVI(tiny_adata, divergence="rKL", divergence_kwargs={"K": 3})


def test_trains_from_backed_sparse_file(tiny_adata, tmp_path):
    SCVI.setup_anndata(tiny_adata, batch_key="batch")
    path = tmp_path / "atlas.h5ad"
    tiny_adata.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    model = SCVI(backed, n_latent=2, n_hidden=8)
    model.train(max_epochs=2, show_progress_bar=False, seed=0)
    assert model.get_latent_representation().shape == (120, 2)
    backed.file.close()


def test_size_factor_and_covariates(tiny_adata):
    tiny_adata.obs["sf"] = np.asarray(tiny_adata.X.sum(1)).ravel() / 100.0
    tiny_adata.obs["donor"] = np.where(np.arange(120) % 3 == 0, "a", "b")
    SCVI.setup_anndata(
        tiny_adata,
        batch_key="batch",
        size_factor_key="sf",
        categorical_covariate_keys=["donor"],
        continuous_covariate_keys=["age"],
    )
    model = SCVI(tiny_adata, n_latent=2, n_hidden=8)
    model.train(max_epochs=2, show_progress_bar=False, seed=0)
    # scvi-tools: a registered size factor is the library size, times a softplus scale
    assert model.module.use_size_factor_key
    torch.manual_seed(0)
    latent = model.get_normalized_expression(library_size="latent", return_numpy=True)
    torch.manual_seed(0)
    scale = model.get_normalized_expression(return_numpy=True)
    sf = tiny_adata.obs["sf"].to_numpy()[:, None]
    np.testing.assert_allclose(latent, scale * sf, rtol=1e-4)


def test_training_with_steps_decided_on_the_device_gives_the_same_model(monkeypatch):
    """On a GPU no step reads anything back; forced on the CPU it trains the same weights."""
    import importlib

    fit_module = importlib.import_module("sbi_vi.vi.fit")

    def trained():
        adata = synthetic_counts(150, 30, n_cell_types=3, n_de_genes=4, seed=2)
        SCVI.setup_anndata(adata, batch_key="batch")
        torch.manual_seed(0)
        model = SCVI(adata, n_latent=3, n_hidden=16)
        model.train(
            max_epochs=3, batch_size=32, check_val_every_n_epoch=1, show_progress_bar=False, seed=0
        )
        return model

    host = trained()
    monkeypatch.setattr(fit_module, "steps_on_device", lambda optimizer: True)
    device = trained()
    for (name, a), (_, b) in zip(
        host.module.state_dict().items(), device.module.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    assert set(device.history) == set(host.history) >= {"elbo_train", "elbo_validation"}
    for key in host.history:
        assert device.history[key].equals(host.history[key]), key
