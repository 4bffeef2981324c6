"""How good is each package's NLE posterior, without VI? (issue 20, "Pipeline accuracy").

On the same simulations (``sbi_vi.simulate``, seeded), train sbi_vi's ``NLE`` and sbi 0.27's
``NLE`` (both ``density_estimator="nsf"``, as ``pipeline.py``; ``--sbi-model maf`` for sbi's
default) and judge the posterior each learned likelihood implies,
``p̂(θ | x_o) ∝ q(x_o | θ) p(θ)``, with no variational fit in between:

* **SIR draws.** 100,000 proposals from a defensive mixture (0.5 a Gaussian KDE of 1,000
  reference draws with a quarter of Silverman's bandwidth, 0.4 the same KDE at Silverman's
  bandwidth, 0.1 the prior), weighted by ``exp(potential − log g)`` and resampled to
  ``--draws`` draws; ``C2ST`` of those against the reference posterior
  (``sbi_vi.diagnostics.c2st``, sbibm's MLP, 5 folds). The proposal depends on the task
  only, so both packages are judged through the same lens; ``--check`` runs it on the true
  likelihood (C2ST ≈ 0.5 and a large ESS say the lens is sharp).
* **KL at x_o.** On the same proposals, the KL divergence between the self-normalised
  weights of the true posterior and those of the estimator's posterior (a consistent
  estimate of KL(p(θ | x_o) ‖ p̂(θ | x_o))): cheap and with little noise.
* **Test KL.** ``E[log p(x | θ) − log q(x | θ)]`` over 20,000 fresh simulations from the
  prior (the true likelihood is known on every task): the likelihood's error averaged over
  the prior, not only at x_o.

Variants of sbi_vi's side (``--variants``) change one thing at a time; see ``VARIANTS``.

Run in the benchmark venv (sbi 0.27), one thread::

    nice -n 5 .venv-bench/bin/python benchmarks/estimator_quality.py \\
        --tasks two_moons,slcp,gaussian_linear --seeds 1,2,3 --variants sbi,default
    .venv-bench/bin/python benchmarks/estimator_quality.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from harness import Timer, load_average, load_rows, write_row  # benchmarks/ is on sys.path
from torch import Tensor

RESULTS = Path(__file__).parent / "results"
OUTPUT = RESULTS / "estimator_quality.jsonl"
SIMULATION_BATCH_SIZE = 1000
NUM_PROPOSALS = 100_000
NUM_TEST = 20_000
_SCALES = (0.25, 1.0)  # KDE bandwidths, in units of the Silverman bandwidth

# sbi_vi variants: (NLE constructor kwargs, train kwargs). "default" is the package default.
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "patience40": ({}, {"stop_after_epochs": 40}),
    "tail3": ({"tail_bound": 3.0}, {}),
    "batch50": ({}, {"training_batch_size": 50}),
    "hidden100": ({"hidden_features": 100}, {}),
    "transforms3": ({"num_transforms": 3}, {}),
    "bins5": ({"num_bins": 5}, {}),
    "zscore_none": ({"z_score_theta": "none", "z_score_x": "none"}, {}),
    "val20": ({}, {"validation_fraction": 0.2}),
    "lr1e-3": ({}, {"learning_rate": 1e-3}),
}


# ---------------------------------------------------------------------------- data
def simulate_task(task: Any, num_simulations: int, seed: int) -> tuple[Tensor, Tensor]:
    """The shared training simulations (as ``pipeline.py``)."""
    from sbi_vi import simulate

    return simulate(
        task.simulator,
        task.prior,
        num_simulations,
        simulation_batch_size=SIMULATION_BATCH_SIZE,
        seed=seed,
        show_progress_bar=False,
    )


def sbi_prior_for(prior: Any) -> Any:
    """sbi's prior: its ``BoxUniform`` for a box, the torch distribution itself otherwise."""
    from sbi.utils import BoxUniform as SbiBoxUniform

    from sbi_vi.priors import BoxUniform

    if isinstance(prior, BoxUniform):
        return SbiBoxUniform(prior.low.clone(), prior.high.clone())
    return prior


# ---------------------------------------------------------------------------- training
def train(variant: str, task: Any, theta: Tensor, x: Tensor, seed: int, sbi_model: str):
    """Train one estimator; return ``log_lik(x [N or 1, L], theta [N, D]) -> [N]`` (log q of
    each pair, x broadcast over the rows of theta) and its info."""
    torch.manual_seed(seed)
    timer = Timer()
    with timer.time():
        log_lik, inference, net = _fit(variant, task, theta, x, sbi_model)
    info = {
        "estimator_cpu_s": timer.cpu,
        "estimator_wall_s": timer.wall,
        "epochs": int(inference.summary["epochs_trained"][-1]),
        "best_validation_loss": float(inference.summary["best_validation_loss"][-1]),
        "validation_loss": [float(v) for v in inference.summary["validation_loss"]],
    }
    net.eval()
    return log_lik, info


def _fit(variant: str, task: Any, theta: Tensor, x: Tensor, sbi_model: str):
    """The trained estimator of one variant: ``(log_lik, inference, net)``."""
    if variant == "sbi":
        from sbi.inference import NLE as SbiNLE

        inference = SbiNLE(
            prior=sbi_prior_for(task.prior), density_estimator=sbi_model, show_progress_bars=False
        )
        net = inference.append_simulations(theta.clone(), x.clone()).train()

        def log_lik(x_b: Tensor, th: Tensor) -> Tensor:
            x_b = x_b.expand(th.shape[0], -1).unsqueeze(0)
            return net.log_prob(x_b, condition=th).reshape(-1)

    else:
        from sbi_vi.estimators import NLE

        net_kwargs, train_kwargs = VARIANTS.get(variant, ({}, {}))
        inference = NLE(
            task.prior, density_estimator="nsf", show_progress_bars=False, **net_kwargs
        )
        inference.append_simulations(theta.clone(), x.clone())
        if variant == "halve_on_plateau":
            net = train_halving(inference)
        else:
            net = inference.train(**train_kwargs)

        def log_lik(x_b: Tensor, th: Tensor) -> Tensor:
            return net.log_prob(x_b.expand(th.shape[0], -1), th)

    return log_lik, inference, net


def train_halving(inference: Any, plateau: int = 10, halvings: int = 3) -> Any:
    """sbi_vi's NLE trained in stages: each stage stops after ``plateau`` epochs without a
    better validation loss and restores the best weights; the next stage continues from
    them at half the learning rate; after ``halvings`` halvings the last stage ends it."""
    net = inference.train(stop_after_epochs=plateau)
    for _ in range(halvings):
        state = inference._state
        for group in state.optimizer.param_groups:
            group["lr"] *= 0.5
        state.epochs_since_improvement = 0
        net = inference.train(stop_after_epochs=plateau, resume_training=True)
    return net


def chunked(fn, th: Tensor, chunk: int = 20_000) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(th[i : i + chunk]) for i in range(0, th.shape[0], chunk)])


# ---------------------------------------------------------------------------- the lens
class Proposal:
    """Defensive mixture: KDE(h / 4), KDE(h) of reference draws and the prior (weights
    0.5 / 0.4 / 0.1), with a diagonal Silverman bandwidth h per dimension."""

    def __init__(self, reference: Tensor, prior: Any, generator: torch.Generator):
        idx = torch.randperm(reference.shape[0], generator=generator)[:1000]
        self.centers = reference[idx]
        n, d = self.centers.shape
        silverman = (4 / (d + 2)) ** (1 / (d + 4)) * n ** (-1 / (d + 4))
        self.h = silverman * reference.std(0)
        self.prior = prior
        self.log_mix = torch.tensor([0.5, 0.4, 0.1]).log()

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        counts = torch.multinomial(self.log_mix.exp(), n, True, generator=generator).bincount(
            minlength=3
        )
        parts = []
        for k, scale in enumerate(_SCALES):
            c = torch.randint(self.centers.shape[0], (int(counts[k]),), generator=generator)
            noise = torch.randn(int(counts[k]), self.h.shape[0], generator=generator)
            parts.append(self.centers[c] + scale * self.h * noise)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            parts.append(self.prior.sample((int(counts[2]),)))
        return torch.cat(parts)[torch.randperm(n, generator=generator)]

    def log_prob(self, th: Tensor) -> Tensor:
        out = []
        for i in range(0, th.shape[0], 5000):
            t = th[i : i + 5000]
            comps = []
            for scale in _SCALES:
                z = (t[:, None, :] - self.centers[None]) / (scale * self.h)
                log_k = -0.5 * z.square().sum(-1) - (scale * self.h).log().sum()
                log_k = log_k - 0.5 * t.shape[-1] * math.log(2 * math.pi)
                comps.append(torch.logsumexp(log_k, -1) - math.log(self.centers.shape[0]))
            lp = self.prior.log_prob(t)
            comps.append(torch.where(torch.isfinite(lp), lp, torch.full_like(lp, -math.inf)))
            out.append(torch.logsumexp(torch.stack(comps, -1) + self.log_mix, -1))
        return torch.cat(out)


def in_support(prior: Any, th: Tensor) -> Tensor:
    return torch.isfinite(prior.log_prob(th))


def judge(
    log_lik,
    task: Any,
    num_observation: int,
    proposals: Tensor,
    log_g: Tensor,
    log_true: Tensor,
    draws: int,
    seed: int,
    c2st_samples: int,
) -> dict[str, Any]:
    """SIR draws, their C2ST, the KL at x_o, the ESS."""
    from sbi_vi.diagnostics import c2st

    x_o = task.get_observation(num_observation).reshape(1, -1)
    ok = in_support(task.prior, proposals)
    log_post = torch.full_like(log_g, -math.inf)
    log_post[ok] = chunked(lambda t: log_lik(x_o, t), proposals[ok]) + task.prior.log_prob(
        proposals[ok]
    )
    log_w = log_post - log_g
    rho = torch.softmax(log_w, 0)
    pi = torch.softmax(log_true - log_g, 0)
    mask = pi > 0
    kl = float((pi[mask] * (pi[mask].log() - rho[mask].clamp_min(1e-300).log())).sum())
    ess = float(1 / rho.square().sum())
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(rho, draws, replacement=True, generator=g)
    reference = task.get_reference_posterior_samples(num_observation)
    cpu = time.process_time()
    score = c2st(proposals[idx], reference, seed=seed, max_samples=c2st_samples)
    return {
        "obs": num_observation,
        "c2st": score,
        "kl_xo": kl,
        "ess": ess,
        "unique_draws": int(idx.unique().numel()),
        "c2st_cpu_s": time.process_time() - cpu,
    }


def test_kl(log_lik_batch, task: Any, seed: int) -> float:
    """``E[log p(x | θ) − log q(x | θ)]`` over fresh prior simulations."""
    theta, x = simulate_task(task, NUM_TEST, 10_000 + seed)
    with torch.no_grad():
        est = torch.cat(
            [log_lik_batch(x[i : i + 5000], theta[i : i + 5000]) for i in range(0, NUM_TEST, 5000)]
        )
    return float((task.likelihood.log_prob(x, theta) - est).mean())


# ---------------------------------------------------------------------------- driver
def run(args: argparse.Namespace) -> None:
    from sbi_vi.tasks import get_task

    torch.set_num_threads(1)
    out = Path(args.output)
    for task_name in args.tasks.split(","):
        task = get_task(task_name)
        obs = [int(o) for o in args.observations.split(",")]
        lens = {}
        for o in obs:
            g = torch.Generator().manual_seed(1000 + o)
            reference = task.get_reference_posterior_samples(o)
            proposal = Proposal(reference, task.prior, g)
            th = proposal.sample(NUM_PROPOSALS, g)
            log_g = proposal.log_prob(th)
            ok = in_support(task.prior, th)
            log_true = torch.full_like(log_g, -math.inf)
            log_true[ok] = task.potential(o)(th[ok])
            lens[o] = (th, log_g, log_true)
        if args.check:
            for o in obs:
                th, log_g, log_true = lens[o]

                def true_ll(x_o, t, task=task):
                    return task.likelihood.log_prob(x_o.expand(t.shape[0], -1), t)

                row = judge(true_ll, task, o, th, log_g, log_true, args.draws, 1, args.draws)
                row.update(task=task_name, variant="true_likelihood", seed=None)
                print(json.dumps(row), flush=True)
                write_row(out, row)
            continue
        for seed in [int(s) for s in args.seeds.split(",")]:
            theta, x = simulate_task(task, args.num_simulations, seed)
            for variant in args.variants.split(","):
                log_lik, info = train(variant, task, theta, x, seed, args.sbi_model)
                row: dict[str, Any] = {
                    "task": task_name,
                    "seed": seed,
                    "variant": variant,
                    "package": "sbi" if variant == "sbi" else "sbi_vi",
                    "sbi_model": args.sbi_model if variant == "sbi" else None,
                    **info,
                    "test_kl": test_kl(log_lik, task, seed),
                    "per_obs": [
                        judge(log_lik, task, o, *lens[o], args.draws, seed, args.draws)
                        for o in obs
                    ],
                    "load1": load_average(),
                    "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                brief = {k: v for k, v in row.items() if k != "validation_loss"}
                print(json.dumps(brief), flush=True)
                write_row(out, row)


def report(path: Path) -> None:
    rows = load_rows(path)
    rows = [r for r in rows if r.get("seed") is not None]
    print(
        "| task | seed | package | variant | C2ST (mean over obs) | KL at x_o | test KL | "
        "epochs | estimator CPU s |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        c = sum(o["c2st"] for o in r["per_obs"]) / len(r["per_obs"])
        k = sum(o["kl_xo"] for o in r["per_obs"]) / len(r["per_obs"])
        print(
            f"| {r['task']} | {r['seed']} | {r['package']} | {r['variant']} | {c:.3f} | "
            f"{k:.3f} | {r['test_kl']:.3f} | {r['epochs']} | {r['estimator_cpu_s']:.0f} |"
        )
        groups[(r["task"], r["variant"])].append(
            (c, k, r["test_kl"], r["epochs"], r["estimator_cpu_s"])
        )
    print("\n| task | variant | seeds | C2ST | KL at x_o | test KL | epochs | CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (task, variant), vals in sorted(groups.items()):
        m = [sum(v[i] for v in vals) / len(vals) for i in range(5)]
        print(
            f"| {task} | {variant} | {len(vals)} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | "
            f"{m[3]:.0f} | {m[4]:.0f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="two_moons,slcp,gaussian_linear")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--variants", default="sbi,default")
    p.add_argument("--observations", default="1,2,3")
    p.add_argument("--num-simulations", type=int, default=10_000)
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--sbi-model", default="nsf")
    p.add_argument("--check", action="store_true", help="judge the true likelihood only")
    p.add_argument("--report", action="store_true")
    p.add_argument("--output", default=str(OUTPUT))
    args = p.parse_args()
    if args.report:
        report(Path(args.output))
    else:
        run(args)


if __name__ == "__main__":
    main()
