# %% [markdown]
# # Tutorial 2 — from a simulator to a posterior (two moons)
#
# Tutorial 1 used the two-moons likelihood in closed form. Here we pretend we only have
# the *simulator*: we learn the likelihood from simulations with neural likelihood
# estimation (NLE) and fit a variational posterior to the learned potential. With the same
# simulation budget we compare
#
# 1. one round: all simulations drawn from the prior;
# 2. sequential NVI (SNVI): the budget split over several rounds, each round simulating
#    from the posterior of the round before (`infer(..., num_rounds=R)`);
#
# with the C2ST against the task's reference posterior samples and PSIS k-hat. Finally we
# check the calibration of the one-round (amortised) estimator with simulation-based
# calibration (SBC) and expected coverage on fresh simulations.
#
# Run it as a script:
#
#     python tutorials/02_simulator_to_posterior.py                # full run, 7-15 minutes
#     python tutorials/02_simulator_to_posterior.py --quick        # < 1 minute
#     python tutorials/02_simulator_to_posterior.py --output-dir results/
#
# `SBI_VI_TUTORIAL_QUICK=1` and `SBI_VI_TUTORIAL_OUTPUT_DIR=...` do the same as the
# flags. The script writes `pairplot.png`, `coverage.png`, `ranks.png` and `summary.json`
# to the output directory (default: a new temporary directory).

# %%
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from sbi_vi import NLE, infer, simulate
from sbi_vi.diagnostics import c2st, khat_verdict, run_coverage, run_sbc
from sbi_vi.plotting import pairplot, plot_coverage, plot_rank_histogram
from sbi_vi.tasks import get_task

parser = argparse.ArgumentParser(description="Tutorial 2: from a simulator to a posterior.")
parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
parser.add_argument("--output-dir", type=Path, default=None, help="where to write results")
parser.add_argument("--num-observation", type=int, default=1, help="observation 1 to 10")
parser.add_argument("--seed", type=int, default=0)
args, _ = parser.parse_known_args()  # parse_known_args: also runs inside Jupyter

QUICK = args.quick or os.environ.get("SBI_VI_TUTORIAL_QUICK", "") not in ("", "0")
OUTPUT_DIR = args.output_dir or os.environ.get("SBI_VI_TUTORIAL_OUTPUT_DIR")
OUTPUT_DIR = Path(OUTPUT_DIR or tempfile.mkdtemp(prefix="sbi_vi_tutorial_02_"))
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
SHOW = not QUICK  # progress bars in the full run only
torch.manual_seed(args.seed)  # e.g. the initialisation of q in build_posterior()

# Budgets of the quick run (CI) and of the full run. The full run's settings are those of
# the numbers quoted in docs/tutorials/02_simulator_to_posterior.md.
SETTINGS = {
    "num_simulations": 300 if QUICK else 2_000,  # the budget of each variant
    "num_rounds": 2 if QUICK else 4,  # rounds of the SNVI variant
    "density_estimator": "nsf",
    "train": {  # NLE.train()
        "training_batch_size": 50 if QUICK else 100,
        "learning_rate": 1e-3 if QUICK else 5e-4,
        "max_num_epochs": 10 if QUICK else 150,
    },
    "vi": {"q": "nsf", "vi_method": "fKL"},  # VIPosterior / build_posterior
    "vi_train": {  # VIPosterior.train()
        "max_num_iters": 60 if QUICK else 1_000,
        "n_particles": 64 if QUICK else 256,
        "quality_control": False,  # we call evaluate() ourselves
    },
    "num_eval": 2_000 if QUICK else 10_000,  # draws for PSIS
    "num_samples": 1_000 if QUICK else 5_000,  # draws for C2ST and the plot
    "c2st_max_samples": 500 if QUICK else 2_000,
    "calibration": {  # SBC and coverage of the one-round estimator
        "num_simulations": 5 if QUICK else 50,
        "num_posterior_samples": 50 if QUICK else 500,
        "vi_train": {
            "max_num_iters": 20 if QUICK else 200,
            "learning_rate": 5e-3,
            "n_particles": 64 if QUICK else 128,
            "warm_up_rounds": 20 if QUICK else 100,
            "quality_control": False,
        },
    },
}
print(f"{'quick' if QUICK else 'full'} run, writing to {OUTPUT_DIR}")

# %% [markdown]
# ## The task
#
# `task.simulator` maps θ `[B, 2]` to x `[B, 2]`; `task.prior` is uniform on [-1, 1]².
# The reference posterior samples are used only to score the results.

# %%
TASK = get_task("two_moons")
prior = TASK.prior
x_o = TASK.get_observation(args.num_observation)  # [1, 2]
theta_true = TASK.get_true_parameters(args.num_observation)  # [1, 2]
reference = TASK.get_reference_posterior_samples(args.num_observation)  # [10000, 2]


def score(posterior, seconds: float) -> tuple[dict, torch.Tensor]:
    """PSIS k-hat and ESS of q against its potential, C2ST against the reference."""
    psis = posterior.evaluate("psis", N=SETTINGS["num_eval"])
    samples = posterior.sample((SETTINGS["num_samples"],))
    accuracy = c2st(samples, reference, seed=args.seed, max_samples=SETTINGS["c2st_max_samples"])
    print(
        f"      {khat_verdict(psis.khat, psis.n_particles)}\n"
        f"      ESS = {psis.ess:.0f} of {psis.n_particles}, C2ST = {accuracy:.3f} "
        f"({seconds:.0f} s)"
    )
    result = {
        "c2st": accuracy,
        "khat": psis.khat,
        "ess": psis.ess,
        "reliable": bool(psis.reliable),
        "seconds": seconds,
    }
    return result, samples


# %% [markdown]
# ## (a) One round: simulate, train NLE, fit q
#
# The steps `infer` runs for one round, written out: simulate from the prior, train a
# neural spline flow q(x | θ) with early stopping, wrap it into a `VIPosterior` and fit a
# flow q(θ) to the potential log q(x_o | θ) + log p(θ). Forward KL (`fKL`) is
# mass-covering, which suits the two crescent-shaped modes of this posterior; reverse KL
# tends to settle on one of them.

# %%
N = SETTINGS["num_simulations"]
start = time.perf_counter()
theta, x = simulate(TASK.simulator, prior, N, seed=args.seed, show_progress_bar=SHOW)
nle = NLE(prior, density_estimator=SETTINGS["density_estimator"], show_progress_bars=SHOW)
nle.append_simulations(theta, x).train(**SETTINGS["train"], seed=args.seed)
posterior_1 = nle.build_posterior(
    vi_method=SETTINGS["vi"]["vi_method"], vi_parameters={"q": SETTINGS["vi"]["q"]}
)
posterior_1.set_default_x(x_o)
posterior_1.train(**SETTINGS["vi_train"], show_progress_bar=SHOW, seed=args.seed)
seconds = time.perf_counter() - start
print(
    f"1 round of {N} simulations: NLE trained for {nle.summary['epochs_trained'][-1]} epochs "
    f"(best validation loss {nle.summary['best_validation_loss'][-1]:.3f}), "
    f"VI for {posterior_1.history[-1].num_iters} iterations"
)
one_round, samples_1 = score(posterior_1, seconds)

# %% [markdown]
# ## (b) The same budget in several rounds: SNVI
#
# `infer(..., num_rounds=R)` splits the budget evenly: round 1 simulates from the prior,
# round r from the posterior q of round r − 1 trained on x_o. The NLE keeps every round's
# simulations and continues training on all of them; each round's q starts from the last.
# The simulations concentrate on the two moons, where the likelihood must be accurate for
# this x_o.

# %%
R = SETTINGS["num_rounds"]
start = time.perf_counter()
posterior_r = infer(
    TASK.simulator,
    prior,
    x_o,
    "NLE",
    num_simulations=N,
    num_rounds=R,
    estimator=SETTINGS["density_estimator"],
    train_kwargs=SETTINGS["train"],
    vi_parameters=SETTINGS["vi"],
    vi_train_kwargs=SETTINGS["vi_train"],
    seed=args.seed,
    show_progress_bar=SHOW,
)
seconds = time.perf_counter() - start
print(f"{R} rounds of {N // R} simulations:")
rounds, samples_r = score(posterior_r, seconds)

variants = {"1_round": one_round, f"{R}_rounds": rounds}
for name, result in variants.items():
    print(f"{name:>9}: C2ST {result['c2st']:.3f}, k-hat {result['khat']:.2f}")

# %% [markdown]
# ## Corner plot against the reference posterior

# %%
fig, axes = pairplot(
    [samples_1, samples_r],
    reference=reference,
    points=theta_true,
    limits=(-1.0, 1.0),
    labels=[r"$\theta_1$", r"$\theta_2$"],
    sample_labels=["1 round", f"{R} rounds"],
    upper="scatter",
    max_scatter=2_000,
)
pairplot_path = OUTPUT_DIR / "pairplot.png"
fig.savefig(pairplot_path, dpi=100, bbox_inches="tight")
print(f"pairplot written to {pairplot_path}")

# %% [markdown]
# ## (c) Is the one-round posterior calibrated?
#
# C2ST needs reference samples, which real problems lack. Simulation-based calibration
# does not: draw fresh (θ*, x) from the prior and the simulator, compute the posterior of
# each x, and check that θ* looks like one of its draws — SBC ranks θ* among posterior
# samples per coordinate (uniform ranks if calibrated), expected coverage counts how often
# θ* falls in the highest-density region of credibility c (about c if calibrated, below c
# if over-confident).
#
# The one-round NLE was trained on prior simulations, so it is *amortised*: it serves any
# x, and only q is fitted per observation (with a smaller budget than above). The SNVI
# estimator was trained for x_o alone and cannot be tested this way. Each q is fitted once
# and used by both checks.

# %%
calibration = SETTINGS["calibration"]
theta_cal, x_cal = simulate(
    TASK.simulator,
    prior,
    calibration["num_simulations"],
    seed=args.seed + 1000,
    show_progress_bar=False,
)
fits: dict[tuple, object] = {}


def fit_q(x: torch.Tensor):
    """The posterior of one simulated x [2]: q fitted to the amortised NLE potential."""
    key = tuple(x.tolist())
    if key not in fits:
        q = nle.build_posterior(
            vi_method=SETTINGS["vi"]["vi_method"], vi_parameters={"q": SETTINGS["vi"]["q"]}
        )
        q.set_default_x(x)
        fits[key] = q.train(**calibration["vi_train"], show_progress_bar=False)
    return fits[key]


start = time.perf_counter()
sbc = run_sbc(
    theta_cal,
    x_cal,
    fit_q,
    calibration["num_posterior_samples"],
    seed=args.seed,
    show_progress_bar=SHOW,
)
coverage = run_coverage(
    theta_cal,
    x_cal,
    fit_q,
    calibration["num_posterior_samples"],
    seed=args.seed,
    show_progress_bar=SHOW,
)
print(
    f"calibration on {calibration['num_simulations']} simulations "
    f"({time.perf_counter() - start:.0f} s):\n"
    f"      SBC KS p-values {[round(p, 3) for p in sbc.ks_pvalues.tolist()]}, "
    f"passed: {sbc.passed()}\n"
    f"      coverage at 50% / 90%: "
    f"{coverage.coverage[50].item():.2f} / {coverage.coverage[90].item():.2f}, "
    f"largest shortfall {coverage.max_deficit:.2f}, passed: {coverage.passed()}"
)

fig, _ = plot_rank_histogram(sbc)
ranks_path = OUTPUT_DIR / "ranks.png"
fig.savefig(ranks_path, dpi=100, bbox_inches="tight")
fig, _ = plot_coverage({"NLE, 1 round": coverage})
coverage_path = OUTPUT_DIR / "coverage.png"
fig.savefig(coverage_path, dpi=100, bbox_inches="tight")
print(f"rank histograms and coverage written to {ranks_path} and {coverage_path}")

# %% [markdown]
# ## Summary
#
# The numbers above, in a JSON file (the test of this tutorial reads it). `c2st` is the
# C2ST of the multi-round posterior.

# %%
summary = {
    "task": "two_moons",
    "num_observation": args.num_observation,
    "seed": args.seed,
    "quick": QUICK,
    "settings": SETTINGS,
    "variants": variants,
    "c2st": rounds["c2st"],
    "c2st_improvement": one_round["c2st"] - rounds["c2st"],
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
    "files": {
        "pairplot": pairplot_path.name,
        "ranks": ranks_path.name,
        "coverage": coverage_path.name,
    },
}
(OUTPUT_DIR / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({name: round(v["c2st"], 3) for name, v in variants.items()}))
