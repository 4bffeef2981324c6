"""Ground-truth single-cell counts: cell types, batches, DE genes and NB/ZINB/Poisson noise.

Generative model (all draws from ``np.random.default_rng(seed)``):

1. Type profiles ``p_t`` (probability vectors over genes, ``varm["type_profile"]``): a shared
   log-normal gene baseline plus a broad per-type log perturbation (sd 0.7 on every gene), so
   types separate in latent space. Type ``de_types[1]`` gets the perturbation of
   ``de_types[0]``: the two start from one profile ``q`` and then differ only in the DE genes.
2. DE genes: ``n_de_genes`` genes, half down and the rest up, with ``|lfc|`` uniform in
   ``[lfc_min, lfc_max]``. In probability space ``p_b[g] = c q[g]`` and
   ``p_a[g] = c q[g] 2**lfc[g]`` (``a, b = de_types``), with one constant ``c`` for up and
   one for down genes, solved so that the DE mass stays ``sum(q[DE])`` in *both* types. No
   renormalisation is needed, so every non-DE gene keeps exactly ``q[g]`` in both types.
3. Within-type state ``u_n ~ N(0, I_{n_latent})`` (``obsm["true_latent"]``) moves only the
   non-DE genes, at constant non-DE mass: ``rho_n[~DE] = (1 - M_t) softmax(log p_t + s W u_n)``
   over the non-DE genes, ``rho_n[DE] = p_t[DE]``. So DE genes have exactly the profile ratio
   in every cell, and non-DE genes are identically distributed in the two ``de_types``.
4. Batch: ``rho'_n = rho_n exp(beta[batch_n]) / sum`` with ``beta ~ N(0, batch_effect**2)``
   per batch and gene (``varm["batch_effect"]``); the truth ``obsm["true_normalized"]`` is
   ``rho_n`` *without* it.
5. Counts with mean ``l_n rho'_n`` (``l_n`` log-normal, ``obs["library_size"]``, the expected
   total count): NB (Gamma-Poisson) with inverse dispersion ``theta_g``; ZINB zeroes NB counts
   with per-gene probability ``var["dropout"]`` (the zero mask is drawn last, so ZINB counts
   are the NB counts of the same seed with extra zeros); or Poisson.
"""

from __future__ import annotations

import math
from typing import Literal

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike, DTypeLike

__all__ = ["synthetic_counts"]


def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value}.")
    return int(value)


def _float(name: str, value: object, minimum: float, *, strict: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.number)
    if ok and math.isfinite(value) and (value > minimum if strict else value >= minimum):
        return float(value)
    raise ValueError(
        f"`{name}` must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}."
    )


def synthetic_counts(
    n_cells: int = 2000,
    n_genes: int = 500,
    *,
    n_cell_types: int = 5,
    n_batches: int = 2,
    n_de_genes: int = 50,
    de_types: tuple[int, int] = (0, 1),
    lfc_min: float = 1.0,
    lfc_max: float = 2.0,
    likelihood: Literal["nb", "zinb", "poisson"] = "nb",
    dispersion: float | ArrayLike | None = None,
    dropout: float = 0.1,
    library_log_mean: float | None = None,
    library_log_sd: float = 0.4,
    batch_effect: float = 0.3,
    n_latent: int = 5,
    within_type_scale: float = 0.3,
    sparse: bool = True,
    counts_dtype: DTypeLike = np.int64,
    seed: int | None = 0,
) -> anndata.AnnData:
    """Simulate a single-cell count matrix with known types, batches and DE genes.

    Args:
        n_cells: Number of cells; types are assigned exactly balanced (±1), batches uniformly.
        n_genes: Number of genes.
        n_cell_types: Number of cell types (>= 2).
        n_batches: Number of batches (>= 1).
        n_de_genes: Genes DE between ``de_types`` (0, or 2..n_genes: up and down are needed).
        de_types: The two type indices compared; they differ ONLY in the DE genes.
        lfc_min: Smallest ``|log2 FC|`` of a DE gene (> 0).
        lfc_max: Largest ``|log2 FC|`` of a DE gene (>= lfc_min).
        likelihood: Count noise, ``"nb"``, ``"zinb"`` or ``"poisson"``.
        dispersion: NB inverse dispersion ``theta``: a scalar or one value per gene; ``None``
            draws ``theta_g = 5 exp(N(0, 0.5**2))``. Unused for Poisson.
        dropout: Typical ZINB zero-inflation probability in [0, 1); per gene
            ``sigmoid(logit(dropout) + N(0, 0.5**2))``. Unused for NB and Poisson.
        library_log_mean: Mean of ``log l_n``; ``None`` gives ``log(6 n_genes)`` (3000 UMIs
            median for 500 genes).
        library_log_sd: Sd of ``log l_n``.
        batch_effect: Sd of the per-batch, per-gene log multiplicative effect.
        n_latent: Dimension of the within-type continuous state ``u_n``.
        within_type_scale: Scale ``s`` of the within-type variation (0 turns it off).
        sparse: Return ``X`` as ``scipy.sparse.csr_matrix`` (else a dense array).
        counts_dtype: Dtype of ``X`` (whole numbers either way), e.g. ``np.float32``.
        seed: Seed of ``np.random.default_rng``; the global RNG is never touched.

    Returns:
        AnnData with counts ``X``; ``obs["cell_type"]``, ``obs["batch"]`` (categoricals),
        ``obs["library_size"]``; ``var["de"]``, ``var["true_lfc"]`` (log2 FC of
        ``de_types[0]`` vs ``de_types[1]``, exactly 0.0 off the DE genes),
        ``var["dispersion"]``, ``var["dropout"]`` (zeros unless ZINB);
        ``obsm["true_normalized"]`` (float32, rows sum to 1, without batch effect),
        ``obsm["true_latent"]``; ``varm["type_profile"]`` (columns sum to 1),
        ``varm["batch_effect"]``; ``uns["synthetic"]`` (JSON-serialisable settings).

    Raises:
        ValueError: An argument is out of range; the message names it.

    Example:
        >>> adata = synthetic_counts(50, 20, n_de_genes=4, seed=1)
        >>> adata.shape, int(adata.var["de"].sum())
        ((50, 20), 4)
        >>> " vs ".join(adata.uns["synthetic"].get("de_types"))
        'type_0 vs type_1'
    """
    n_cells = _int("n_cells", n_cells, 1)
    n_genes = _int("n_genes", n_genes, 1)
    n_types = _int("n_cell_types", n_cell_types, 2)
    n_batches = _int("n_batches", n_batches, 1)
    n_latent = _int("n_latent", n_latent, 1)
    if n_cells < n_types:
        raise ValueError(f"`n_cells` must be >= n_cell_types={n_types}, got {n_cells}.")
    n_de = _int("n_de_genes", n_de_genes, 0)
    if n_de == 1 or n_de > n_genes:
        raise ValueError(f"`n_de_genes` must be 0 or in [2, n_genes={n_genes}], got {n_de}.")
    pair = tuple(de_types) if isinstance(de_types, tuple | list) else ()
    ok = len(pair) == 2 and all(
        isinstance(t, int | np.integer) and not isinstance(t, bool) and 0 <= t < n_types
        for t in pair
    )
    if not ok or pair[0] == pair[1]:
        raise ValueError(
            f"`de_types` must be two distinct type indices in [0, n_cell_types={n_types}), "
            f"got {de_types!r}."
        )
    ta, tb = int(pair[0]), int(pair[1])
    lfc_min = _float("lfc_min", lfc_min, 0.0, strict=True)
    lfc_max = _float("lfc_max", lfc_max, 0.0, strict=True)
    if lfc_max < lfc_min:
        raise ValueError(f"`lfc_max` must be >= lfc_min={lfc_min}, got {lfc_max}.")
    if likelihood not in ("nb", "zinb", "poisson"):
        raise ValueError(f"`likelihood` must be 'nb', 'zinb' or 'poisson', got {likelihood!r}.")
    dropout = _float("dropout", dropout, 0.0)
    if dropout >= 1.0:
        raise ValueError(f"`dropout` must lie in [0, 1), got {dropout}.")
    library_log_sd = _float("library_log_sd", library_log_sd, 0.0)
    batch_effect = _float("batch_effect", batch_effect, 0.0)
    within_type_scale = _float("within_type_scale", within_type_scale, 0.0)
    if library_log_mean is None:
        library_log_mean = math.log(6.0 * n_genes)
    library_log_mean = _float("library_log_mean", library_log_mean, -math.inf)
    counts_dtype = np.dtype(counts_dtype)
    if counts_dtype.kind not in "iuf":
        raise ValueError(f"`counts_dtype` must be an integer or float dtype, got {counts_dtype}.")
    if seed is not None:
        seed = _int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    if dispersion is None:
        theta = 5.0 * np.exp(0.5 * rng.standard_normal(n_genes))
    else:
        theta = np.asarray(dispersion, dtype=float)
        if theta.shape not in ((), (n_genes,)) or not np.all(np.isfinite(theta) & (theta > 0)):
            raise ValueError(
                f"`dispersion` must be a positive finite scalar or shape ({n_genes},) array, "
                f"got shape {theta.shape} with min {theta.min() if theta.size else None}."
            )
        theta = np.broadcast_to(theta, (n_genes,)).copy()

    # 1. type profiles: shared baseline + broad per-type perturbation; tb copies ta.
    base = rng.normal(0.0, 1.0, n_genes)
    delta = rng.normal(0.0, 0.7, (n_types, n_genes))
    delta[tb] = delta[ta]
    logits = base + delta
    prof = np.exp(logits - logits.max(axis=1, keepdims=True))
    prof /= prof.sum(axis=1, keepdims=True)
    # 2. DE genes with mass compensation so that non-DE genes stay exactly equal.
    de_idx = np.sort(rng.choice(n_genes, n_de, replace=False))
    lfc = np.zeros(n_genes)
    mags = rng.uniform(lfc_min, lfc_max, n_de)
    signs = np.where(rng.permutation(n_de) < n_de // 2, -1.0, 1.0)
    lfc[de_idx] = signs * mags
    is_de = np.zeros(n_genes, dtype=bool)
    is_de[de_idx] = True
    if n_de:
        q, up, down = prof[tb].copy(), is_de & (lfc > 0), is_de & (lfc < 0)
        mass, fold = q[is_de].sum(), np.exp2(lfc)
        qu, qd = q[up].sum(), q[down].sum()
        au, ad = (q * fold)[up].sum(), (q * fold)[down].sum()
        det = qu * ad - qd * au
        c = np.where(up, mass * (ad - qd) / det, mass * (qu - au) / det)
        prof[tb, is_de] = (c * q)[is_de]
        prof[ta, is_de] = (c * q * fold)[is_de]

    # 3. cells: balanced types, uniform batches, within-type state on non-DE genes only.
    types = rng.permutation(np.arange(n_cells) % n_types)
    batches = rng.integers(0, n_batches, n_cells)
    u = rng.standard_normal((n_cells, n_latent))
    w = rng.standard_normal((n_latent, n_genes)) / math.sqrt(n_latent)
    rho = prof[types]
    if n_de < n_genes:
        z = np.log(rho[:, ~is_de]) + within_type_scale * (u @ w[:, ~is_de])
        z = np.exp(z - z.max(axis=1, keepdims=True))
        non_de_mass = 1.0 - rho[:, is_de].sum(axis=1, keepdims=True)
        rho[:, ~is_de] = non_de_mass * z / z.sum(axis=1, keepdims=True)
    # 4. batch effect (nuisance), 5. library sizes and counts.
    beta = rng.normal(0.0, batch_effect, (n_batches, n_genes))
    rho_b = rho * np.exp(beta[batches])
    rho_b /= rho_b.sum(axis=1, keepdims=True)
    lib = np.exp(rng.normal(library_log_mean, library_log_sd, n_cells))
    mu = lib[:, None] * rho_b
    if likelihood == "poisson":
        x = rng.poisson(mu)
    else:
        x = rng.poisson(rng.gamma(theta, mu / theta))
    pi = np.zeros(n_genes)
    if likelihood == "zinb" and dropout > 0:
        pi = 1.0 / (
            1.0 + np.exp(-(math.log(dropout / (1 - dropout)) + rng.normal(0, 0.5, n_genes)))
        )
        x[rng.random((n_cells, n_genes)) < pi] = 0
    x = x.astype(counts_dtype)

    type_names = [f"type_{t}" for t in range(n_types)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(types, type_names),
            "batch": pd.Categorical.from_codes(batches, [f"batch_{b}" for b in range(n_batches)]),
            "library_size": lib,
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"de": is_de, "true_lfc": lfc, "dispersion": theta, "dropout": pi},
        index=[f"gene_{g}" for g in range(n_genes)],
    )
    settings = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_cell_types": n_types,
        "n_batches": n_batches,
        "n_de_genes": n_de,
        "de_types": [type_names[ta], type_names[tb]],
        "lfc_min": lfc_min,
        "lfc_max": lfc_max,
        "likelihood": likelihood,
        "dispersion": "per_gene" if dispersion is None or np.ndim(dispersion) else float(theta[0]),
        "dropout": dropout,
        "library_log_mean": library_log_mean,
        "library_log_sd": library_log_sd,
        "batch_effect": batch_effect,
        "n_latent": n_latent,
        "within_type_scale": within_type_scale,
        "sparse": bool(sparse),
        "counts_dtype": counts_dtype.name,
        "seed": seed,
    }
    return anndata.AnnData(
        X=sp.csr_matrix(x) if sparse else x,
        obs=obs,
        var=var,
        obsm={"true_normalized": rho.astype(np.float32), "true_latent": u},
        varm={"type_profile": prof.T.copy(), "batch_effect": beta.T.copy()},
        uns={"synthetic": settings},
    )
