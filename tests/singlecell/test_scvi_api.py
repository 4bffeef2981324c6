"""scvi-tools 1.5 calls, written as a scvi-tools user writes them, against ``SCVI``.

Each test uses scvi-tools' argument names and idioms (``train(**trainer_kwargs)``,
``datasplitter_kwargs``, Lightning callbacks, ``adata_manager``, ``settings.seed``, ...).
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, Timer

from sbi_vi.singlecell import SCVI, settings, synthetic_counts
from sbi_vi.singlecell.callbacks import Callback
from sbi_vi.singlecell.registry import REGISTRY_KEYS


@pytest.fixture
def adata():
    return synthetic_counts(130, 30, n_cell_types=3, n_de_genes=4, seed=1)


@pytest.fixture
def model(adata):
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    return SCVI(adata, n_latent=2, n_hidden=16)


@pytest.fixture
def seed_setting():
    """Set ``settings.seed`` for one test and put it back."""
    before = settings.seed
    yield settings
    settings.seed = before


def _weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.module.parameters()])


def test_trainer_kwargs_of_scvi_tools(model):
    model.train(
        max_epochs=4,
        check_val_every_n_epoch=2,
        early_stopping=True,
        early_stopping_monitor="elbo_validation",
        early_stopping_patience=5,
        early_stopping_min_delta=0.0,
        early_stopping_warmup_epochs=1,
        early_stopping_mode="min",
        enable_progress_bar=False,
        log_every_n_steps=5,
        learning_rate_monitor=True,
        load_sparse_tensor=False,
        plan_config={"lr": 2e-3},
        trainer_config={"gradient_clip_val": 5.0},
        seed=0,
    )
    history = model.history
    assert list(history["elbo_validation"].index) == [1, 3]  # every 2nd epoch
    assert list(history["elbo_train"].index) == [0, 1, 2, 3]
    np.testing.assert_allclose(history["lr-Adam"]["lr-Adam"], 2e-3)
    assert model.is_trained and model.is_trained_


def test_no_validation_by_default_as_scvi_tools(model):
    model.train(max_epochs=2, enable_progress_bar=False, seed=0)
    assert "elbo_validation" not in model.history
    assert len(model.validation_indices) == 13  # the split still holds 10 % out


def test_unknown_and_refused_trainer_options(model):
    with pytest.raises(TypeError, match="check_val_every_n_epochs"):
        model.train(max_epochs=1, check_val_every_n_epochs=1)
    with pytest.raises(ValueError, match="enable_checkpointing"):
        model.train(max_epochs=1, enable_checkpointing=True)
    with pytest.raises(ValueError, match="strategy"):
        model.train(max_epochs=1, strategy="ddp")
    with pytest.raises(ValueError, match="datamodule"):
        model.train(max_epochs=1, datamodule=object())
    with pytest.raises(ValueError, match="devices"):
        model.train(max_epochs=1, devices=2)
    with pytest.raises(ValueError, match="early_stopping_mode"):
        model.train(max_epochs=1, early_stopping=True, early_stopping_mode="up")
    with pytest.raises(TypeError, match="plan_config"):
        model.train(max_epochs=1, plan_config=3)
    with pytest.raises(ValueError, match="per-step logging"):
        model.train(max_epochs=1, plan_kwargs={"on_step": True, "on_epoch": True})
    assert not model.is_trained  # nothing ran


def test_lightning_callbacks_are_adapted(model):
    stopper = LightningEarlyStopping(monitor="elbo_validation", patience=2, mode="min")
    model.train(
        max_epochs=200,
        callbacks=[LearningRateMonitor(logging_interval="epoch"), stopper],
        check_val_every_n_epoch=1,
        plan_kwargs={"lr": 5e-2, "n_epochs_kl_warmup": None},
        enable_progress_bar=False,
        seed=0,
    )
    val = model.history["elbo_validation"]["elbo_validation"].to_numpy()
    assert len(val) < 200 and len(val) - 1 - int(np.argmin(val)) == 2
    assert len(model.history["lr-Adam"]) == len(val)
    with pytest.raises(ValueError, match="ModelCheckpoint"):
        model.train(max_epochs=1, callbacks=[ModelCheckpoint()])
    with pytest.raises(ValueError, match="Timer"):
        model.train(max_epochs=1, callbacks=[Timer()])
    with pytest.raises(TypeError, match="callbacks"):
        model.train(max_epochs=1, callbacks=[object()])


def test_own_callback_sees_every_epoch_and_can_stop(model):
    class StopAtThree(Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, history):
            self.seen.append((epoch, history["elbo_train"][-1]))
            return epoch == 2

    cb = StopAtThree()
    model.train(max_epochs=10, callbacks=[cb], enable_progress_bar=False, seed=0)
    assert [e for e, _ in cb.seen] == [0, 1, 2]
    assert len(model.history["elbo_train"]) == 3


def test_lr_zero_is_a_frozen_fit(model):
    before = _weights(model)
    model.train(max_epochs=2, plan_kwargs={"lr": 0.0}, enable_progress_bar=False, seed=0)
    np.testing.assert_array_equal(_weights(model).numpy(), before.numpy())


def test_custom_optimizer_and_update_only_decoder(model):
    enc = [p.detach().clone() for p in model.module.encoder.parameters()]
    model.train(
        max_epochs=2,
        plan_kwargs={
            "optimizer": "Custom",
            "optimizer_creator": lambda params: torch.optim.SGD(params, lr=1e-3),
            "update_only_decoder": True,
        },
        learning_rate_monitor=True,
        enable_progress_bar=False,
        seed=0,
    )
    for a, b in zip(enc, model.module.encoder.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach())
    assert "lr-SGD" in model.history
    with pytest.raises(ValueError, match="optimizer_creator"):
        model.train(max_epochs=1, plan_kwargs={"optimizer": "Custom"})


def test_split_rules_of_scvi_tools(adata):
    SCVI.setup_anndata(adata)
    # 130 cells: train_size=None -> 117 training cells, 117 % 115 = 2 -> 2 moved to validation
    model = SCVI(adata, n_hidden=8, n_latent=2)
    with pytest.warns(UserWarning, match="moved"):
        model.train(max_epochs=1, batch_size=115, enable_progress_bar=False, seed=0)
    assert len(model.train_indices) == 115 and len(model.validation_indices) == 15
    # an explicit train_size leaving a 1-cell minibatch under batch norm: ValueError,
    # unless drop_last (scvi-tools fails the same way inside batch norm)
    with pytest.warns(UserWarning, match="1 cell"), pytest.raises(ValueError, match="drop_last"):
        model.train(max_epochs=1, train_size=0.9, batch_size=116, enable_progress_bar=False)
    model.train(
        max_epochs=1,
        train_size=0.9,
        batch_size=116,
        datasplitter_kwargs={"drop_last": True},
        enable_progress_bar=False,
    )
    assert len(model.history["elbo_train"]) == 2  # the first fit's epoch, then this one
    # train + validation < 1 leaves a test set
    model.train(max_epochs=1, train_size=0.5, validation_size=0.3, enable_progress_bar=False)
    sizes = [len(model.train_indices), len(model.validation_indices), len(model.test_indices)]
    assert sizes == [65, 39, 26]
    all_idx = np.concatenate([model.train_indices, model.validation_indices, model.test_indices])
    assert sorted(all_idx) == list(range(130))


def test_external_indexing(adata):
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_hidden=8, n_latent=2)
    train, val, test = np.arange(0, 100), np.arange(100, 120), np.arange(120, 130)
    model.train(
        max_epochs=1,
        datasplitter_kwargs={"external_indexing": [train, val, test]},
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
    )
    np.testing.assert_array_equal(model.train_indices, train)
    np.testing.assert_array_equal(model.validation_indices, val)
    np.testing.assert_array_equal(model.test_indices, test)
    for bad, match in [
        ([train, np.arange(90, 130)], "overlap"),
        ([train[:50], val], "covers"),
        ([np.append(train, 500), val, test], "outside"),
        ([np.append(train, 0), val, test], "repeated"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.train(max_epochs=1, datasplitter_kwargs={"external_indexing": bad})
    with pytest.raises(TypeError, match="num_workers"):
        model.train(max_epochs=1, datasplitter_kwargs={"num_workers": 2})


def test_adata_assignment_is_validated(model, adata):
    other = adata[:, ::-1].copy()
    with pytest.raises(ValueError, match="order"):
        model.adata = other
    assert model.adata is adata  # unchanged after the failed assignment
    subset = adata[:50].copy()
    model.adata = subset
    assert model.adata is subset and model.summary_stats.n_cells == 50


def test_public_setup_views(model, adata, tmp_path, capsys):
    stats = model.summary_stats
    assert (stats.n_cells, stats.n_vars, stats.n_batch, stats.n_labels) == (130, 30, 2, 3)
    manager = model.adata_manager
    assert manager.adata is adata
    assert manager.summary_stats == stats
    batches = manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
    assert list(batches) == sorted(adata.obs["batch"].unique())
    codes = manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
    assert codes.shape == (130, 1)
    np.testing.assert_array_equal(batches[codes.ravel()], adata.obs["batch"].astype(str))
    assert model.registry_["setup_args"]["labels_key"] == "cell_type"
    assert "_scvi_uuid" in adata.uns
    assert model.get_anndata_manager(adata) is not None
    fresh = adata.copy()
    fresh.uns.pop("_scvi_uuid")
    assert model.get_anndata_manager(fresh) is None
    with pytest.raises(ValueError, match="setup_anndata"):
        model.get_anndata_manager(fresh, required=True)
    model.view_anndata_setup(hide_state_registries=True)
    assert "batch_key: 'batch'" in capsys.readouterr().out
    bare = synthetic_counts(20, 30, n_de_genes=4, seed=0)
    with pytest.raises(ValueError, match="not set up"):
        model.view_anndata_setup(bare)
    model.save(tmp_path / "m")
    SCVI.view_setup_args(tmp_path / "m")
    assert "labels_key: 'cell_type'" in capsys.readouterr().out


def test_return_types_match_scvi_tools(model):
    model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    elbo = model.get_elbo()
    assert isinstance(elbo, torch.Tensor) and elbo.ndim == 0
    assert isinstance(model.get_elbo(return_mean=False), torch.Tensor)
    rec = model.get_reconstruction_error()["reconstruction_loss"]
    assert isinstance(rec, torch.Tensor) and rec.ndim == 0
    mll = model.get_marginal_ll(n_mc_samples=5)
    assert isinstance(mll, np.floating) and mll.ndim == 0
    assert isinstance(model.get_marginal_ll(n_mc_samples=5, return_mean=False), torch.Tensor)


def test_latent_library_size(adata):
    SCVI.setup_anndata(adata)
    observed = SCVI(adata, n_hidden=8, n_latent=2)
    lib = observed.get_latent_library_size(give_mean=False)
    np.testing.assert_allclose(lib.ravel(), np.asarray(adata.X.sum(1)).ravel(), rtol=1e-5)
    with pytest.raises(RuntimeError, match="give_mean=False"):
        observed.get_latent_library_size()
    latent = SCVI(adata, n_hidden=8, n_latent=2, use_observed_lib_size=False)
    latent.train(max_epochs=2, enable_progress_bar=False, seed=0)
    mean = latent.get_latent_library_size(indices=np.arange(5))
    assert mean.shape == (5, 1) and (mean > 0).all()
    draws = np.stack(
        [latent.get_latent_library_size(indices=np.arange(5), give_mean=False) for _ in range(400)]
    )
    se = draws.std(0) / np.sqrt(len(draws))
    assert (np.abs(draws.mean(0) - mean) < 5 * se).all()  # the closed form is the mean


def test_settings_seed_reproduces_construction_and_training(adata, seed_setting):
    SCVI.setup_anndata(adata, batch_key="batch")
    runs = []
    for _ in range(2):
        seed_setting.seed = 7
        model = SCVI(adata, n_hidden=8, n_latent=2)
        torch.randn(10)  # other draws in between must not matter
        model.train(max_epochs=3, enable_progress_bar=False)
        runs.append((_weights(model), model.train_indices.copy()))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    seed_setting.seed = 8
    other = SCVI(adata, n_hidden=8, n_latent=2)
    assert not torch.equal(_weights(other), runs[0][0][: _weights(other).numel()])


def test_stochastic_methods_take_a_seed(model):
    a = model.get_elbo(seed=3)
    b = model.get_elbo(seed=3)
    assert a == b and model.get_elbo(seed=4) != a
    torch.testing.assert_close(
        model.get_marginal_ll(n_mc_samples=4, return_mean=False, seed=1),
        model.get_marginal_ll(n_mc_samples=4, return_mean=False, seed=1),
    )


def test_trained_model_deepcopies_and_pickles(model):
    model.train(max_epochs=2, enable_progress_bar=False, seed=0)
    model.get_elbo()  # fills the data cache
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.is_trained
        torch.testing.assert_close(clone.get_elbo(seed=0), model.get_elbo(seed=0))
        z1 = clone.get_latent_representation(give_mean=False, seed=2)
        z2 = model.get_latent_representation(give_mean=False, seed=2)
        np.testing.assert_array_equal(z1, z2)


def test_load_takes_scvi_tools_arguments(model, tmp_path):
    model.save(tmp_path / "m")
    loaded = SCVI.load(tmp_path / "m", adata=model.adata, allowed_classes_names_list=["SCVI"])
    assert isinstance(loaded, SCVI)
    with pytest.raises(ValueError, match=r"allowed_classes_names_list.*SCVI"):
        SCVI.load(tmp_path / "m", adata=model.adata, allowed_classes_names_list=["SCANVI"])
    with pytest.raises(ValueError, match="datamodule"):
        SCVI.load(tmp_path / "m", adata=model.adata, datamodule=object())


def test_corrupted_or_foreign_save_is_a_clear_error(model, tmp_path):
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid SCVI model"):
        SCVI.load(tmp_path / "m", adata=model.adata)
    torch.save({"something": 1}, path)
    with pytest.raises(ValueError, match="lacks the model's entries"):
        SCVI.load(tmp_path / "m", adata=model.adata)
    with pytest.raises(FileNotFoundError, match="prefix"):
        SCVI.load(tmp_path / "m", adata=model.adata, prefix="other_")


def test_aggregated_posterior_and_run_names(model):
    model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    mean, var = model.get_latent_representation(indices=np.arange(20), return_dist=True)
    loc, scale = torch.as_tensor(mean), torch.as_tensor(var).sqrt()
    z = torch.zeros(1, 2)
    for dof, component in (
        (None, torch.distributions.Normal(loc, scale)),
        (3.0, torch.distributions.StudentT(3.0, loc, scale)),  # scvi-tools 1.5's default
    ):
        kwargs = {} if dof == 3.0 else {"dof": dof}
        agg = model.get_aggregated_posterior(indices=np.arange(20), **kwargs)
        expected = torch.logsumexp(component.log_prob(z).sum(-1), 0) - np.log(20)
        torch.testing.assert_close(agg.log_prob(z)[0], expected)
    with pytest.raises(ValueError, match="dof"):
        model.get_aggregated_posterior(dof=0.0)
    assert model.run_name.startswith("run_") and model.run_id == ""
    model.run_id = "abc"
    assert model.run_id == "abc"


def test_scvi_tools_methods_not_offered_say_so(model):
    for call in (
        lambda: SCVI.load_query_data(model.adata, "ref"),
        lambda: SCVI.prepare_query_anndata(model.adata, "ref"),
        lambda: model.minify_adata(),
        lambda: SCVI.convert_legacy_save("a", "b"),
        lambda: SCVI.setup_mudata(None),
        lambda: model.differential_abundance(),
        lambda: SCVI.register_manager(None),
        lambda: model.deregister_manager(),
        lambda: model.update_setup_method_args({"batch_key": "x"}),
        lambda: SCVI.load_registry("somewhere"),
        lambda: SCVI.setup_annbatch(paths=["a.h5ad"]),
        lambda: SCVI.prepare_query_mudata(None, model),
        lambda: model.get_importance_weights(model.adata, [0, 1], None, None, None),
    ):
        with pytest.raises(NotImplementedError, match=r"SCVI\..* does not offer"):
            call()
    with pytest.raises(AttributeError, match=r"no Lightning `trainer`.*history"):
        _ = model.trainer
    assert not hasattr(model, "trainer")


def test_registry_reads_as_scvi_tools_model_methods(model, adata, capsys):
    """BaseModelClass' registry methods, called as scvi-tools' docs and scripts call them."""
    batches = model.get_from_registry(adata, "batch")
    assert batches.shape == (adata.n_obs, 1)
    codes = model.get_state_registry("batch").categorical_mapping
    np.testing.assert_array_equal(np.asarray(codes)[batches[:, 0]], adata.obs["batch"].to_numpy())
    np.testing.assert_array_equal(model.data_registry("batch"), batches)
    assert model.get_from_registry(adata, "X").shape == adata.shape
    assert model.get_setup_arg("batch_key") == "batch"
    assert model.get_setup_arg("labels_key") == "cell_type"
    assert model.get_setup_arg("layer") is None
    with pytest.raises(KeyError, match=r"not a setup argument.*batch_key"):
        model.get_setup_arg("batch")
    with pytest.raises(KeyError, match="not a registered field"):
        model.get_state_registry("nonsense")
    never = adata.copy()
    del never.uns["_sbi_vi_setup"], never.uns["_scvi_uuid"]
    with pytest.raises(ValueError, match="setup_anndata"):
        model.get_from_registry(never, "batch")
    names = model.get_var_names()
    assert isinstance(names, np.ndarray) and list(names) == list(adata.var_names)
    assert model.minified_data_type is None
    assert model.get_normalized_function_name == "get_normalized_expression"
    assert isinstance(model.id, str) and model.id == model.id and len(model.id) == 36
    assert model.summary_string.startswith("SCVI model with the following parameters")
    assert "Training status: Not Trained" in model.summary_string
    model.view_registry(hide_state_registries=True)
    model.view_setup_method_args()
    out = capsys.readouterr().out
    assert "Setup via `SCVI.setup_anndata`" in out and "batch_key: 'batch'" in out


def test_transfer_fields_sets_up_a_new_anndata(model, adata):
    other = adata.copy()
    del other.uns["_sbi_vi_setup"], other.uns["_scvi_uuid"]
    assert model.transfer_fields(other) is other
    assert model.get_anndata_manager(other) is not None
    np.testing.assert_array_equal(
        model.get_from_registry(other, "batch"), model.get_from_registry(adata, "batch")
    )
    with pytest.raises(NotImplementedError, match="extend_categories"):
        model.transfer_fields(adata.copy(), extend_categories=True)
    wrong = adata[:, :5].copy()
    with pytest.raises(ValueError):
        model.transfer_fields(wrong)


def test_views_of_an_anndata_the_model_checked(model, adata, capsys):
    other = adata.copy()
    del other.uns["_sbi_vi_setup"], other.uns["_scvi_uuid"]
    model.get_elbo(other)  # checked against the set-up, hence known to the model
    model.view_anndata_setup(other)
    assert "n_cells: 130" in capsys.readouterr().out
    missing = adata.copy()
    del missing.obs["batch"]
    with pytest.raises(KeyError, match="batch"):  # scvi-tools raises KeyError; ours is both
        model.adata = missing
    with pytest.raises(ValueError, match="batch"):
        model.adata = missing


def test_a_copy_gets_its_own_marker(model, adata):
    other = adata.copy()
    assert other.uns["_scvi_uuid"] == adata.uns["_scvi_uuid"]
    model.get_elbo(other)
    assert other.uns["_scvi_uuid"] != adata.uns["_scvi_uuid"]
    assert model.get_anndata_manager(other) is not None
    assert model.get_anndata_manager(adata) is not None


def test_normalized_expression_importance_weights(model, adata):
    model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    torch.manual_seed(0)
    draws = model.get_normalized_expression(
        indices=np.arange(20), n_samples_overall=50, weights="importance", n_mc_samples=30
    )
    assert isinstance(draws, np.ndarray) and draws.shape == (50, 30)
    np.testing.assert_allclose(draws.sum(1), 1.0, rtol=1e-4)  # library_size=1: frequencies
    uniform = model.get_normalized_expression(n_samples_overall=50, weights="uniform")
    assert uniform.shape == (50, 30)
    with pytest.raises(TypeError, match="n_mc_sample"):
        model.get_normalized_expression(n_samples_overall=5, weights="importance", n_mc_sample=3)
    with pytest.raises(ValueError, match="weights"):
        model.get_normalized_expression(weights="heavy")
    batches = list(adata.obs["batch"].unique())
    with pytest.raises(NotImplementedError, match="averaged across batches"):
        model.get_normalized_expression(
            n_samples_overall=5, weights="importance", transform_batch=batches
        )


def test_history_keys_that_begin_in_a_later_train_call(model):
    model.train(max_epochs=2, enable_progress_bar=False, seed=0)
    model.train(max_epochs=2, learning_rate_monitor=True, enable_progress_bar=False, seed=1)
    history = model.history
    assert list(history["elbo_train"].index) == [0, 1, 2, 3]
    assert list(history["lr-Adam"].index) == [2, 3]
