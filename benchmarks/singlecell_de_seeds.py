"""DE ranking across training seeds: sbi_vi against scvi-tools on ``synthetic_zinb``.

Issue 22 measured, on a hidden ZINB data set, a 25-vs-25-cell DE ranking AUPRC of 0.925 for
sbi_vi against 0.939 for scvi-tools (10 draws, one trained model each). One trained model
per package cannot tell a difference of method from the spread between training seeds, so
this script trains ``--seeds`` models of each package on the data of
``benchmarks/singlecell.py --datasets synthetic_zinb`` (same data, split, model settings,
epochs and DE comparisons; the data and split stay at seed 0, only the training seed
changes) and scores ``--de-repeats`` 25-vs-25 comparisons (the same cells for every model)
plus the all-cells one. The DE calls themselves are seeded identically for every model
(``phase_de`` at seed 0), so the training seed is the only thing that varies.

One JSON row per package × training seed goes to ``results/singlecell_de_seeds.jsonl``;
models are kept in ``results/singlecell_de_seeds_models.tmp/`` (a rerun loads them).
``--report`` prints the per-seed and mean ± sd table.

Usage (from the repository root, in the venv with scvi-tools 1.5.1 and sbi_vi)::

    nice -n 10 python benchmarks/singlecell_de_seeds.py --packages sbi_vi --seeds 0 1 2
    nice -n 10 python benchmarks/singlecell_de_seeds.py --packages scvi --seeds 0 1 2
    python benchmarks/singlecell_de_seeds.py --report
"""

from __future__ import annotations

import harness  # benchmarks/ is on sys.path when run as a script

harness.use_one_thread()  # torch, and the BLAS under numpy/scikit-learn: before they load

import argparse  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
from typing import Any  # noqa: E402

import singlecell  # noqa: E402
import torch  # noqa: E402
from singlecell import (  # noqa: E402
    Dataset,
    _history_last,
    _quiet_libraries,
    load_model,
    make_model,
    phase_de,
    save_model,
)
from singlecell import parse_args as bench_args  # noqa: E402

OUTPUT = harness.RESULTS / "singlecell_de_seeds.jsonl"
MODELS = harness.RESULTS / "singlecell_de_seeds_models.tmp"
DATASET = "synthetic_zinb"
logger = logging.getLogger("singlecell_de_seeds")


def _train(package: str, model: Any, epochs: int, seed: int) -> None:
    from singlecell import train_model

    train_model(package, model, epochs, seed)


def one_seed(package: str, seed: int, ds: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or load) one model at training seed ``seed`` and run every DE comparison."""
    row: dict[str, Any] = {
        "package": package,
        "dataset": DATASET,
        "train_seed": seed,
        "epochs": args.epochs,
        "data_hash": ds.data_hash,
        "started": harness.now(),
        "loadavg_1m": harness.load_average(),
    }
    path = MODELS / f"{DATASET}-{package}-seed{seed}-e{args.epochs}"
    with harness.silenced():
        adata = ds.train_adata()
        if path.exists():
            model = load_model(package, path, adata)
            row["loaded"] = str(path)
        else:
            model = make_model(package, adata, seed, ds.model_kwargs)
            with harness.timed(row, "train"):
                _train(package, model, args.epochs, seed)
            row["elbo_train_last"] = _history_last(model, "elbo_train")
            save_model(package, model, path)
        row["de"] = phase_de(package, model, ds, 0)
        for n_cells in args.de_cells:
            if n_cells != singlecell.DE_CELLS:
                row.setdefault("de_cells", {})[str(n_cells)] = phase_de(
                    package, model, _draws_only(ds, n_cells, args), 0
                )
    row["finished"] = harness.now()
    row.update(harness.run_environment(singlecell.VERSIONS))
    return row


class _Draws:
    """``ds`` with only the ``k``-vs-``k`` draws as its comparisons (same data and cells)."""

    def __init__(self, ds: Dataset, comparisons: list[dict[str, Any]]):
        self.adata, self.synthetic, self.comparisons = ds.adata, ds.synthetic, comparisons


def _draws_only(ds: Dataset, n_cells: int, args: argparse.Namespace) -> Any:
    saved = singlecell.DE_CELLS
    singlecell.DE_CELLS = n_cells  # read by Dataset._comparisons
    try:
        comps = ds._comparisons(bench_args(["--de-repeats", str(args.de_repeats)]))
    finally:
        singlecell.DE_CELLS = saved
    return _Draws(ds, [c for c in comps if c["name"] != "all"])


def _auprcs(de: dict[str, Any]) -> tuple[list[float], float | None]:
    comps = de.get("comparisons", [])
    draws = [c["auprc"] for c in comps if c["name"] != "all" and "auprc" in c]
    every = [c.get("auprc") for c in comps if c["name"] == "all"]
    return draws, (every[0] if every else None)


def _des(row: dict[str, Any]) -> dict[int, dict[str, Any]]:
    out = {singlecell.DE_CELLS: row["de"]}
    out.update({int(k): v for k, v in row.get("de_cells", {}).items()})
    return out


def report() -> None:
    """Per-seed and mean ± sd AUPRC (latest row per package × seed × epochs), per group size."""
    rows = harness.latest_by(
        harness.load_rows(OUTPUT), lambda r: (r["package"], r["epochs"], r["train_seed"])
    )
    lines = [
        "| package | epochs | train seed | cells per group | AUPRC (mean over draws) | min–max "
        "| all cells | precision / recall FDR 5 % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per: dict[tuple[str, int, int], list[float]] = {}
    for (package, epochs, seed), row in sorted(rows.items()):
        for n_cells, de in sorted(_des(row).items(), reverse=True):
            draws, every = _auprcs(de)
            if not draws:
                continue
            comps = [c for c in de["comparisons"] if c["name"] != "all"]
            prec = statistics.fmean(c["precision"] or 0.0 for c in comps)
            rec = statistics.fmean(c["recall"] for c in comps)
            mean = statistics.fmean(draws)
            per.setdefault((package, epochs, n_cells), []).append(mean)
            every_s = "—" if every is None else f"{every:.4f}"
            lines.append(
                f"| {package} | {epochs} | {seed} | {n_cells} | {mean:.4f} "
                f"| {min(draws):.3f}–{max(draws):.3f} | {every_s} | {prec:.3f} / {rec:.3f} |"
            )
    lines.append("")
    for (package, epochs, n_cells), means in sorted(per.items()):
        sd = statistics.stdev(means) if len(means) > 1 else float("nan")
        lines.append(
            f"{package}, {epochs} epochs, {n_cells} vs {n_cells}: "
            f"{statistics.fmean(means):.4f} ± {sd:.4f} (sd over {len(means)} training seeds: "
            + ", ".join(f"{m:.4f}" for m in means)
            + ")"
        )
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    harness.configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", nargs="+", default=["sbi_vi", "scvi"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--de-repeats", type=int, default=10)
    parser.add_argument(
        "--de-cells", type=int, nargs="+", default=[25], help="cells per group (25; e.g. 25 5)"
    )
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.report:
        report()
        return
    torch.set_num_threads(1)
    _quiet_libraries()
    ds = Dataset(
        DATASET,
        bench_args(["--datasets", DATASET, "--de-repeats", str(args.de_repeats)]),
    )
    for seed in args.seeds:
        for package in args.packages:
            row = one_seed(package, seed, ds, args)
            harness.write_row(OUTPUT, row)
            draws, every = _auprcs(row["de"])
            logger.info(
                "%s seed %d: AUPRC 25v25 %s, all %s",
                package,
                seed,
                [round(a, 4) for a in draws],
                every,
            )


if __name__ == "__main__":
    main()
