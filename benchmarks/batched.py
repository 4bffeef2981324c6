"""Many observations in one run: ``train(x=X)`` on B observations against a loop of B ``train()``.

One task (``gaussian_linear``: D = 10, closed-form posterior), B observations simulated from
prior draws, the true likelihood potential (``likelihood_estimator_based_potential`` on
``task.likelihood``), the ``gaussian`` family, rKL, every ``train`` default (quality
control included, progress bars off). Two ways to get B posteriors:

- **batched**: ``VIPosterior(potential, prior, q="gaussian", x_shape=(1, L)).train(x=X)``;
- **loop**: for each row ``x_b``, a fresh ``VIPosterior(potential, prior, q="gaussian")``
  trained by ``train(x=x_b)`` — what a user without batched VI writes.

Both run in this process with ``torch.set_num_threads(1)``, alternating (batched, loop,
loop, batched, ...); wall and CPU seconds of the B posteriors together, then the C2ST
(``sbi_vi.diagnostics.c2st``, 5 folds, ``--classifier``: a random forest by default, as
sbi's ``c2st``; ``mlp`` is sbibm's, several times slower) of ``--c2st-n`` draws of each q_b
against as many draws of the exact posterior, on every ``--c2st-every``-th observation.

Usage::

    .venv/bin/python benchmarks/batched.py                # B = 50, 1 repeat
    .venv/bin/python benchmarks/batched.py --quick        # B = 5, 1 repeat, smoke test

One JSON line per run goes to ``benchmarks/results/batched.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from harness import Timer, git, load_average, write_row  # benchmarks/ is on sys.path

from sbi_vi.diagnostics import c2st
from sbi_vi.posteriors import VIPosterior
from sbi_vi.potentials import likelihood_estimator_based_potential
from sbi_vi.tasks import get_task

RESULTS = Path(__file__).parent / "results" / "batched.jsonl"


def run_batched(potential, prior, x: torch.Tensor, seed: int) -> VIPosterior:
    """B posteriors in one run (one posterior holding the B q's)."""
    post = VIPosterior(potential, prior, q="gaussian", x_shape=(1, x.shape[-1]))
    post.train(x=x, seed=seed, show_progress_bar=False)
    return post


def run_loop(potential, prior, x: torch.Tensor, seed: int) -> list[VIPosterior]:
    """B posteriors, one ``train()`` each."""
    posteriors = []
    for b in range(x.shape[0]):
        post = VIPosterior(potential, prior, q="gaussian")
        post.train(x=x[b : b + 1], seed=seed + b, show_progress_bar=False)
        posteriors.append(post)
    return posteriors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-observations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--c2st-n", type=int, default=1000)
    parser.add_argument("--c2st-every", type=int, default=10)
    parser.add_argument("--classifier", choices=("rf", "mlp"), default="rf")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.num_observations, args.repeats, args.c2st_n, args.c2st_every = 5, 1, 300, 2
    torch.set_num_threads(1)
    task = get_task("gaussian_linear")
    prior = task.prior
    torch.manual_seed(args.seed)  # the same B observations on every run
    x = task.simulator(prior.sample((args.num_observations,)), seed=args.seed + 1)
    potential, _ = likelihood_estimator_based_potential(task.likelihood, prior)
    checked = list(range(0, args.num_observations, args.c2st_every))
    # One-time costs (arviz's import at the first quality control, torch._dynamo's at the
    # first Adam, first kernel calls) would fall on whichever way runs first: pay them here.
    run_batched(potential, prior, x[:2], args.seed + 99)
    run_loop(potential, prior, x[:1], args.seed + 99)
    for repeat in range(args.repeats):
        order = ("batched", "loop") if repeat % 2 == 0 else ("loop", "batched")
        for kind in order:
            seed = args.seed + 1000 * repeat
            load = load_average()
            timer = Timer()
            if kind == "batched":
                post = timer.wrap(run_batched)(potential, prior, x, seed)
                draws = [post.sample((args.c2st_n,), x=x[b]) for b in checked]
                iters = post.history[-1].num_iters
            else:
                posts = timer.wrap(run_loop)(potential, prior, x, seed)
                draws = [posts[b].sample((args.c2st_n,)) for b in checked]
                iters = sum(p.history[-1].num_iters for p in posts) / len(posts)
            scores = []
            for b, theta in zip(checked, draws, strict=True):
                exact = task.true_posterior(x[b])
                with torch.random.fork_rng():
                    torch.manual_seed(b)
                    reference = exact.sample((args.c2st_n,))
                scores.append(c2st(theta, reference, seed=b, classifier=args.classifier))
            row = {
                "kind": kind,
                "repeat": repeat,
                "num_observations": args.num_observations,
                "wall_s": timer.wall,
                "cpu_s": timer.cpu,
                "num_iters": iters,
                "c2st_mean": sum(scores) / len(scores),
                "c2st_max": max(scores),
                "c2st_observations": checked,
                "c2st_classifier": args.classifier,
                "c2st": scores,
                "load_1min": load,
                "commit": git("rev-parse", "--short", "HEAD") or "unknown",
                "torch": torch.__version__,
                "machine": platform.machine(),
                "quick": args.quick,
                "warmed_up": True,
            }
            print(json.dumps({k: v for k, v in row.items() if k != "c2st"}), flush=True)
            write_row(RESULTS, row)


if __name__ == "__main__":
    main()
