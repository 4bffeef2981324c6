"""Accuracy of the three SVI implementations of ``ppl.py`` over training seeds.

``ppl.py`` trains each implementation once (seed 2) and compares its guide means with the
exact reference (max and mean |z| over coordinates). Constant-lr Adam on subsampled
gradients leaves the final iterate noisy, so one seed says little; this script repeats the
logistic-regression training (4,000 steps) for seeds 0-15 and prints max/mean |z| per
implementation and their means over seeds.

Usage (the venv of ``ppl.py``)::

    python benchmarks/ppl_accuracy_seeds.py [--seeds 16] [--model logreg]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import ppl

STEPS = {"logreg": 4000, "hier": 5000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--model", choices=tuple(STEPS), default="logreg")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = ppl.make_data()
    if args.model == "logreg":
        ref = ppl.logreg_reference(data)
    else:
        ref = ppl.hier_reference(data)
    impls = ("sbi_vi", "pyro", "hand")
    rows: dict[str, list[tuple[float, float]]] = {i: [] for i in impls}
    for seed in range(args.seeds):
        line = [f"seed {seed:2d}"]
        for impl in impls:
            torch.manual_seed(seed)
            fit = ppl.build(impl, args.model, data)
            fit.steps(STEPS[args.model])
            acc = ppl.accuracy(fit.summary(), args.model, ref)
            rows[impl].append((acc["max_abs_z"], acc["mean_abs_z"]))
            line.append(f"{impl} {acc['max_abs_z']:.2f}/{acc['mean_abs_z']:.2f}")
        print("  ".join(line), flush=True)
    for impl in impls:
        mx = [r[0] for r in rows[impl]]
        mn = [r[1] for r in rows[impl]]
        print(
            f"{impl:7s} max|z| mean {statistics.fmean(mx):.2f} (seeds over 2: "
            f"{sum(v > 2 for v in mx)}/{len(mx)}), mean|z| mean {statistics.fmean(mn):.2f}"
        )


if __name__ == "__main__":
    main()
