"""Tests of the ground-truth single-cell count generator."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sbi_vi.singlecell.synthetic import synthetic_counts

SMALL = {"n_cells": 60, "n_genes": 30, "n_de_genes": 6}
BIG = {"n_cells": 4000, "n_genes": 200, "n_de_genes": 20, "sparse": False, "seed": 3}
Z = 5.0  # z-score bound of the statistical checks (deterministic seeds; ~1e-6 per check)


@functools.cache
def _big(likelihood: str = "nb", dispersion: float | None = None):
    return synthetic_counts(likelihood=likelihood, dispersion=dispersion, **BIG)


def _mean_and_var(adata):
    """Exact conditional mean and variance of every count given the cell's truth."""
    rho = adata.obsm["true_normalized"].astype(float)
    beta = adata.varm["batch_effect"].T[adata.obs["batch"].cat.codes.to_numpy()]
    rho_b = rho * np.exp(beta)
    rho_b /= rho_b.sum(axis=1, keepdims=True)
    mu = adata.obs["library_size"].to_numpy()[:, None] * rho_b
    lik = adata.uns["synthetic"]["likelihood"]
    var_nb = mu if lik == "poisson" else mu + mu**2 / adata.var["dispersion"].to_numpy()
    keep = 1.0 - adata.var["dropout"].to_numpy()
    mean = keep * mu
    return mean, keep * (var_nb + mu**2) - mean**2, mu


def test_shapes_dtypes_and_names():
    ad = synthetic_counts(**SMALL, n_batches=3, n_latent=4)
    n, g = 60, 30
    assert ad.shape == (n, g)
    assert sp.isspmatrix_csr(ad.X) and ad.X.dtype == np.int64
    assert list(ad.var_names[:2]) == ["gene_0", "gene_1"]
    assert isinstance(ad.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert list(ad.obs["cell_type"].cat.categories) == [f"type_{t}" for t in range(5)]
    assert list(ad.obs["batch"].cat.categories) == ["batch_0", "batch_1", "batch_2"]
    assert ad.var["de"].dtype == bool and ad.var["true_lfc"].dtype == np.float64
    assert ad.obsm["true_normalized"].shape == (n, g)
    assert ad.obsm["true_normalized"].dtype == np.float32
    assert ad.obsm["true_latent"].shape == (n, 4)
    assert ad.varm["type_profile"].shape == (g, 5)
    assert ad.varm["batch_effect"].shape == (g, 3)
    np.testing.assert_allclose(ad.varm["type_profile"].sum(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ad.obsm["true_normalized"].sum(axis=1), 1.0, rtol=1e-5)
    assert (ad.obs["library_size"] > 0).all() and (ad.var["dispersion"] > 0).all()
    counts = np.bincount(ad.obs["cell_type"].cat.codes, minlength=5)
    assert counts.max() - counts.min() <= 1
    info = ad.uns["synthetic"]
    assert json.loads(json.dumps(info)) == info
    assert info["de_types"] == ["type_0", "type_1"] and info["n_de_genes"] == 6


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_counts_are_nonnegative_whole_numbers(likelihood, dtype):
    ad = synthetic_counts(**SMALL, likelihood=likelihood, counts_dtype=dtype, sparse=False)
    x = ad.X
    assert isinstance(x, np.ndarray) and x.dtype == dtype
    assert (x >= 0).all() and np.array_equal(x, np.round(x)) and x.sum() > 0


def test_sparse_and_dense_hold_the_same_counts():
    a = synthetic_counts(**SMALL, sparse=True)
    b = synthetic_counts(**SMALL, sparse=False)
    assert sp.isspmatrix_csr(a.X)
    np.testing.assert_array_equal(a.X.toarray(), b.X)


def test_reproducible_and_leaves_global_rng_alone():
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    a, b = synthetic_counts(**SMALL, seed=7), synthetic_counts(**SMALL, seed=7)
    c = synthetic_counts(**SMALL, seed=8)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["true_normalized"], b.obsm["true_normalized"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert (a.X != c.X).nnz > 0
    assert not np.array_equal(a.varm["type_profile"], c.varm["type_profile"])


@pytest.mark.parametrize(
    ("n_genes", "n_de", "de_types", "seed"),
    [(30, 2, (0, 1), 0), (200, 7, (3, 1), 1), (500, 50, (0, 1), 2), (40, 40, (4, 2), 3)],
)
def test_de_contract_on_type_profiles(n_genes, n_de, de_types, seed):
    ad = synthetic_counts(
        50, n_genes, n_de_genes=n_de, de_types=de_types, lfc_min=0.8, lfc_max=1.7, seed=seed
    )
    prof = ad.varm["type_profile"]
    pa, pb = prof[:, de_types[0]], prof[:, de_types[1]]
    lfc, de = ad.var["true_lfc"].to_numpy(), ad.var["de"].to_numpy()
    assert de.sum() == n_de and np.count_nonzero(lfc) == n_de
    assert np.array_equal(lfc != 0, de)
    assert ((np.abs(lfc[de]) >= 0.8) & (np.abs(lfc[de]) <= 1.7)).all()
    assert (lfc < 0).sum() == n_de // 2 and (lfc > 0).sum() == n_de - n_de // 2
    np.testing.assert_allclose(pa[~de], pb[~de], rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.log2(pa / pb), lfc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(prof.sum(axis=0), 1.0, rtol=1e-12)
    assert ad.uns["synthetic"]["de_types"] == [f"type_{t}" for t in de_types]
    # other types differ broadly from each other and from the DE pair
    others = [t for t in range(5) if t not in de_types]
    for t in others:
        for s in [*others, de_types[0]]:
            if s != t:
                assert np.median(np.abs(np.log2(prof[:, t] / prof[:, s]))) > 0.3


def test_no_de_genes_gives_identical_profiles():
    prof = synthetic_counts(**{**SMALL, "n_de_genes": 0}).varm["type_profile"]
    np.testing.assert_array_equal(prof[:, 0], prof[:, 1])


def test_cell_level_truth_respects_the_de_contract():
    ad = _big()
    rho, prof = ad.obsm["true_normalized"].astype(float), ad.varm["type_profile"]
    codes, de = ad.obs["cell_type"].cat.codes.to_numpy(), ad.var["de"].to_numpy()
    for t in (0, 1):  # DE genes carry exactly the profile value in every cell
        np.testing.assert_allclose(
            rho[codes == t][:, de], np.tile(prof[de, t], ((codes == t).sum(), 1)), rtol=1e-6
        )
    ra, rb = rho[codes == 0][:, ~de], rho[codes == 1][:, ~de]  # non-DE: same distribution
    se = np.sqrt(ra.var(axis=0) / len(ra) + rb.var(axis=0) / len(rb))
    assert (np.abs(ra.mean(axis=0) - rb.mean(axis=0)) < Z * se).all()
    assert ra.std(axis=0).mean() > 0  # the within-type variation is there
    flat = synthetic_counts(**{**BIG, "n_cells": 100}, within_type_scale=0.0)
    codes = flat.obs["cell_type"].cat.codes.to_numpy()
    np.testing.assert_allclose(
        flat.obsm["true_normalized"], flat.varm["type_profile"].T[codes], rtol=1e-6
    )


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_group_means_of_normalized_counts_match_truth(likelihood):
    ad = _big(likelihood)
    mean, var, _ = _mean_and_var(ad)
    lib = ad.obs["library_size"].to_numpy()[:, None]
    y, ey, vy = ad.X / lib, mean / lib, var / lib**2
    z2 = []
    for t in range(5):
        for b in range(2):
            cells = (ad.obs["cell_type"].cat.codes == t).to_numpy() & (
                ad.obs["batch"].cat.codes == b
            ).to_numpy()
            n = cells.sum()
            assert n > 300
            z = (y[cells].mean(0) - ey[cells].mean(0)) / (np.sqrt(vy[cells].sum(0)) / n)
            assert (np.abs(z) < Z).all(), (t, b, np.abs(z).max())
            z2.append(z**2)
    # z-scores are standardised with the exact variance: their mean square is ~1
    assert 0.85 < np.mean(z2) < 1.15


def test_nb_variance_matches_dispersion():
    ad = _big("nb", 4.0)
    x = ad.X
    _, _, mu = _mean_and_var(ad)
    top = np.argsort(-mu.mean(axis=0))[:10]
    x, mu, th = x[:, top], mu[:, top], 4.0
    inv_theta = ((x - mu) ** 2 - mu).sum(0) / (mu**2).sum(0)  # unbiased for 1/theta
    k2 = mu + mu**2 / th
    k4 = mu + 7 * mu**2 / th + 12 * mu**3 / th**2 + 6 * mu**4 / th**3
    se = np.sqrt((k4 + 2 * k2**2).sum(0)) / (mu**2).sum(0)
    assert (np.abs(inv_theta - 1 / th) < Z * se).all()
    assert (1 / inv_theta > th / 2).all() and (1 / inv_theta < th * 2).all()
    pois = _big("poisson")
    _, _, mu = _mean_and_var(pois)
    x, mu = pois.X[:, top], mu[:, top]
    inv_theta = ((x - mu) ** 2 - mu).sum(0) / (mu**2).sum(0)
    se = np.sqrt((mu + 2 * mu**2).sum(0)) / (mu**2).sum(0)
    assert (np.abs(inv_theta) < Z * se).all() and (Z * se < 0.1).all()


def test_zinb_adds_zeros_to_the_nb_counts():
    nb, zinb = _big("nb"), _big("zinb")
    assert (zinb.X <= nb.X).all() and (zinb.X == 0).sum() > (nb.X == 0).sum()
    pos = nb.X > 0
    zeroed = ((zinb.X == 0) & pos).sum(0) / pos.sum(0)
    pi = zinb.var["dropout"].to_numpy()
    assert 0.05 < np.median(pi) < 0.2
    se = np.sqrt(pi * (1 - pi) / pos.sum(0))
    assert (np.abs(zeroed - pi) < Z * se).all()
    assert (nb.var["dropout"] == 0).all()


def test_library_sizes_match_arguments():
    ad = synthetic_counts(**BIG, library_log_mean=7.0, library_log_sd=0.6)
    log_l, n = np.log(ad.obs["library_size"].to_numpy()), BIG["n_cells"]
    assert abs(log_l.mean() - 7.0) < Z * 0.6 / np.sqrt(n)
    assert abs(log_l.std(ddof=1) - 0.6) < Z * 0.6 / np.sqrt(2 * (n - 1))
    _, var, _ = _mean_and_var(ad)  # library size is the expected total count
    total = ad.X.sum(axis=1) - ad.obs["library_size"].to_numpy()
    assert abs(total.sum()) < Z * np.sqrt(var.sum())
    default = synthetic_counts(**SMALL).uns["synthetic"]["library_log_mean"]
    assert default == pytest.approx(np.log(6 * SMALL["n_genes"]))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_cells": 0}, "n_cells"),
        ({"n_cells": 2.5}, "n_cells"),
        ({"n_cells": 3}, "n_cells"),
        ({"n_genes": 0}, "n_genes"),
        ({"n_cell_types": 1}, "n_cell_types"),
        ({"n_batches": 0}, "n_batches"),
        ({"n_de_genes": 1}, "n_de_genes"),
        ({"n_de_genes": 11}, "n_de_genes"),
        ({"n_de_genes": -2}, "n_de_genes"),
        ({"de_types": (1, 1)}, "de_types"),
        ({"de_types": (0, 5)}, "de_types"),
        ({"de_types": (0,)}, "de_types"),
        ({"lfc_min": 0.0}, "lfc_min"),
        ({"lfc_min": 3.0}, "lfc_max"),
        ({"lfc_max": float("inf")}, "lfc_max"),
        ({"likelihood": "gaussian"}, "likelihood"),
        ({"dispersion": -1.0}, "dispersion"),
        ({"dispersion": np.ones(3)}, "dispersion"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"library_log_sd": -1.0}, "library_log_sd"),
        ({"library_log_mean": float("nan")}, "library_log_mean"),
        ({"batch_effect": -0.1}, "batch_effect"),
        ({"n_latent": 0}, "n_latent"),
        ({"within_type_scale": -1.0}, "within_type_scale"),
        ({"counts_dtype": bool}, "counts_dtype"),
        ({"seed": -1}, "seed"),
    ],
)
def test_argument_errors_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        synthetic_counts(**{"n_cells": 20, "n_genes": 10, "n_de_genes": 2, **kwargs})
