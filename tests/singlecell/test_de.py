"""Differential expression: the arithmetic, the API, and ground-truth accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sbi_vi.singlecell import SCVI, synthetic_counts
from sbi_vi.singlecell.de import (
    bayes_factors,
    empirical_null_qvalues,
    estimate_delta,
    estimate_pseudocounts,
    fdr_de_prediction,
    hpd_intervals,
)


def test_fdr_call_controls_the_expected_false_discovery_proportion():
    rng = np.random.default_rng(0)
    realised = []
    for _ in range(300):
        proba = rng.beta(0.3, 0.3, size=400)  # calibrated probabilities of being DE
        truth = rng.random(400) < proba
        called = fdr_de_prediction(proba, 0.05)
        assert (1 - proba[called]).mean() <= 0.05 if called.any() else True
        if called.any():
            realised.append((called & ~truth).sum() / called.sum())
    assert np.mean(realised) <= 0.05 + 3 * np.std(realised) / np.sqrt(len(realised))
    # the call is the largest prefix of the sorted probabilities meeting the target
    proba = np.array([0.9, 1.0, 0.99, 0.5])
    assert fdr_de_prediction(proba, 0.05).tolist() == [True, True, True, False]
    assert fdr_de_prediction(proba, 0.01).tolist() == [False, True, True, False]


def test_empirical_null_controls_the_false_discovery_rate():
    rng = np.random.default_rng(3)
    any_call, fdp, power = [], [], []
    for _ in range(200):
        scale = rng.uniform(0.05, 0.5)  # the null's width is unknown to the rule
        null = rng.normal(rng.normal(0, 0.1), scale, size=1000)
        any_call.append((empirical_null_qvalues(null) <= 0.05).any())
        effect = null.copy()
        de = rng.random(1000) < 0.1
        effect[de] += rng.choice([-1, 1], de.sum()) * rng.uniform(6, 10, de.sum()) * scale
        called = empirical_null_qvalues(effect) <= 0.05
        fdp.append((called & ~de).sum() / max(called.sum(), 1))
        power.append((called & de).sum() / de.sum())
    # global null: BH at 0.05 controls the family-wise error (binomial sd 0.015 at 200)
    assert np.mean(any_call) <= 0.05 + 3 * 0.0155
    assert np.mean(fdp) <= 0.05 + 3 * np.std(fdp) / np.sqrt(len(fdp))
    assert np.mean(power) > 0.95
    q = empirical_null_qvalues(np.r_[rng.normal(0, 1, 50), np.nan, np.inf])
    assert q is not None and q.shape == (52,) and (q[-2:] == 1).all() and (q <= 1).all()
    assert empirical_null_qvalues(rng.normal(size=19)) is None  # too few genes for a null
    assert empirical_null_qvalues(np.zeros(100)) is None  # no spread


def test_bayes_factor_modes():
    rng = np.random.default_rng(1)
    s2 = rng.gamma(50.0, 1 / 50.0, size=(3000, 3))
    s1 = s2 * np.array([4.0, 1.0, 1.0]) * rng.gamma(50.0, 1 / 50.0, size=(3000, 3))
    vanilla = bayes_factors(s1, s2, mode="vanilla")
    assert vanilla["proba_m1"][0] > 0.99 and 0.3 < vanilla["proba_m1"][1] < 0.7
    np.testing.assert_allclose(vanilla["proba_m1"] + vanilla["proba_m2"], 1.0)
    change = bayes_factors(s1, s2, mode="change", delta=0.5, cred_interval_lvls=[0.5, 0.9])
    assert change["proba_de"][0] > 0.99 and change["proba_de"][1] < 0.5
    assert abs(change["lfc_mean"][0] - 2.0) < 0.05 and change["delta"] == 0.5
    lo50, hi50 = (
        change["lfc_confidence_interval_0.5_min"],
        change["lfc_confidence_interval_0.5_max"],
    )
    lo90, hi90 = (
        change["lfc_confidence_interval_0.9_min"],
        change["lfc_confidence_interval_0.9_max"],
    )
    assert (lo90 <= lo50).all() and (hi50 <= hi90).all()
    two = bayes_factors(s1, s2, mode="change", delta=0.5, test_mode="two")
    assert (two["proba_de"] >= change["proba_de"] - 1e-12).all()
    custom = bayes_factors(s1, s2, mode="change", change_fn=lambda a, b: a - b,
                           m1_domain_fn=lambda r: r > 0.5)  # fmt: skip
    assert custom["proba_de"][0] > 0.99 and custom["proba_de"][2] < 0.1
    with pytest.raises(ValueError, match="pair"):
        bayes_factors(s1, s2[:10])
    with pytest.raises(ValueError, match="mode"):
        bayes_factors(s1, s2, mode="other")


def test_delta_pseudocounts_and_hpd():
    rng = np.random.default_rng(2)
    lfc = np.concatenate(
        [rng.normal(0, 0.05, 900), rng.normal(2, 0.1, 50), rng.normal(-2, 0.1, 50)]
    )
    assert 1.0 < estimate_delta(lfc) < 1.4  # 0.6 * mean(|-2|, |2|)
    s = rng.uniform(0, 1, size=(100, 4))
    pc = estimate_pseudocounts(s, s, np.array([True, False, False, False]), np.zeros(4, bool))
    assert pc == pytest.approx(np.quantile(s.max(0)[:1], 0.9) / 4)
    x = rng.normal(size=(20000, 1))
    lo, hi = hpd_intervals(x, 0.95)
    assert abs(lo[0] + 1.96) < 0.05 and abs(hi[0] - 1.96) < 0.05
    with pytest.raises(ValueError, match="level"):
        hpd_intervals(x, 1.5)


@pytest.fixture(scope="module")
def de_model():
    adata = synthetic_counts(2000, 300, n_de_genes=40, seed=11, library_log_mean=np.log(1500.0))
    adata.obs["state"] = np.where(np.arange(2000) % 2 == 0, "ctrl", "stim")
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, gene_likelihood="nb")
    model.train(max_epochs=100, show_progress_bar=False, seed=0,
                plan_kwargs={"n_epochs_kl_warmup": 20})  # fmt: skip
    return model


def _masks(adata, n=None, seed=0):
    a, b = adata.uns["synthetic"]["de_types"]
    types = adata.obs["cell_type"].to_numpy()
    rng = np.random.default_rng(seed)
    out = []
    for t in (a, b):
        idx = np.flatnonzero(types == t)
        if n is not None:
            idx = rng.choice(idx, n, replace=False)
        mask = np.zeros(adata.n_obs, bool)
        mask[idx] = True
        out.append(mask)
    return out


@pytest.mark.slow
def test_ground_truth_ranking_and_fdr_call(de_model):
    adata = de_model.adata
    truth = adata.var["de"].to_numpy()
    for n, seed in ((None, 0), (25, 1), (25, 2)):
        m1, m2 = _masks(adata, n, seed)
        res = de_model.differential_expression(idx1=m1, idx2=m2, mode="change")
        res = res.loc[adata.var_names]
        assert average_precision_score(truth, res["proba_de"]) > 0.9
        called = res["is_de_fdr_0.05"].to_numpy()
        precision = (called & truth).sum() / max(called.sum(), 1)
        recall = (called & truth).sum() / truth.sum()
        assert precision >= 0.95, (n, precision)
        assert recall >= 0.5, (n, recall)
        # the sign of the log fold change follows the truth on the called genes
        lfc = adata.var["true_lfc"].to_numpy()
        assert (
            np.sign(res["lfc_mean"].to_numpy()[called & truth]) == np.sign(lfc[called & truth])
        ).all()
        if n is not None:  # the importance-weighted draws rank as well
            weighted = de_model.differential_expression(
                idx1=m1, idx2=m2, mode="change", weights="importance", silent=True
            )
            weighted = weighted.loc[adata.var_names, "proba_de"]
            assert average_precision_score(truth, weighted) > 0.9
    vanilla = de_model.differential_expression(idx1=m1, idx2=m2)
    assert average_precision_score(truth, vanilla.loc[adata.var_names, "bayes_factor"].abs()) > 0.8


def test_api_shapes_and_columns(de_model):
    model = de_model
    adata = model.adata
    res = model.differential_expression(groupby="cell_type", group1="type_0", group2="type_1",
                                        mode="change", cred_interval_lvls=[0.9])  # fmt: skip
    assert res.shape[0] == 300 and (res["comparison"] == "type_0 vs type_1").all()
    for col in ("proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "lfc_mean",
                "lfc_median", "lfc_std", "raw_mean1", "non_zeros_proportion2",
                "raw_normalized_mean1", "is_de_fdr_0.05", "lfc_null_qvalue",
                "lfc_confidence_interval_0.9_min"):  # fmt: skip
        assert col in res.columns, col
    assert res["proba_de"].is_monotonic_decreasing
    one_vs_all = model.differential_expression(groupby="cell_type", batch_size=256)
    assert set(one_vs_all["group2"]) == {"Rest"} and len(one_vs_all) == 5 * 300
    assert one_vs_all["bayes_factor"].notna().all()
    query = model.differential_expression(idx1="cell_type == 'type_2'", mode="change",
                                          batch_correction=True, use_permutation=True,
                                          M_permutation=2000, fdr_target=0.1)  # fmt: skip
    assert "is_de_fdr_0.1" in query.columns and "comparison" not in query.columns
    within = model.within_cluster_degenes(cluster_key="cell_type", states_key="state",
                                          state1="stim", mode="change")  # fmt: skip
    assert set(within) == {f"type_{i}" for i in range(5)}
    # no DE between random halves of the same cells: few calls
    assert within["type_0"]["is_de_fdr_0.05"].sum() <= 3
    raw = adata[adata.obs["cell_type"] == "type_0"].X
    np.testing.assert_allclose(
        res.loc[adata.var_names, "raw_mean1"], np.asarray(raw.mean(0)).ravel(), rtol=1e-6
    )


def test_de_errors(de_model):
    model = de_model
    with pytest.raises(ValueError, match="groupby"):
        model.differential_expression(groupby="nope")
    with pytest.raises(ValueError, match="type_9"):
        model.differential_expression(groupby="cell_type", group1="type_9")
    with pytest.raises(ValueError, match="idx1"):
        model.differential_expression(idx1=np.zeros(model.adata.n_obs, bool))
    with pytest.raises(ValueError, match="weights"):
        model.differential_expression(groupby="cell_type", weights="importance-ish")
    with pytest.raises(ValueError, match="groupby"):
        model.differential_expression()


def test_fdr_call_on_a_small_gene_panel_warns_and_keeps_the_posterior_rule():
    adata = synthetic_counts(200, 12, n_de_genes=3, seed=5)
    SCVI.setup_anndata(adata)
    model = SCVI(adata, gene_likelihood="nb", n_latent=2)
    model.train(max_epochs=2, show_progress_bar=False, seed=0)
    m1, m2 = _masks(adata)
    with pytest.warns(UserWarning, match="empirical null"):
        res = model.differential_expression(idx1=m1, idx2=m2, mode="change")
    expected = fdr_de_prediction(res["proba_de"].to_numpy(), 0.05)
    assert (res["is_de_fdr_0.05"].to_numpy() == expected).all()
    assert "lfc_null_qvalue" not in res.columns
