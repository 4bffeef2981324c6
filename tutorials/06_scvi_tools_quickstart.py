# %% [markdown]
# # Tutorial 6 — scvi-tools' quick start, with only the import changed
#
# scvi-tools' quick-start tutorial (set up an AnnData, train scVI, save and load it, get the
# latent space and normalised expression, embed and plot, differential expression), written
# as a scvi-tools 1.5 user writes it. The scvi-tools calls are unchanged; only two lines
# differ from the original:
#
# - `import scvi` / `scvi.model.SCVI` → `from sbi_vi.singlecell import SCVI, settings`;
# - the data: the 700 PBMCs shipped with sbi_vi (`load_pbmc()`) instead of downloading the
#   heart cell atlas (the machines that run the tests have no network).
#
# scanpy is not a dependency of sbi_vi, so its three preprocessing and embedding calls
# (`normalize_total`, `log1p`, `tsne`) are written out with numpy and scikit-learn.
#
#     python tutorials/06_scvi_tools_quickstart.py           # full run (400 epochs)
#     python tutorials/06_scvi_tools_quickstart.py --quick   # the test suite's run
#
# It writes `tsne.png`, `training.png`, `de.csv` and `summary.json` to the output directory.

# %%
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import scipy.sparse as sp
import torch
from sklearn.manifold import TSNE

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt

from sbi_vi.singlecell import SCVI, load_pbmc, settings  # was: import scvi

parser = argparse.ArgumentParser(description="Tutorial 6: scvi-tools' quick start.")
parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
parser.add_argument("--output-dir", type=Path, default=None)
args, _ = parser.parse_known_args()

QUICK = args.quick or os.environ.get("SBI_VI_TUTORIAL_QUICK", "") not in ("", "0")
OUTPUT_DIR = args.output_dir or os.environ.get("SBI_VI_TUTORIAL_OUTPUT_DIR")
OUTPUT_DIR = Path(OUTPUT_DIR or tempfile.mkdtemp(prefix="sbi_vi_tutorial_06_"))
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
MAX_EPOCHS = 40 if QUICK else 400

settings.seed = 0  # was: scvi.settings.seed = 0

# %% [markdown]
# ## Data: raw counts in a layer, normalised and log-transformed values in X
#
# As in the original: the counts are kept in `layers["counts"]`, `X` holds the
# log-normalised values for plotting, and `adata.raw` keeps them.

# %%
adata = load_pbmc()  # was: scvi.data.heart_cell_atlas_subsampled()
adata.layers["counts"] = adata.X.copy()  # preserve counts
counts = sp.csr_matrix(adata.X, dtype=np.float32)
library = np.asarray(counts.sum(1)).ravel()
adata.X = sp.diags(1e4 / library) @ counts  # sc.pp.normalize_total(adata, target_sum=1e4)
adata.X.data = np.log1p(adata.X.data)  # sc.pp.log1p(adata)
adata.raw = adata  # freeze the state in `.raw`
adata.obs["log_counts"] = np.log(library)

# %% [markdown]
# ## Set up, train, save and load

# %%
SCVI.setup_anndata(
    adata,
    layer="counts",
    batch_key="batch",
    categorical_covariate_keys=["phase"],
    continuous_covariate_keys=["log_counts"],
)
model = SCVI(adata)
model.view_anndata_setup(hide_state_registries=True)
model.train(max_epochs=MAX_EPOCHS, check_val_every_n_epoch=1, enable_progress_bar=not QUICK)

model_dir = OUTPUT_DIR / "scvi_model"
model.save(model_dir, overwrite=True)
model = SCVI.load(model_dir, adata=adata)

# %% [markdown]
# ## Latent space, normalised expression, an embedding

# %%
SCVI_LATENT_KEY = "X_scVI"
latent = model.get_latent_representation()
adata.obsm[SCVI_LATENT_KEY] = latent
print("latent:", latent.shape)

subset = adata[adata.obs.bulk_labels.isin(["CD14+ Monocyte", "CD19+ B"])].copy()
denoised = model.get_normalized_expression(subset, library_size=1e4)
print("denoised expression of two types:", denoised.shape)
adata.layers["scvi_normalized"] = model.get_normalized_expression(library_size=10e4)

embedding = TSNE(n_components=2, random_state=0, init="pca").fit_transform(latent)
adata.obsm["X_tsne"] = embedding  # sc.tl.tsne(adata, use_rep=SCVI_LATENT_KEY)
fig, ax = plt.subplots(figsize=(6, 5))
labels = adata.obs["bulk_labels"].astype("category")
for code, name in enumerate(labels.cat.categories):
    sel = labels.cat.codes.to_numpy() == code
    ax.scatter(*embedding[sel].T, s=6, label=name)
ax.legend(fontsize=6, markerscale=2)
ax.set_title("t-SNE of the scVI latent space")
fig.savefig(OUTPUT_DIR / "tsne.png", dpi=100)
plt.close(fig)

history = model.history
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(history["elbo_train"], label="train")
ax.plot(history["elbo_validation"], label="validation")
ax.set_xlabel("epoch")
ax.set_ylabel("negative ELBO per cell")
ax.legend()
fig.savefig(OUTPUT_DIR / "training.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## Differential expression

# %%
de_df = model.differential_expression(
    groupby="bulk_labels", group1="CD14+ Monocyte", group2="CD19+ B"
)
print(de_df.head())
de_df.to_csv(OUTPUT_DIR / "de.csv")

de_all = model.differential_expression(groupby="bulk_labels", mode="change")  # 1 vs rest
markers = {}
for group in de_all["group1"].unique():
    cell_type_df = de_all.loc[de_all.comparison == f"{group} vs Rest"]
    cell_type_df = cell_type_df[cell_type_df.lfc_mean > 0]
    cell_type_df = cell_type_df[cell_type_df["bayes_factor"] > 3]
    cell_type_df = cell_type_df[cell_type_df["non_zeros_proportion1"] > 0.1]
    markers[group] = cell_type_df.index.tolist()[:3]
print("markers:", markers)

# %% [markdown]
# ## What the test suite checks

# %%
reloaded = SCVI.load(model_dir, adata=adata)
summary = {
    "quick": QUICK,
    "n_cells": int(adata.n_obs),
    "latent_shape": list(latent.shape),
    "reload_identical": bool(np.array_equal(reloaded.get_latent_representation(), latent)),
    "denoised_shape": list(denoised.shape),
    "normalized_row_sums": float(adata.layers["scvi_normalized"].sum(1).mean()),
    "elbo_validation": [float(v) for v in history["elbo_validation"]["elbo_validation"]],
    "de_columns": list(de_df.columns),
    "de_top_genes": de_df.index[:20].tolist(),
    "de_comparisons": sorted(de_all["comparison"].unique().tolist()),
    "markers": markers,
    "marginal_ll": float(model.get_marginal_ll(n_mc_samples=20)),
    "elbo": float(model.get_elbo()),
    "torch_threads": torch.get_num_threads(),
    "files": {"tsne": "tsne.png", "training": "training.png", "de": "de.csv"},
}
(OUTPUT_DIR / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: v for k, v in summary.items() if k != "elbo_validation"}, indent=2))
