# %% [markdown]
# # Tutorial 4 — amortised VI: one q(θ | x) for every observation (two moons)
#
# Tutorials 1 and 2 fitted q(θ) for *one* observation x_o: a new x means a new fit. Here
# we fit one conditional q(θ | x) on the simulated pairs, once, and then sample the
# posterior of any x in a single network pass. Amortisation makes per-observation checks
# cheap, so we
#
# 1. simulate pairs (θ, x) and learn the likelihood with NLE;
# 2. train one amortised `VIPosterior` on all simulated x (`train_amortized`);
# 3. diagnose it on the task's 10 reference observations: PSIS k-hat per observation
#    (`evaluate(x=...)`), and C2ST against each observation's reference samples;
# 4. refine the observations that PSIS flags (or the worst one, if none is flagged) by
#    single-observation VI that starts from the amortised q (`refine`);
# 5. sample the posteriors of many observations at once (`sample_batched`);
# 6. check calibration with simulation-based calibration (SBC) and expected coverage on
#    fresh simulations — one network pass per simulation instead of one fit.
#
# Run it as a script:
#
#     python tutorials/04_amortized_vi.py                # full run, about 10 minutes
#     python tutorials/04_amortized_vi.py --quick        # < 1 minute
#     python tutorials/04_amortized_vi.py --output-dir results/
#     python tutorials/04_amortized_vi.py --vi-method alpha  # another amortised objective
#
# `SBI_VI_TUTORIAL_QUICK=1` and `SBI_VI_TUTORIAL_OUTPUT_DIR=...` do the same as the
# flags. The script writes `training.png`, `per_observation.png`, `refined.png`,
# `ranks.png`, `coverage.png`, the saved posterior `amortized_posterior.pt` and
# `summary.json` to the output directory (default: a new temporary directory).

# %%
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from sbi_vi import NLE, VIPosterior, simulate
from sbi_vi.diagnostics import c2st, run_coverage, run_sbc
from sbi_vi.plotting import pairplot, plot_coverage, plot_khat, plot_loss, plot_rank_histogram
from sbi_vi.tasks import get_task

parser = argparse.ArgumentParser(description="Tutorial 4: amortised VI.")
parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
parser.add_argument("--output-dir", type=Path, default=None, help="where to write results")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument(
    "--vi-method", default="rKL", choices=["rKL", "IW", "alpha"], help="amortised objective"
)
args, _ = parser.parse_known_args()  # parse_known_args: also runs inside Jupyter

QUICK = args.quick or os.environ.get("SBI_VI_TUTORIAL_QUICK", "") not in ("", "0")
OUTPUT_DIR = args.output_dir or os.environ.get("SBI_VI_TUTORIAL_OUTPUT_DIR")
OUTPUT_DIR = Path(OUTPUT_DIR or tempfile.mkdtemp(prefix="sbi_vi_tutorial_04_"))
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
SHOW = not QUICK  # progress bars in the full run only
torch.manual_seed(args.seed)

# Budgets of the quick run (CI) and of the full run. The full run's settings are those of
# the numbers quoted in docs/tutorials/04_amortized_vi.md.
SETTINGS = {
    "num_simulations": 1_000 if QUICK else 5_000,
    "train": {  # NLE.train(): early stopping on a validation split
        "training_batch_size": 100,
        "max_num_epochs": 20 if QUICK else 300,
    },
    # the amortised objective: rKL is the negative ELBO (sbi's objective); see the docs page
    # for what it does on two moons, and for --vi-method alpha
    "vi_method": args.vi_method,
    "train_amortized": {  # VIPosterior.train_amortized()
        "flow_type": "nsf",
        "n_particles": 32 if QUICK else 16,  # draws per observation and iteration
        "batch_size": 32 if QUICK else 64,  # observations per iteration
        "learning_rate": 3e-3 if QUICK else 2e-3,
        "max_num_iters": 150 if QUICK else 2_000,
        "stop_after_iters": 20 if QUICK else 150,
        "validation_fraction": 0.1,
        "validation_batch_size": 32 if QUICK else 64,
    },
    "num_eval": 1_000 if QUICK else 10_000,  # draws per observation for PSIS
    "num_samples": 500 if QUICK else 2_000,  # draws per observation for C2ST and plots
    # sbibm's C2ST (an MLP, 5 folds) in the full run; a faster random forest in quick mode
    "c2st": {"classifier": "rf", "n_folds": 3} if QUICK else {"classifier": "mlp", "n_folds": 5},
    "max_refined": 2 if QUICK else 10,  # refine at most this many flagged observations
    "refine": {  # VIPosterior.refine() -> train()
        "max_num_iters": 50 if QUICK else 500,
        "n_particles": 64 if QUICK else 128,
        "learning_rate": 1e-3,
        "quality_control": False,  # we evaluate() ourselves
    },
    "batched": {"num_observations": 1_000, "num_samples": 100 if QUICK else 1_000},
    "calibration": {
        "num_simulations": 100 if QUICK else 1_000,
        "num_posterior_samples": 100 if QUICK else 1_000,
    },
}
print(f"{'quick' if QUICK else 'full'} run, writing to {OUTPUT_DIR}")
TIMES: dict[str, float] = {}

# %% [markdown]
# ## Simulate and learn the likelihood
#
# As in tutorial 2: θ from the uniform prior on [-1, 1]², x from the two-moons simulator,
# and a neural spline flow q(x | θ) trained on the pairs with early stopping. The
# estimator is amortised already — it was trained on prior simulations, so its potential
# log q(x | θ) + log p(θ) is the (learned) unnormalised posterior of *any* x.

# %%
TASK = get_task("two_moons")
prior = TASK.prior
N = SETTINGS["num_simulations"]
start = time.perf_counter()
theta, x = simulate(TASK.simulator, prior, N, seed=args.seed, show_progress_bar=SHOW)
nle = NLE(prior, density_estimator="nsf", show_progress_bars=SHOW)
nle.append_simulations(theta, x).train(**SETTINGS["train"], seed=args.seed)
TIMES["nle"] = time.perf_counter() - start
print(
    f"NLE on {N} simulations: {nle.summary['epochs_trained'][-1]} epochs, best validation "
    f"loss {nle.summary['best_validation_loss'][-1]:.3f} ({TIMES['nle']:.0f} s)"
)

# %% [markdown]
# ## One q(θ | x) for all x
#
# `build_posterior` wraps the learned potential into a `VIPosterior`; `train_amortized`
# fits a conditional spline flow q(θ | x) on the same simulated x. Every iteration takes
# `batch_size` observations of the training split and `n_particles` draws of q for each,
# and minimises the divergence of `vi_method` averaged over them — by default the negative
# ELBO (`vi_method="rKL"`, sbi's amortised objective). After every iteration the loss is
# scored on a held-out split — with the *same* base draws each time (common random
# numbers), so the validation curve moves only with the weights — and training stops after
# `stop_after_iters` iterations without a new best; the best weights are restored.
#
# q lives in unconstrained space and is mapped to the prior's support, so every draw lies
# in [-1, 1]².

# %%
amortized = nle.build_posterior(vi_method=SETTINGS["vi_method"])
start = time.perf_counter()
amortized.train_amortized(
    theta, x, **SETTINGS["train_amortized"], show_progress_bar=SHOW, seed=args.seed
)
TIMES["train_amortized"] = time.perf_counter() - start
fit = amortized.history[-1]
validation = amortized.validation_losses
best_iter = min(range(len(validation)), key=validation.__getitem__)
print(
    f"amortised VI: {fit.num_iters} iterations ({TIMES['train_amortized']:.0f} s), best "
    f"validation loss {validation[best_iter]:.3f} at iteration {best_iter + 1}"
)

fig, ax = plot_loss(
    {"training (a new batch each iteration)": fit.losses, "validation (fixed draws)": validation},
    smoothing=20 if not QUICK else None,
    ylabel=f"{SETTINGS['vi_method']} loss per observation",
)
ax.axvline(best_iter, color="grey", ls=":", lw=1)
training_path = OUTPUT_DIR / "training.png"
fig.savefig(training_path, dpi=100, bbox_inches="tight")

# %% [markdown]
# ## Per-observation diagnostics on the 10 reference observations
#
# `evaluate(x=batch)` runs PSIS for every row of the batch: k-hat of q(θ | x_b) against
# the potential of x_b (≤ 0.5 good, ≤ 0.7 usable, > 0.7 unreliable) and the effective
# sample size. It needs no reference posterior, so it works on real data too. Here the
# task also has reference samples for each observation, so we add the C2ST (0.5: q is
# indistinguishable from the reference; 1.0: entirely separable). One call of `sample`
# with the batch of x gives draws of shape `[S, 10, 2]`.
#
# Read the two together: PSIS compares q with the potential *where q puts its draws*, so
# it cannot see a crescent that q misses altogether — the reverse KL's typical failure on
# this posterior. C2ST (and SBC, below) can.

# %%
NUM_OBS = 10
x_ref = torch.cat([TASK.get_observation(i) for i in range(1, NUM_OBS + 1)])  # [10, 2]
references = [TASK.get_reference_posterior_samples(i) for i in range(1, NUM_OBS + 1)]


def c2st_of(samples: torch.Tensor, i: int) -> float:
    """C2ST of draws [S, 2] against the reference samples of observation i (0-based)."""
    return c2st(
        samples,
        references[i],
        seed=args.seed,
        max_samples=SETTINGS["num_samples"],
        **SETTINGS["c2st"],
    )


start = time.perf_counter()
quality = amortized.evaluate(x=x_ref, N=SETTINGS["num_eval"])
samples = amortized.sample((SETTINGS["num_samples"],), x=x_ref)  # [S, 10, 2]
c2sts = [c2st_of(samples[:, i], i) for i in range(NUM_OBS)]
TIMES["diagnostics"] = time.perf_counter() - start
print(quality)
for i in range(NUM_OBS):
    flag = "" if quality.reliable[i] else "  <- unreliable"
    print(
        f"  observation {i + 1:2d}: k-hat {quality.khat[i]:5.2f}, "
        f"ESS {quality.ess[i]:6.0f}, C2ST {c2sts[i]:.3f}{flag}"
    )

# %% [markdown]
# ## Refine what the amortised q serves badly
#
# `refine(x_o)` copies the amortised q, fixes its context at x_o and continues training it
# by single-observation VI (`train`) — a warm start, so it needs far fewer iterations than
# a fit from scratch. The amortised q is left as it is. (`evaluate(x=..., refine=True)`
# does the same for every flagged observation in one call.) We refine the flagged
# observations, worst k-hat first (at most `max_refined` of them); if PSIS flags nothing,
# the observation with the largest k-hat, to show the step.

# %%
by_khat = sorted(range(NUM_OBS), key=lambda i: -float(quality.khat[i]))  # worst first
flagged = [i for i in by_khat if not quality.reliable[i]][: SETTINGS["max_refined"]]
to_refine = flagged or by_khat[:1]
refined_results: dict[int, dict] = {}
refined_samples: dict[int, torch.Tensor] = {}
start = time.perf_counter()
for i in to_refine:
    single = amortized.refine(x_ref[i], **SETTINGS["refine"], seed=args.seed)
    psis_after = single.evaluate("psis", N=SETTINGS["num_eval"])
    refined_samples[i] = single.sample((SETTINGS["num_samples"],))
    refined_results[i] = {
        "khat_before": float(quality.khat[i]),
        "khat_after": float(psis_after.khat),
        "ess_before": float(quality.ess[i]),
        "ess_after": float(psis_after.ess),
        "c2st_before": c2sts[i],
        "c2st_after": c2st_of(refined_samples[i], i),
        "num_iters": single.history[-1].num_iters,
    }
    r = refined_results[i]
    print(
        f"refined observation {i + 1} ({r['num_iters']} iterations): k-hat "
        f"{r['khat_before']:.2f} -> {r['khat_after']:.2f}, C2ST {r['c2st_before']:.3f} -> "
        f"{r['c2st_after']:.3f}"
    )
TIMES["refine"] = time.perf_counter() - start

# k-hat and C2ST per observation, with the refined values as black markers
fig, (ax_k, ax_c) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"wspace": 0.45})
labels = [str(i) for i in range(1, NUM_OBS + 1)]
plot_khat(quality.khat, ax=ax_k, n_particles=SETTINGS["num_eval"], labels=labels)
ax_k.set_title("PSIS k-hat of the amortised q")
ax_c.bar(range(NUM_OBS), c2sts, color="tab:blue", label="amortised q")
ax_c.axhline(0.5, color="grey", ls="--", lw=1)
ax_c.set(xticks=range(NUM_OBS), xticklabels=labels, xlabel="observation", ylim=(0.4, 1.0))
ax_c.set_title("C2ST against the reference (0.5 = perfect)")
for axis, key in ((ax_k, "khat_after"), (ax_c, "c2st_after")):
    index = list(refined_results)
    axis.scatter(index, [refined_results[i][key] for i in index], color="black", marker="D",
                 zorder=3, label="refined")  # fmt: skip
ax_c.legend(loc="upper left")
per_observation_path = OUTPUT_DIR / "per_observation.png"
fig.savefig(per_observation_path, dpi=100, bbox_inches="tight")

worst = max(refined_results, key=lambda i: refined_results[i]["khat_before"])
fig, _ = pairplot(
    [samples[:, worst], refined_samples[worst]],
    reference=references[worst],  # limits: the range of the data (the moons are small)
    labels=[r"$\theta_1$", r"$\theta_2$"],
    sample_labels=["amortised q", "refined"],
    upper="scatter",
)
refined_path = OUTPUT_DIR / "refined.png"
fig.savefig(refined_path, dpi=100, bbox_inches="tight")
print(f"figures written to {per_observation_path} and {refined_path}")

# %% [markdown]
# ## Many observations at once
#
# `sample_batched(shape, x)` draws for every row of x, shape `[*shape, B, D]`;
# `max_sampling_batch_size` bounds how many draws pass through the flow at once (memory),
# without changing the result's distribution. `log_prob(theta, x)` follows sbi's rules:
# one x serves every θ, one θ is scored under every x, and N = B rows are paired.

# %%
batched = SETTINGS["batched"]
theta_new, x_new = simulate(
    TASK.simulator, prior, batched["num_observations"], seed=args.seed + 1,
    show_progress_bar=False,
)  # fmt: skip
start = time.perf_counter()
draws = amortized.sample_batched(
    (batched["num_samples"],), x_new, max_sampling_batch_size=100_000
)  # [S, B, 2]
TIMES["sample_batched"] = time.perf_counter() - start
paired = amortized.log_prob(theta_new, x_new)  # [B]: log q(θ*_b | x_b)
in_support = bool(((draws > -1) & (draws < 1)).all())
print(
    f"sample_batched: {tuple(draws.shape)} in {TIMES['sample_batched']:.2f} s; all draws "
    f"inside the prior's support: {in_support}; mean log q(θ* | x) = {paired.mean():.2f}"
)

# %% [markdown]
# ## Calibration: SBC and expected coverage
#
# Simulation-based calibration ranks each true θ* among posterior draws for its x; ranks
# are uniform if q is calibrated. Expected coverage counts how often θ* falls in the
# highest-density region of credibility c (≈ c if calibrated). With an amortised q each
# simulation costs one network pass, so a thousand simulations take seconds (tutorial 2
# fitted q fifty times). These checks see the errors of the NLE and of q together.

# %%
calibration = SETTINGS["calibration"]
theta_cal, x_cal = simulate(
    TASK.simulator, prior, calibration["num_simulations"], seed=args.seed + 1000,
    show_progress_bar=False,
)  # fmt: skip
start = time.perf_counter()
sbc = run_sbc(
    theta_cal, x_cal, amortized, calibration["num_posterior_samples"], seed=args.seed,
    show_progress_bar=SHOW,
)  # fmt: skip
coverage = run_coverage(
    theta_cal, x_cal, amortized, calibration["num_posterior_samples"], seed=args.seed,
    show_progress_bar=SHOW,
)  # fmt: skip
TIMES["calibration"] = time.perf_counter() - start
print(
    f"calibration on {sbc.num_simulations} simulations ({TIMES['calibration']:.0f} s):\n"
    f"      SBC KS p-values {[round(p, 3) for p in sbc.ks_pvalues.tolist()]}, "
    f"passed: {sbc.passed()}\n"
    f"      coverage at 50% / 90%: "
    f"{coverage.coverage[50].item():.2f} / {coverage.coverage[90].item():.2f}, "
    f"largest shortfall {coverage.max_deficit:.2f}, passed: {coverage.passed()}"
)
fig, _ = plot_rank_histogram(sbc)
ranks_path = OUTPUT_DIR / "ranks.png"
fig.savefig(ranks_path, dpi=100, bbox_inches="tight")
fig, _ = plot_coverage({"amortised VI on NLE": coverage})
coverage_path = OUTPUT_DIR / "coverage.png"
fig.savefig(coverage_path, dpi=100, bbox_inches="tight")

# %% [markdown]
# ## Save and load
#
# `save` pickles the whole posterior — the amortised q, the potential (with the NLE) and
# the prior; the loaded posterior samples exactly as the original does.

# %%
posterior_path = OUTPUT_DIR / "amortized_posterior.pt"
amortized.save(posterior_path)
loaded = VIPosterior.load(posterior_path)
torch.manual_seed(1)
a = loaded.sample((10,), x=x_ref)
torch.manual_seed(1)
b = amortized.sample((10,), x=x_ref)
roundtrip_identical = bool(torch.equal(a, b))
print(f"{loaded!r}: identical samples after save/load: {roundtrip_identical}")

# %% [markdown]
# ## Summary
#
# The numbers above, in a JSON file (the test of this tutorial reads it). `c2st` is the
# mean C2ST of the amortised q over the 10 reference observations.

# %%
summary = {
    "task": "two_moons",
    "seed": args.seed,
    "quick": QUICK,
    "settings": SETTINGS,
    "seconds": TIMES,
    "training": {
        "num_iters": fit.num_iters,
        "num_validation_losses": len(validation),
        "best_validation_loss": validation[best_iter],
        "best_iteration": best_iter,
        "nle_epochs": nle.summary["epochs_trained"][-1],
    },
    "observations": list(range(1, NUM_OBS + 1)),
    "khat": quality.khat.tolist(),
    "ess": quality.ess.tolist(),
    "reliable": quality.reliable.tolist(),
    "unreliable": quality.unreliable.tolist(),
    "c2st_per_observation": c2sts,
    "c2st": sum(c2sts) / NUM_OBS,
    "refined": {str(i): result for i, result in refined_results.items()},
    "sample_batched": {
        "shape": list(draws.shape),
        "seconds": TIMES["sample_batched"],
        "in_support": in_support,
        "mean_log_prob_true_theta": float(paired.mean()),
    },
    "calibration": {
        "num_simulations": sbc.num_simulations,
        "sbc_ks_pvalues": sbc.ks_pvalues.tolist(),
        "sbc_chi2_pvalues": sbc.chi2_pvalues.tolist(),
        "sbc_passed": sbc.passed(),
        "coverage_levels": coverage.levels.tolist(),
        "coverage": coverage.coverage.tolist(),
        "coverage_max_deficit": coverage.max_deficit,
        "coverage_passed": coverage.passed(),
    },
    "roundtrip_identical": roundtrip_identical,
    "files": {
        "training": training_path.name,
        "per_observation": per_observation_path.name,
        "refined": refined_path.name,
        "ranks": ranks_path.name,
        "coverage": coverage_path.name,
        "posterior": posterior_path.name,
    },
}
(OUTPUT_DIR / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({"c2st": round(summary["c2st"], 3), "max_khat": max(summary["khat"])}))
