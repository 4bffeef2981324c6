"""An atlas larger than memory: ``sbi_vi.singlecell.SCVI`` trained from a backed h5ad.

1. ``write``: a synthetic sparse h5ad of ``n_cells × 2,000`` genes is written to disk chunk by
   chunk (``anndata.io.write_elem`` for the first chunk, then
   ``anndata.io.sparse_dataset(f["X"]).append``), so the whole matrix is never in memory. The
   cells are rows drawn at random from a pool of ``synthetic_counts`` cells (NB counts,
   8 types, 4 batches, median library 500 UMIs: ~20 % non-zero entries), stored as float32
   CSR with ``obs["batch"]`` / ``obs["cell_type"]`` categoricals.
2. ``run``: every configuration trains in a fresh subprocess (so that its peak RSS,
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is its own), one torch / BLAS thread:

   - ``backed``: ``anndata.read_h5ad(path, backed="r")``, ``SCVI.setup_anndata(adata,
     batch_key="batch")``, ``SCVI(adata)`` at its defaults, ``train(max_epochs=1,
     batch_size=128, train_size=1.0)``;
   - ``memory``: the same after ``anndata.read_h5ad(path)`` (the CSR matrix in memory).

   Per run: RSS after the imports, after reading the AnnData, after set-up and model, the
   peak; training wall and CPU seconds and cells per second; the last ``elbo_train``.
   scvi-tools 1.5.1 runs the same calls (``enable_progress_bar=False``) when installed.

Rows go to ``benchmarks/results/atlas.jsonl``; the h5ad files to ``--dir`` (default
``/tmp/sbi_vi_atlas``; a 1,000,000-cell file takes about 3 GB).

Usage (from the repository root)::

    python benchmarks/atlas.py write --cells 100000 1000000
    python benchmarks/atlas.py run --cells 100000 --modes memory backed --packages sbi_vi scvi
    python benchmarks/atlas.py run --cells 1000000 --modes backed
    python benchmarks/atlas.py report          # the table of the latest rows, to stdout
"""

from __future__ import annotations

import os

# Not `harness.use_one_thread()`: the child's "RSS after imports" would count harness's.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "atlas.jsonl"
DEFAULT_DIR = Path("/tmp/sbi_vi_atlas")
N_GENES = 2000
POOL_CELLS = 20_000
CHUNK_CELLS = 20_000
LIBRARY = 500  # median UMIs per cell
BATCH_SIZE = 128


def atlas_path(directory: Path, n_cells: int) -> Path:
    return directory / f"atlas_{n_cells}x{N_GENES}.h5ad"


# ---------------------------------------------------------------------------- writing
def write_atlas(path: Path, n_cells: int, seed: int = 0) -> dict[str, Any]:
    """Write ``n_cells`` synthetic cells to ``path`` chunk by chunk; returns a summary."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    from sbi_vi.singlecell import synthetic_counts

    pool = synthetic_counts(
        POOL_CELLS,
        N_GENES,
        n_cell_types=8,
        n_batches=4,
        n_de_genes=100,
        library_log_mean=math.log(LIBRARY),
        counts_dtype=np.float32,
        seed=seed,
    )
    counts = sp.csr_matrix(pool.X, dtype=np.float32)
    batch = pool.obs["batch"].astype("category")
    cell_type = pool.obs["cell_type"].astype("category")
    rng = np.random.default_rng(seed + 1)
    rows = rng.integers(0, POOL_CELLS, n_cells)  # which pool cell each atlas cell copies
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical.from_codes(
                batch.cat.codes.to_numpy()[rows], batch.cat.categories
            ),
            "cell_type": pd.Categorical.from_codes(
                cell_type.cat.codes.to_numpy()[rows], cell_type.cat.categories
            ),
        },
        index=pd.Index([f"c{i}" for i in range(n_cells)]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    nnz = 0
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", pool.var[[]])
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            ad.io.write_elem(f, key, {})
        for start in range(0, n_cells, CHUNK_CELLS):
            chunk = counts[rows[start : start + CHUNK_CELLS]]
            nnz += chunk.nnz
            if start == 0:
                ad.io.write_elem(f, "X", chunk)
            else:
                ad.io.sparse_dataset(f["X"]).append(chunk)
    return {
        "path": str(path),
        "n_cells": n_cells,
        "n_genes": N_GENES,
        "nnz": nnz,
        "density": nnz / (n_cells * N_GENES),
        "bytes": path.stat().st_size,
        "write_wall_s": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------- one run
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(package: str, mode: str, path: str, epochs: int, max_steps: int | None) -> dict:
    """One training run in this (fresh) process; the row as a dict."""
    import warnings

    import anndata as ad
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if package == "sbi_vi":
        from sbi_vi.singlecell import SCVI
    else:
        import logging

        import scvi
        from scvi.model import SCVI

        scvi.settings.seed = 0
        for name in ("scvi", "lightning", "lightning.pytorch"):
            logging.getLogger(name).setLevel(logging.WARNING)
    row: dict[str, Any] = {"package": package, "mode": mode, "path": path, "epochs": epochs}
    row["rss_imports_mb"] = _rss_mb()
    from harness import timed  # torch is imported by now: this adds nothing to measure

    with timed(row, "read"):
        adata = ad.read_h5ad(path, backed="r" if mode == "backed" else None)
    row["n_cells"], row["n_genes"] = int(adata.n_obs), int(adata.n_vars)
    row["rss_read_mb"] = _rss_mb()
    row["peak_read_mb"] = _peak_mb()  # anndata's own transient peak while reading
    with timed(row, "setup"):
        SCVI.setup_anndata(adata, batch_key="batch")
        model = SCVI(adata)
    row["rss_setup_mb"] = _rss_mb()
    kwargs: dict[str, Any] = {"max_epochs": epochs, "batch_size": BATCH_SIZE, "train_size": 1.0}
    if max_steps:
        kwargs["max_steps"] = max_steps
    if package == "sbi_vi":
        kwargs.update(show_progress_bar=False, seed=0)
    else:
        kwargs.update(accelerator="cpu", devices=1, enable_progress_bar=False)
    torch.manual_seed(0)
    with timed(row, "train"):
        model.train(**kwargs)
    steps_per_epoch = math.ceil(row["n_cells"] / BATCH_SIZE)
    steps = min(max_steps or steps_per_epoch * epochs, steps_per_epoch * epochs)
    cells = min(steps * BATCH_SIZE, row["n_cells"] * epochs)
    row["cells_trained"] = cells
    row["cells_per_cpu_s"] = cells / row["train_cpu_s"]
    row["cells_per_wall_s"] = cells / row["train_wall_s"]
    try:
        row["elbo_train_last"] = float(model.history["elbo_train"].iloc[-1, 0])
    except (KeyError, IndexError, AttributeError, TypeError, ValueError):
        row["elbo_train_last"] = None
    row["rss_end_mb"] = _rss_mb()
    row["peak_rss_mb"] = _peak_mb()
    return row


def run_one(package: str, mode: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``child`` in a fresh interpreter; errors and timeouts become the row."""
    from harness import cpu_model, git, load_average, now, package_version  # imports torch

    cmd = [sys.executable, __file__, "_child", package, mode, str(path), str(args.epochs)]
    cmd += [str(args.max_steps or 0)]
    row: dict[str, Any] = {"started": now(), "loadavg_1m": load_average()}
    wall = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode == 0 and lines:
            row.update(json.loads(lines[-1]))
        else:
            row.update(package=package, mode=mode, path=str(path), error=done.stderr[-2000:])
            row["returncode"] = done.returncode
    except subprocess.TimeoutExpired:
        row.update(package=package, mode=mode, path=str(path), error=f"timeout {args.timeout}s")
    row["subprocess_wall_s"] = time.perf_counter() - wall
    row.update(
        finished=now(),
        device_name=cpu_model(),
        torch=package_version("torch"),
        anndata=package_version("anndata"),
        h5py=package_version("h5py"),
        scvi_tools=package_version("scvi-tools"),
        git_commit=git("rev-parse", "--short", "HEAD"),
        max_steps=args.max_steps,
    )
    return row


# ---------------------------------------------------------------------------- report
def report(path: Path) -> str:
    """The latest row of each (cells, mode, package, max_steps) as a markdown table.

    "over read" is the peak RSS minus the RSS after ``read_h5ad``: what set-up, model and
    training add to what anndata holds (``obs``, the cell names) for the same AnnData.
    """
    from harness import latest_by, load_rows

    latest = latest_by(
        load_rows(path), lambda r: (r.get("n_cells"), r["mode"], r["package"], r.get("max_steps"))
    )
    head = (
        "| package | mode | cells | steps | peak RSS MB | RSS after imports / read / set-up MB "
        "| peak over read MB | train CPU s | train wall s | cells / CPU-s | cells / wall-s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for (n, mode, package, steps), r in sorted(latest.items(), key=lambda kv: str(kv[0])):
        if r.get("error"):
            lines.append(f"| {package} | {mode} | {n} | error: {r['error'][-160:]!r} |||||||| |")
            continue
        n_steps = steps or math.ceil(r["n_cells"] / BATCH_SIZE) * r["epochs"]
        lines.append(
            f"| {package} | {mode} | {n:,} | {n_steps:,} | {r['peak_rss_mb']:.0f} "
            f"| {r['rss_imports_mb']:.0f} / {r['rss_read_mb']:.0f} / {r['rss_setup_mb']:.0f} "
            f"| {r['peak_rss_mb'] - r['rss_read_mb']:.0f} | {r['train_cpu_s']:.1f} "
            f"| {r['train_wall_s']:.1f} | {r['cells_per_cpu_s']:.0f} "
            f"| {r['cells_per_wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        package, mode, path, epochs, max_steps = argv[1:6]
        row = child(package, mode, path, int(epochs), int(max_steps) or None)
        print(json.dumps(row), flush=True)
        return
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("write", "run", "report"))
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", choices=("memory", "backed"), default=["backed"])
    parser.add_argument("--packages", nargs="+", choices=("sbi_vi", "scvi"), default=["sbi_vi"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the h5ad files go")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="stop each run after this")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.action == "report":
        print(report(args.output))
        return
    from harness import write_row

    for n_cells in args.cells:
        path = atlas_path(args.dir, n_cells)
        if args.action == "write" or not path.exists():
            print(json.dumps(write_atlas(path, n_cells)), flush=True)
        if args.action == "write":
            continue
        for mode in args.modes:
            for package in args.packages:
                row = run_one(package, mode, path, args)
                write_row(args.output, row)
                brief = {k: row.get(k) for k in ("package", "mode", "n_cells", "peak_rss_mb")}
                brief.update(cells_per_cpu_s=row.get("cells_per_cpu_s"), error=row.get("error"))
                print(json.dumps(brief), flush=True)


if __name__ == "__main__":
    main()
