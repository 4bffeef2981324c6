# %% [markdown]
# # Tutorial 3 — a probabilistic program fitted by SVI
#
# We write a hierarchical model with `sbi_vi.ppl` (NumPyro-style primitives in torch),
# fit it by stochastic variational inference on minibatches of groups, summarise the
# posterior site by site with `sample_posterior`, and check the fit with the PSIS k-hat of
# `evaluate()`. Then we compare the four divergences of the engine, a full-rank guide and a
# MAP fit on a smaller, non-subsampled version of the model, and draw from the posterior
# predictive.
#
# Run it as a script:
#
#     python tutorials/03_ppl_svi.py                  # full run, about a minute
#     python tutorials/03_ppl_svi.py --quick          # a few seconds
#     python tutorials/03_ppl_svi.py --output-dir results/
#
# `SBI_VI_TUTORIAL_QUICK=1` and `SBI_VI_TUTORIAL_OUTPUT_DIR=...` do the same as the flags.
# The script writes `group_effects.png` and `summary.json` to the output directory.

# %%
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.distributions import HalfNormal, Independent, Normal

from sbi_vi.diagnostics import khat_verdict
from sbi_vi.ppl import plate, sample
from sbi_vi.ppl.infer import (
    SVI,
    AutoDelta,
    AutoMultivariateNormal,
    AutoNormal,
    Predictive,
)

parser = argparse.ArgumentParser(description="Tutorial 3: SVI for a probabilistic program.")
parser.add_argument("--quick", action="store_true", help="small data, few steps")
parser.add_argument("--output-dir", type=Path, default=None, help="where to write results")
parser.add_argument("--seed", type=int, default=0)
args, _ = parser.parse_known_args()  # parse_known_args: also runs inside Jupyter

QUICK = args.quick or os.environ.get("SBI_VI_TUTORIAL_QUICK", "") not in ("", "0")
OUTPUT_DIR = args.output_dir or os.environ.get("SBI_VI_TUTORIAL_OUTPUT_DIR")
OUTPUT_DIR = Path(OUTPUT_DIR or tempfile.mkdtemp(prefix="sbi_vi_tutorial_03_"))
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)

SETTINGS = {
    "groups": 300 if QUICK else 3_000,
    "per_group": 5,
    "minibatch": 50 if QUICK else 100,
    "svi_steps": 1_000 if QUICK else 6_000,
    "small_groups": 8,
    "small_steps": 300 if QUICK else 2_000,
    "small_lr": 0.1 if QUICK else 0.03,
    "num_samples": 1_000,
}
print(f"{'quick' if QUICK else 'full'} run, writing to {OUTPUT_DIR}")

# %% [markdown]
# ## Data and model
#
# Groups g = 1..G each have an effect θ_g ~ N(μ, τ) and five noisy measurements
# y_gj ~ N(θ_g, 0.5). The model is an ordinary Python function. Inside
# `with plate("groups", G, subsample_size=n) as idx:` every site is one value per group,
# only `n` random groups are visited per call (`idx` holds their indices) and their log
# densities are scaled by G/n, so one call gives an unbiased estimate of the full-data log
# joint. Sites inside the plate (θ) are *local* latents; μ and τ are *global*.
#
# Inference runs many particles in one pass (vectorised particles, as in NumPyro): a
# global site then has a leading particle dim, so model code uses broadcasting
# (`theta.unsqueeze(-1)` rather than reshaping to a fixed size).

# %%
SIGMA = 0.5
generator = torch.Generator().manual_seed(args.seed)
G, M = SETTINGS["groups"], SETTINGS["per_group"]
true_mu, true_tau = 1.0, 0.8
true_theta = true_mu + true_tau * torch.randn(G, generator=generator)
y = true_theta[:, None] + SIGMA * torch.randn(G, M, generator=generator)


def model(y: torch.Tensor, subsample_size: int | None = None) -> None:
    """Random group effects; ``y`` is ``[G, M]``."""
    mu = sample("mu", Normal(0.0, 5.0))
    tau = sample("tau", HalfNormal(2.0))
    with plate("groups", y.shape[0], subsample_size=subsample_size) as idx:
        theta = sample("theta", Normal(mu, tau))
        noise = torch.full((y.shape[-1],), SIGMA)  # one scale per measurement: event [M]
        sample("y", Independent(Normal(theta.unsqueeze(-1), noise), 1), obs=y[idx])


# %% [markdown]
# ## SVI with an autoguide, on minibatches
#
# `AutoNormal` builds a mean-field Gaussian guide in unconstrained space from the model:
# τ > 0 is reached through `exp`, and the local θ_g get one location and one scale per
# group, indexed by each minibatch. `SVI` trains it with the engine's reverse KL (the
# ELBO) through the engine's fit loop; `run` returns an `SVIResult`.

# %%
guide = AutoNormal(model)
svi = SVI(model, guide, lr=0.02)
start = time.perf_counter()
result = svi.run(
    SETTINGS["svi_steps"], y, SETTINGS["minibatch"], seed=args.seed, show_progress_bar=not QUICK
)
svi_seconds = time.perf_counter() - start
ms_per_step = 1e3 * svi_seconds / SETTINGS["svi_steps"]
print(f"{SETTINGS['svi_steps']} steps in {svi_seconds:.1f} s ({ms_per_step:.2f} ms per step)")
print(f"final loss (negative ELBO, smoothed): {result.losses[-200:].mean():.1f}")

# %% [markdown]
# ## Site-by-site summaries
#
# `sample_posterior` (the scvi-tools contract) draws the guide `num_samples` times in one
# vectorised pass and returns means, standard deviations and 5 % / 95 % quantiles of every
# site as numpy arrays of the site's shape. With `batch_size` it walks the observation
# plate in chunks: the globals are drawn once, the locals per chunk, and the chunks are
# concatenated — θ comes back with all G groups.

# %%
summary = result.sample_posterior(
    num_samples=SETTINGS["num_samples"], batch_size=SETTINGS["minibatch"], seed=args.seed
)
theta_mean = summary["means"]["theta"]
inside = (summary["q05"]["theta"] <= true_theta.numpy()) & (
    true_theta.numpy() <= summary["q95"]["theta"]
)
rmse = float(np.sqrt(np.mean((theta_mean - true_theta.numpy()) ** 2)))
print(
    f"mu = {summary['means']['mu']:.3f} ± {summary['stds']['mu']:.3f} (true {true_mu}), "
    f"tau = {summary['means']['tau']:.3f} ± {summary['stds']['tau']:.3f} (true {true_tau})"
)
print(
    f"theta: shape {theta_mean.shape}, RMSE to the truth {rmse:.3f}, "
    f"90% intervals cover {inside.mean():.0%} of the true effects"
)

# %% [markdown]
# ## Can the guide be trusted?
#
# `evaluate()` computes the full-data importance weights log p(x, θ) − log q(θ) for draws
# of the guide (every group, no subsampling) and their Pareto k-hat: below 0.7 the guide
# is a usable importance-sampling proposal for the posterior. A mean-field guide over
# hundreds of local latents is rarely that good: its small errors per dimension add up
# over the dimensions. `log_evidence()` is the importance-sampling estimate of log p(x)
# with its standard error — meaningful only when k-hat is small.

# %%
psis_result = result.evaluate(num_samples=1_000, seed=args.seed)
print(f"AutoNormal on {G} groups: {khat_verdict(psis_result.khat, psis_result.n_particles)}")

# %% [markdown]
# ## The four divergences
#
# The engine's divergences all apply to probabilistic programs: `"rKL"` (the ELBO),
# `"IW"` (importance-weighted bound of `K` particles), `"alpha"` (Rényi bound), `"fKL"`
# (forward KL, mass-covering). The last three need the full-data log density per
# particle, so they refuse a subsampled model with a clear error:

# %%
try:
    SVI(model, AutoNormal(model), divergence="fKL").run(1, y, 10, show_progress_bar=False)
except ValueError as error:
    print(f"fKL with subsampling: {str(error)[:100]}...")

# %% [markdown]
# On a small model without subsampling (8 groups — as few data as the classic "eight
# schools") every divergence runs. We fit each with `AutoNormal`, then compare posterior
# means, the k-hat of each guide and the evidence estimate.

# %%
y_small = y[: SETTINGS["small_groups"]]
fits = {}
for name, options in {
    "rKL": {"n_particles": 8},
    "IW": {"n_particles": 2, "K": 8, "dreg": True},
    "alpha": {"n_particles": 16, "alpha": 0.5},
    "fKL": {"n_particles": 64},
}.items():
    small_svi = SVI(model, AutoNormal(model), lr=SETTINGS["small_lr"], divergence=name, **options)
    start = time.perf_counter()
    fit = small_svi.run(SETTINGS["small_steps"], y_small, seed=args.seed, show_progress_bar=False)
    seconds = time.perf_counter() - start
    means = fit.sample_posterior(num_samples=1_000, seed=args.seed)["means"]
    evidence = fit.log_evidence(num_samples=1_000, seed=args.seed)
    fits[name] = {
        "mu": float(means["mu"]),
        "tau": float(means["tau"]),
        "khat": evidence.khat,
        "log_evidence": evidence.value,
        "log_evidence_stderr": evidence.stderr,
        "seconds": seconds,
    }
    print(
        f"{name:>5}: mu {means['mu']:.3f}, tau {means['tau']:.3f}, k-hat {evidence.khat:.2f}, "
        f"log p(y) = {evidence.value:.2f} ± {evidence.stderr:.2f}  ({seconds:.1f} s)"
    )

# %% [markdown]
# ## Other guides
#
# `AutoMultivariateNormal` (full-rank Gaussian) and `AutoFlow` (a zuko normalizing flow)
# capture correlations between the latents; they refuse subsampled local latents, which
# would need one joint distribution over every group. `AutoDelta` is a point mass: SVI
# then finds the MAP estimate.

# %%
mvn = SVI(model, AutoMultivariateNormal(model), lr=SETTINGS["small_lr"], n_particles=8)
mvn_result = mvn.run(SETTINGS["small_steps"], y_small, seed=args.seed, show_progress_bar=False)
mvn_khat = mvn_result.evaluate(num_samples=1_000, seed=args.seed).khat
print(f"AutoMultivariateNormal: k-hat {mvn_khat:.2f}")
map_result = SVI(model, AutoDelta(model), lr=SETTINGS["small_lr"]).run(
    SETTINGS["small_steps"], y_small, seed=args.seed, show_progress_bar=False
)
print(f"AutoDelta (MAP): mu {map_result.params['mu_auto_loc']:.3f}")

# %% [markdown]
# ## Posterior predictive
#
# `Predictive` runs the model vectorised over draws of the guide, with the observed sites
# drawn anew: here the mean of each group's replicated measurements, against the data.

# %%
replicated = Predictive(model, guide=guide, num_samples=500)(y, seed=args.seed)["y"]
group_means = replicated.mean(-1)  # [500, G]
ppc_corr = float(np.corrcoef(group_means.mean(0).numpy(), y.mean(-1).numpy())[0, 1])
print(f"posterior predictive: {tuple(replicated.shape)}, correlation with data {ppc_corr:.3f}")

# %% [markdown]
# ## Figure: group effects

# %%
order = np.argsort(true_theta.numpy())[:: max(1, G // 100)]
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.vlines(
    np.arange(order.size),
    summary["q05"]["theta"][order],
    summary["q95"]["theta"][order],
    color="C0",
    alpha=0.6,
    label="90% posterior interval",
)
ax.plot(np.arange(order.size), true_theta.numpy()[order], "k.", ms=3, label="true effect")
ax.set_xlabel("group (sorted by true effect)")
ax.set_ylabel(r"$\theta_g$")
ax.legend(loc="upper left")
figure_path = OUTPUT_DIR / "group_effects.png"
fig.savefig(figure_path, dpi=100, bbox_inches="tight")
print(f"figure written to {figure_path}")

# %% [markdown]
# ## Summary
#
# The numbers above, in a JSON file (the test of this tutorial reads it).

# %%
report = {
    "quick": QUICK,
    "settings": SETTINGS,
    "svi": {
        "ms_per_step": ms_per_step,
        "mu": float(summary["means"]["mu"]),
        "tau": float(summary["means"]["tau"]),
        "theta_rmse": rmse,
        "theta_coverage_90": float(inside.mean()),
        "theta_shape": list(theta_mean.shape),
        "khat": psis_result.khat,
    },
    "divergences": fits,
    "mvn_khat": mvn_khat,
    "map_mu": float(map_result.params["mu_auto_loc"]),
    "ppc_correlation": ppc_corr,
    "files": {"figure": figure_path.name},
}
(OUTPUT_DIR / "summary.json").write_text(json.dumps(report, indent=2))
print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=2)[:600])
