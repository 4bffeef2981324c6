"""DE against scvi-tools 1.5's contract: signature, settings, empty groups, importance weights."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, Normal

from sbi_vi.singlecell import SCVI, synthetic_counts
from sbi_vi.singlecell.de_sampling import (
    GroupDraws,
    draws_per_cell,
    importance_draws,
    normalised_weights,
    uniform_draws,
)
from sbi_vi.singlecell.de_settings import DESettings, ImportanceSettings
from sbi_vi.singlecell.differential import pair_draws

# scvi-tools 1.5.1, RNASeqMixin.differential_expression: (name, default), in order
SCVI_DE_SIGNATURE = [
    ("adata", None), ("groupby", None), ("group1", None), ("group2", None), ("idx1", None),
    ("idx2", None), ("mode", "vanilla"), ("delta", 0.25), ("batch_size", None),
    ("all_stats", True), ("batch_correction", False), ("batchid1", None), ("batchid2", None),
    ("fdr_target", 0.05), ("silent", False), ("weights", "uniform"),
    ("filter_outlier_cells", False), ("importance_weighting_kwargs", None), ("dataloader", None),
]  # fmt: skip


def test_signature_is_scvi_tools_one():
    params = list(inspect.signature(SCVI.differential_expression).parameters.values())[1:]
    assert [(p.name, p.default) for p in params[:-1]] == SCVI_DE_SIGNATURE
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD


def _call(**overrides):
    args = dict(mode="change", delta=0.25, batch_size=None, all_stats=True,
                batch_correction=False, batchid1=None, batchid2=None, fdr_target=0.05,
                weights="uniform", filter_outlier_cells=False,
                importance_weighting_kwargs=None, kwargs={})  # fmt: skip
    args.update(overrides)
    return DESettings.from_call(**args)


def test_settings_validate_once_and_name_the_argument():
    s = _call(kwargs={"M_permutation": 7, "cred_interval_lvls": [0.5]}, weights=None)
    assert s.m_permutation == 7 and s.cred_interval_lvls == (0.5,) and s.weights == "uniform"
    assert s.batch_size == 128 and s.use_observed_batches
    with pytest.raises(AttributeError):
        s.delta = 1.0  # frozen
    with pytest.raises(TypeError, match="n_sample_overall"):
        _call(kwargs={"n_sample_overall": 10})  # misspelled: never silently dropped
    with pytest.raises(TypeError, match="max_cell"):
        _call(importance_weighting_kwargs={"max_cell": 3})
    with pytest.raises(ValueError, match="batch_correction"):
        _call(batchid1=["batch_0"])  # scvi-tools: inconsistent batch policy
    assert _call(batch_correction=True, batchid1="batch_0").batchid1 == ("batch_0",)
    for bad, name in (
        ({"mode": "other"}, "mode"),
        ({"weights": "imp"}, "weights"),
        ({"delta": -1.0}, "delta"),
        ({"fdr_target": 2.0}, "fdr_target"),
        ({"kwargs": {"n_samples_overall": 0}}, "n_samples_overall"),
        ({"kwargs": {"test_mode": "four"}}, "test_mode"),
        ({"kwargs": {"cred_interval_lvls": [1.5]}}, "cred_interval_lvls"),
        ({"importance_weighting_kwargs": {"n_mc_samples": 1}}, "n_mc_samples"),
    ):
        with pytest.raises(ValueError, match=name):
            _call(**bad)


@given(n_cells=st.integers(1, 60), n_draws=st.integers(1, 500))
@settings(max_examples=40, deadline=None)
def test_every_cell_gets_an_equal_share_of_draws(n_cells, n_draws):
    counts = draws_per_cell(n_cells, n_draws)
    assert counts.shape == (n_cells,) and counts.sum() == n_draws
    assert counts.max() - counts.min() <= 1


def test_pairs_stay_within_a_batch_under_batch_correction():
    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1], [30, 50])
    d1 = GroupDraws(codes[:, None] + rng.random((80, 3)), codes)
    d2 = GroupDraws(codes[::-1, None] + rng.random((80, 3)), codes[::-1])
    corrected = _call(batch_correction=True)
    s1, s2 = pair_draws(d1, d2, corrected)
    assert len(s1) == 80 and (np.floor(s1) == np.floor(s2)).all()
    s1, s2 = pair_draws(
        d1,
        d2,
        _call(batch_correction=True, kwargs={"use_permutation": True, "m_permutation": 100}),
    )
    assert len(s1) == 100 and (np.floor(s1) == np.floor(s2)).all()


def test_normalised_weights_of_a_perfect_proposal_are_uniform_and_reweight_otherwise():
    w, khat = normalised_weights(torch.zeros(200, 4), truncation=False)
    torch.testing.assert_close(w, torch.full((200, 4), 1 / 200))
    # q = N(0, 1.5²), p = N(0.5, 1): weighted means recover p's mean, whatever the tail rule
    g = torch.Generator().manual_seed(0)
    theta = 1.5 * torch.randn(4000, 3, generator=g)
    log_w = Normal(0.5, 1.0).log_prob(theta) - Normal(0.0, 1.5).log_prob(theta)
    for truncation in (False, True):
        w, khat = normalised_weights(log_w, truncation=truncation)
        torch.testing.assert_close(w.sum(0), torch.ones(3))
        assert ((w * theta).sum(0) - 0.5).abs().max() < 0.1 and (khat < 0.5).all()


# --------------------------------------------------------------------------- on a model
@pytest.fixture(scope="module")
def small_model():
    adata = synthetic_counts(200, 30, n_cell_types=3, n_de_genes=6, seed=5,
                             library_log_mean=np.log(300.0))  # fmt: skip
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories(["empty"])
    adata.obs["state"] = np.where(np.arange(200) % 2 == 0, "ctrl", "stim")
    SCVI.setup_anndata(adata, batch_key="batch")
    torch.manual_seed(0)  # the initial weights come from the global generator
    model = SCVI(adata, n_latent=2, n_hidden=16)
    model.train(max_epochs=10, show_progress_bar=False, seed=0)
    return model


@torch.no_grad()
def _exact_mean_scale(model, idx):
    """E[ρ | x_n] averaged over the cells, by quadrature on a 2-D grid around each posterior."""
    module = model.module
    cells = next(model._minibatches(model.adata, idx, len(idx)))
    draws = module.q(cells).sample((2000,))
    t = torch.linspace(-10.0, 10.0, 201)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 1, 2)
    u = draws.mean(0) + grid * draws.std(0)  # [K, B, 2]
    z, log_library = module.split(u, cells)
    px = module.generative(z, log_library, cells)
    w = torch.softmax(px.log_prob_sum(cells.x) + module.log_prior(u, cells), 0)
    assert w.max() < 0.01  # the grid resolves every posterior
    return (w[..., None] * px.scale).sum(0).mean(0).numpy()


@pytest.mark.filterwarnings("ignore:Importance weighting of group")
def test_importance_weights_move_a_poor_encoder_to_the_exact_posterior(small_model, monkeypatch):
    model, idx = small_model, np.arange(8)
    torch.manual_seed(0)
    exact = _exact_mean_scale(model, idx)
    encoder = model.module.q

    def poor(cells):  # shifted by one sd and 1.5x too wide: a poor but safe proposal
        draws = encoder(cells).sample((1000,))
        return Independent(Normal(draws.mean(0) + draws.std(0), 1.5 * draws.std(0)), 1)

    monkeypatch.setattr(model.module, "q", poor)

    def error(draws):
        return np.abs(np.log(draws.scales.mean(0)) - np.log(exact)).max()

    uniform = uniform_draws(model, model.adata, idx, [None], 16000, 128)
    weighted = importance_draws(
        model, model.adata, idx, [None], 16000, 128, ImportanceSettings(), "group"
    )
    assert weighted.khat.shape == (8,) and np.isfinite(weighted.khat).all()
    assert error(uniform) > 0.1  # the poor encoder is visibly off ...
    assert error(weighted) < 0.2 * error(uniform)  # ... and importance weights correct it


def test_importance_weighted_de_end_to_end(small_model):
    model = small_model
    kwargs = dict(groupby="cell_type", group1="type_0", group2="type_1", mode="change",
                  silent=True)  # fmt: skip
    uniform = model.differential_expression(**kwargs)
    with pytest.warns(UserWarning, match="k̂"):  # the tiny model's encoder is poor for some
        weighted = model.differential_expression(weights="importance", **kwargs)
    assert list(weighted.columns) == list(uniform.columns)
    assert weighted["proba_de"].between(0, 1).all()
    corrected = model.differential_expression(
        weights="importance", batch_correction=True,
        importance_weighting_kwargs={"n_mc_samples": 50, "max_cells": 20, "khat_threshold": 5.0},
        n_samples_overall=400, **kwargs,
    )  # fmt: skip
    assert corrected.shape == uniform.shape
    with pytest.raises(ValueError, match=r"'type_0'.*cell_type.*khat_threshold"):
        model.differential_expression(
            weights="importance", importance_weighting_kwargs={"khat_threshold": -10.0},
            **kwargs,
        )  # fmt: skip


def test_the_same_seed_gives_the_same_table(small_model):
    frames = []
    for _ in range(2):
        torch.manual_seed(0)
        frames.append(small_model.differential_expression(idx1=np.arange(40), silent=True))
    pd.testing.assert_frame_equal(*frames)


def test_a_group_with_no_cells_is_named_with_its_column(small_model):
    model = small_model
    n = model.adata.n_obs
    cases = [
        (dict(groupby="cell_type", group1="empty"), r"'empty'.*0 cells.*cell_type"),
        (dict(groupby="cell_type", group1="type_0", group2="empty"), r"group2.*'empty'.*0 cells"),
        (dict(groupby="cell_type", group1="type_9"), r"'type_9'.*not a group.*cell_type"),
        (dict(groupby="cell_type"), r"'empty'.*0 cells"),  # one-vs-all over every category
        (dict(idx1=np.zeros(n, bool)), r"`idx1` selects 0 cells"),
        (dict(idx1=[0, 1], idx2=[]), r"`idx2` selects 0 cells"),
        (dict(idx1=np.ones(n, bool)), r"complement.*0 cells"),
        (dict(idx1="cell_type == 'nothing'"), r"`idx1` selects 0 cells"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.differential_expression(silent=True, **kwargs)
    with pytest.raises(ValueError, match=r"state1.*'nope'.*0 cells.*state"):
        model.within_cluster_degenes(cluster_key="cell_type", states_key="state", state1="nope")
    with pytest.raises(ValueError, match="min_cells"):
        model.within_cluster_degenes(
            cluster_key="cell_type", states_key="state", state1="stim", min_cells=0
        )


def test_draws_are_decoded_in_bounded_chunks(small_model, monkeypatch):
    from sbi_vi.singlecell import de_sampling

    model, idx = small_model, np.arange(5)
    torch.manual_seed(0)
    whole = uniform_draws(model, model.adata, idx, [None, 1], 300, 128)
    monkeypatch.setattr(de_sampling, "_ELEMENTS_PER_PASS", 64)  # 2 draws of 1 cell per pass
    torch.manual_seed(0)
    chunked = uniform_draws(model, model.adata, idx, [None, 1], 300, 128)
    assert chunked.scales.shape == whole.scales.shape == (300, model.adata.n_vars)
    assert (np.bincount(chunked.codes + 1) == [150, 0, 150]).all()
    # the same distribution: per-gene means agree within Monte Carlo error
    se = whole.scales.std(0) / np.sqrt(300)
    assert (np.abs(chunked.scales.mean(0) - whole.scales.mean(0)) < 5 * se + 1e-6).all()
    few = ImportanceSettings(n_mc_samples=50, khat_threshold=10.0)
    weighted = importance_draws(model, model.adata, idx, [None], 40, 128, few, "g")
    assert weighted.scales.shape == (40, model.adata.n_vars)
