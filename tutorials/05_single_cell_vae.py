# %% [markdown]
# # Tutorial 5 — a single-cell VAE (scVI) on the sbi_vi engine
#
# `sbi_vi.singlecell.SCVI` is scVI with the scvi-tools API: a scvi-tools user changes only the
# import. Its encoder is an engine family and its loss an engine divergence, so the model
# also gets what the engine offers: the IWAE objective, PSIS k-hat per cell, and
# `sample_posterior` summaries through the PPL layer. This script
#
# 1. simulates counts with a known truth (`synthetic_counts`: 5 cell types, 2 batches,
#    DE genes between two types with known log fold changes) and trains SCVI;
# 2. plots the latent space (t-SNE) by cell type and by batch, and scores it (kNN purity,
#    batch-mixing entropy, clustering scores);
# 3. compares the normalised expression with the true one, and the marginal likelihood with
#    the ELBO;
# 4. runs differential expression between the two DE types on 25 vs 25 cells and on all of
#    them, scores the ranking (AUPRC) and the 5 % FDR call (precision, recall) against the
#    truth, and draws a volcano plot;
# 5. runs the imputation benchmark (hide 10 % of the non-zero counts, retrain, measure);
# 6. computes the per-cell PSIS k-hat of the encoder;
# 7. trains the same model on real counts (700 PBMCs, 765 genes, shipped with the package).
#
#     python tutorials/05_single_cell_vae.py            # full run, a few minutes
#     python tutorials/05_single_cell_vae.py --quick    # < 1 minute (the test suite)
#
# `SBI_VI_TUTORIAL_QUICK=1` and `SBI_VI_TUTORIAL_OUTPUT_DIR=...` do the same as the flags.
# It writes `latent.png`, `volcano.png`, `imputation.png`, `khat.png`, `pbmc_latent.png`
# and `summary.json` to the output directory.

# %%
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from sklearn.metrics import average_precision_score

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt

from sbi_vi.singlecell import SCVI, load_pbmc, synthetic_counts
from sbi_vi.singlecell.imputation import corrupt_counts

parser = argparse.ArgumentParser(description="Tutorial 5: single-cell VAE.")
parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
parser.add_argument("--output-dir", type=Path, default=None)
parser.add_argument("--seed", type=int, default=0)
args, _ = parser.parse_known_args()

QUICK = args.quick or os.environ.get("SBI_VI_TUTORIAL_QUICK", "") not in ("", "0")
OUTPUT_DIR = args.output_dir or os.environ.get("SBI_VI_TUTORIAL_OUTPUT_DIR")
OUTPUT_DIR = Path(OUTPUT_DIR or tempfile.mkdtemp(prefix="sbi_vi_tutorial_05_"))
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
SHOW = not QUICK
torch.manual_seed(args.seed)

SETTINGS = {
    "n_cells": 1_500 if QUICK else 6_000,
    "n_genes": 300 if QUICK else 1_000,
    "n_de_genes": 30 if QUICK else 100,
    "library_size": 1_500.0 if QUICK else 3_000.0,  # median UMIs per cell
    "max_epochs": 60 if QUICK else 150,
    "pbmc_epochs": 40 if QUICK else 300,
    "plan_kwargs": {"n_epochs_kl_warmup": 20},
    "de_cells": 25,
    "khat_samples": 200 if QUICK else 1_000,
}
summary: dict = {"quick": QUICK, "settings": SETTINGS, "files": {}}
start = time.perf_counter()

# %% [markdown]
# ## 1. Data with a known truth, and training
#
# `synthetic_counts` draws negative-binomial counts from type profiles, within-type
# variation, batch effects and log-normal library sizes. The truth lives in the AnnData:
# `obsm["true_normalized"]` (normalised expression without the batch effect), `var["de"]`
# and `var["true_lfc"]` (DE between the two types `uns["synthetic"]["de_types"]`).

# %%
adata = synthetic_counts(
    SETTINGS["n_cells"],
    SETTINGS["n_genes"],
    n_de_genes=SETTINGS["n_de_genes"],
    library_log_mean=float(np.log(SETTINGS["library_size"])),
    seed=args.seed,
)
SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
model = SCVI(adata, gene_likelihood="nb")
model.train(
    max_epochs=SETTINGS["max_epochs"],
    plan_kwargs=SETTINGS["plan_kwargs"],
    check_val_every_n_epoch=1,  # as in scvi-tools: validation metrics only when asked
    show_progress_bar=SHOW,
    seed=args.seed,
)
history = model.history
summary["training"] = {
    "epochs": len(history["elbo_train"]),
    "elbo_train": float(history["elbo_train"].iloc[-1, 0]),
    "elbo_validation": float(history["elbo_validation"].iloc[-1, 0]),
}

# %% [markdown]
# ## 2. The latent space
#
# Types should separate and batches mix (the decoder, not z, carries the batch).

# %%
latent = model.get_latent_representation()
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
model.embedding_plot(color_by="labels", ax=axes[0], n_samples=800, title="cell type")
model.embedding_plot(color_by="batch", ax=axes[1], n_samples=800, title="batch")
fig.savefig(OUTPUT_DIR / "latent.png", dpi=90)
plt.close(fig)
summary["files"]["latent"] = "latent.png"
summary["latent"] = {
    "knn_purity": model.knn_purity(),
    "entropy_batch_mixing": model.entropy_batch_mixing(),
    "clustering": model.clustering_scores(),
}

# %% [markdown]
# ## 3. Normalised expression and the marginal likelihood
#
# `get_marginal_ll` is the engine's importance-sampling estimate with the encoder as
# proposal; it must lie above the ELBO.

# %%
normalized = model.get_normalized_expression(return_numpy=True)
truth = adata.obsm["true_normalized"]
log_corr = np.corrcoef(np.log(normalized.ravel() + 1e-6), np.log(truth.ravel() + 1e-6))[0, 1]
held_out = model.validation_indices
summary["expression"] = {
    "log_correlation_with_truth": float(log_corr),
    "elbo_validation": model.get_elbo(indices=held_out),
    "marginal_ll_validation": model.get_marginal_ll(indices=held_out, n_mc_samples=100),
}

# %% [markdown]
# ## 4. Differential expression against the truth
#
# `mode="change"` gives `proba_de = P(|LFC| ≥ δ)` (δ = 0.25) and the call
# `is_de_fdr_0.05`: genes whose posterior expected false discovery rate and whose q-value
# against an empirical null of `lfc_mean` both stay at 5 % (see the user guide).

# %%
type_a, type_b = adata.uns["synthetic"]["de_types"]
cell_type = adata.obs["cell_type"].to_numpy()
is_de = adata.var["de"].to_numpy()
rng = np.random.default_rng(args.seed)
de_results = {}
for name, n in (("25_vs_25", SETTINGS["de_cells"]), ("all_cells", None)):
    masks = []
    for t in (type_a, type_b):
        idx = np.flatnonzero(cell_type == t)
        if n is not None:
            idx = rng.choice(idx, n, replace=False)
        mask = np.zeros(adata.n_obs, bool)
        mask[idx] = True
        masks.append(mask)
    res = model.differential_expression(idx1=masks[0], idx2=masks[1], mode="change")
    res = res.loc[adata.var_names]
    called = res["is_de_fdr_0.05"].to_numpy()
    de_results[name] = {
        "auprc": float(average_precision_score(is_de, res["proba_de"])),
        "n_called": int(called.sum()),
        "precision": float((called & is_de).sum() / max(called.sum(), 1)),
        "recall": float((called & is_de).sum() / is_de.sum()),
    }
    if name == "all_cells":
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(res["lfc_mean"], res["proba_de"], s=6, c=np.where(is_de, "C3", "C0"))
        ax.set_xlabel("posterior mean log2 fold change")
        ax.set_ylabel("P(|LFC| ≥ δ)")
        ax.set_title("volcano: red = true DE genes")
        fig.savefig(OUTPUT_DIR / "volcano.png", dpi=90)
        plt.close(fig)
        summary["files"]["volcano"] = "volcano.png"
summary["de"] = de_results

# %% [markdown]
# ## 5. Imputation benchmark
#
# Hide 10 % of the non-zero counts, train a model on the corrupted copy, and compare its
# expected counts at the hidden entries with the originals.

# %%
corrupted, rows, cols, original = corrupt_counts(adata, rate=0.1, seed=args.seed)
imputer = SCVI(corrupted, gene_likelihood="nb")
imputer.train(
    max_epochs=SETTINGS["max_epochs"],
    plan_kwargs=SETTINGS["plan_kwargs"],
    show_progress_bar=SHOW,
    seed=args.seed,
)
imputation = imputer.imputation_benchmark(rows, cols, original, show_plot=True,
                                          save_path=OUTPUT_DIR / "imputation.png")  # fmt: skip
summary["files"]["imputation"] = "imputation.png"
baseline = float(np.median(np.abs(original)))  # imputing zeros
summary["imputation"] = {
    "median_absolute_error": imputation["median_absolute_error"],
    "zero_baseline": baseline,
}

# %% [markdown]
# ## 6. Which cells does the amortised posterior serve badly?
#
# PSIS k-hat of the encoder per cell: k̂ ≤ 0.7 means q(z | x) is a good importance
# proposal for that cell's exact posterior.

# %%
khat = model.get_psis_khat(indices=np.arange(300), n_mc_samples=SETTINGS["khat_samples"])
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.hist(khat, bins=30)
ax.axvline(0.7, color="k", ls="--")
ax.set_xlabel("PSIS k-hat of q(z | x)")
ax.set_ylabel("cells")
fig.savefig(OUTPUT_DIR / "khat.png", dpi=90)
plt.close(fig)
summary["files"]["khat"] = "khat.png"
summary["khat"] = {
    "median": float(np.median(khat)),
    "fraction_above_0.7": float((khat > 0.7).mean()),
}

# %% [markdown]
# ## 7. Real counts: 700 PBMCs
#
# The same model on the counts of scanpy's `pbmc68k_reduced` (recovered integers).

# %%
pbmc = load_pbmc()
SCVI.setup_anndata(pbmc, batch_key="batch")
pbmc_model = SCVI(pbmc, gene_likelihood="nb")
pbmc_model.train(
    max_epochs=SETTINGS["pbmc_epochs"],
    plan_kwargs=SETTINGS["plan_kwargs"],
    show_progress_bar=SHOW,
    seed=args.seed,
)
fig, ax = plt.subplots(figsize=(5.5, 4.5))
pbmc_model.embedding_plot(color_by="bulk_labels", ax=ax, title="PBMC cell types")
fig.savefig(OUTPUT_DIR / "pbmc_latent.png", dpi=90)
plt.close(fig)
summary["files"]["pbmc_latent"] = "pbmc_latent.png"
pbmc_held_out = pbmc_model.validation_indices
summary["pbmc"] = {
    "knn_purity": pbmc_model.knn_purity(labels_key="bulk_labels"),
    "elbo_validation": pbmc_model.get_elbo(indices=pbmc_held_out),
    "marginal_ll_validation": pbmc_model.get_marginal_ll(indices=pbmc_held_out, n_mc_samples=100),
}
posterior = pbmc_model.sample_posterior(num_samples=200, batch_size=256, seed=args.seed)
summary["pbmc"]["z_posterior_sd_median"] = float(np.median(posterior["stds"]["z"]))

summary["seconds"] = time.perf_counter() - start
(OUTPUT_DIR / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
print(json.dumps({k: summary[k] for k in ("latent", "expression", "de", "imputation")}, indent=2,
                 default=float))  # fmt: skip
