"""Side-by-side benchmark of ``sbi_vi.singlecell.SCVI`` against ``scvi-tools==1.5.1``.

Both packages fit the same scVI (``gene_likelihood="nb"``, ``n_latent=10``, ``n_hidden=128``,
``n_layers=1``, ``batch_key="batch"``, observed library size, ``batch_size=128``, KL warm-up
over 20 epochs, the same number of epochs) on the same cells, in one process with
``torch.set_num_threads(1)`` (and one OpenMP/MKL/BLAS thread), the package order
alternating from one data set to the next:

- **synthetic**: ``synthetic_counts(10_000, 2_000, n_cell_types=5, n_batches=2,
  n_de_genes=200, likelihood="nb")`` at its other defaults (median library size
  ``6 · n_genes`` = 12,000 UMIs, per-gene θ around 5), 80 epochs;
- **synthetic_shallow**: the same with ``library_log_mean=log(3000)`` (median 3,000 UMIs,
  1.5 per gene: DE on 25 cells is no longer trivial at this depth);
- **synthetic_zinb**: ``synthetic_counts(8_000, 2_500, n_cell_types=6, n_batches=3,
  n_de_genes=250, likelihood="zinb")`` (zero-inflated, three batches), 100 epochs, and both
  packages at their default ``gene_likelihood="zinb"``: the shape of the hidden data set of
  issue 22, where the ZINB likelihood with batches is the whole marginal-LL story;
- **pbmc**: ``load_pbmc()`` (700 cells × 765 genes, 8 10x libraries as batches), 200 epochs.

10% of the cells (fixed seed) are held out; each package gets its own copy of the other 90%
as its training AnnData and trains on all of it (``train_size=1.0``: no validation split).
Timed phases (CPU seconds, ``time.process_time()``, and wall seconds):

1. ``train()``; throughput = training cells × epochs / train CPU seconds;
2. ``get_marginal_ll(held-out cells, n_mc_samples=100)`` (scvi-tools at its default
   ``n_mc_samples_per_pass=1``: 100 forward passes per minibatch; a second, separately
   timed call with ``n_mc_samples_per_pass=100`` is recorded as ``mll_batched``) — the
   reported value is the mean over cells of the per-cell estimates
   (``return_mean=False``; scvi-tools' own mean is over minibatch means);
3. ``get_elbo`` on the held-out cells (not timed apart);
4. ``get_normalized_expression`` of all training cells, ``n_samples=1`` and
   ``n_samples=25, return_mean=True`` (``return_numpy=True`` for both);
5. ``posterior_predictive_sample`` of 1,000 training cells (all 630 on PBMC),
   ``n_samples=10``;
6. ``differential_expression(idx1, idx2, mode="change")`` at the defaults (``delta=0.25``,
   ``fdr_target=0.05``, 5,000 posterior samples per group). On synthetic data:
   ``--de-repeats`` comparisons of 25 random cells of each of the two DE types (the same
   cells for both packages) and one of all training cells of the two types, scored against
   ``var["de"]``: AUPRC of ``proba_de`` (``sklearn.metrics.average_precision_score``) and
   precision / recall of ``is_de_fdr_0.05``. On PBMC: one comparison of all cells of the
   two largest ``bulk_labels`` (time, genes called, top-50 genes).

Every finished package × data set is one JSON line in ``benchmarks/results/singlecell.jsonl``
(``--quick``: ``singlecell_quick.jsonl``), with versions, machine, git commit and a hash of
the sbi_vi sources. Trained models are kept under ``results/singlecell_models.tmp/`` so that
``--only de`` can redo the DE part alone (rows of ``"kind": "de"``, which the report prefers
over the DE of the run row).

Usage (from the repository root, in a venv with scvi-tools 1.5.1 and sbi_vi)::

    python benchmarks/singlecell.py --quick            # smoke test, under a minute
    nice -n 10 python benchmarks/singlecell.py         # the three data sets (~25 min of CPU)
    python benchmarks/singlecell.py --datasets pbmc --packages scvi,sbi_vi   # a subset
    python benchmarks/singlecell.py --only de          # DE again, from the saved models
    python benchmarks/singlecell.py --print            # the table, to stdout
    python benchmarks/singlecell.py --report           # the table -> benchmarks/README.md
"""

from __future__ import annotations

import harness  # benchmarks/ is on sys.path when run as a script

harness.use_one_thread()  # torch, and the BLAS under numpy/scikit-learn: before they load

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from harness import cell, mark, mean, ratio  # noqa: E402  (table cells)

DEFAULT_OUTPUT = harness.RESULTS / "singlecell.jsonl"
QUICK_OUTPUT = harness.RESULTS / "singlecell_quick.jsonl"
MODELS_DIR = harness.RESULTS / "singlecell_models.tmp"  # gitignored (`results/*.tmp`)
TABLE_START, TABLE_END = harness.table_markers("singlecell")

DATASETS = ("synthetic", "synthetic_shallow", "synthetic_zinb", "pbmc")
SHALLOW_LIBRARY = 3000  # median UMIs per cell of `synthetic_shallow`
PACKAGES = ("sbi_vi", "scvi")
LABEL = {"sbi_vi": "sbi_vi", "scvi": "scvi-tools"}

MODEL_KWARGS = {"gene_likelihood": "nb", "n_latent": 10, "n_hidden": 128, "n_layers": 1}
# synthetic_zinb: its own shape (full, quick) and scVI's default ZINB likelihood
ZINB_DATA = {
    "n_cells": (8_000, 2_000),
    "n_genes": (2_500, 500),
    "n_de_genes": (250, 50),
    "n_cell_types": (6, 6),
    "n_batches": (3, 3),
    "epochs": (100, 5),
}
ZINB_MODEL_KWARGS = {**MODEL_KWARGS, "gene_likelihood": "zinb"}
BATCH_SIZE = 128
KL_WARMUP_EPOCHS = 20
HOLDOUT_FRACTION = 0.1
MLL_SAMPLES = 100
PPC_CELLS = 1000
PPC_SAMPLES = 10
NORM_SAMPLES = 25
DE_CELLS = 25
DE_DELTA = 0.25
FDR_TARGET = 0.05
TOP_GENES = 50

# Targets (sbi_vi against scvi-tools, same run).
THROUGHPUT_RATIO = 2.0  # training cells per CPU-s, sbi_vi / scvi >=
MLL_TIME_RATIO = 1 / 5  # marginal-LL CPU s, sbi_vi / scvi <=
PPC_TIME_RATIO = 1 / 10  # posterior-predictive CPU s, sbi_vi / scvi <=
MLL_TOLERANCE = 1e-3  # "equal": held-out marginal LL within 0.1 % of scvi's
AUPRC_TOLERANCE = 0.005  # "equal": DE AUPRC within 0.005 of scvi's

logger = logging.getLogger("singlecell_bench")


# ---------------------------------------------------------------------------- set-up
VERSIONS = {
    "scvi_tools": "scvi-tools",
    "lightning": "lightning",
    "anndata": "anndata",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "sbi_vi": "sbi_vi",
    "zuko": "zuko",
}


def _quiet_libraries() -> None:
    """scvi-tools and Lightning print set-up chatter on every train(); keep warnings."""
    try:
        import scvi
        import scvi.model  # imports Lightning, which sets its loggers up

        scvi.settings.verbosity = logging.WARNING
    except ImportError:  # pragma: no cover - sbi_vi-only runs
        pass
    for name in (
        "scvi",
        "lightning",
        "lightning.pytorch",
        "pytorch_lightning",
        "lightning.fabric",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------- data
class Dataset:
    """One data set: the training / held-out split and the DE comparisons, shared by both
    packages (each package gets its own copies of the AnnData)."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.seed = args.seed
        self.synthetic = name.startswith("synthetic")
        if self.synthetic:
            from sbi_vi.singlecell import synthetic_counts

            self.data_kwargs = {
                "n_cells": args.n_cells,
                "n_genes": args.n_genes,
                "n_cell_types": 5,
                "n_batches": 2,
                "n_de_genes": args.n_de_genes,
                "likelihood": "nb",
                "seed": args.seed,
            }
            self.epochs = args.epochs_synthetic
            self.model_kwargs = MODEL_KWARGS
            if name == "synthetic_shallow":
                self.data_kwargs["library_log_mean"] = math.log(SHALLOW_LIBRARY)
            if name == "synthetic_zinb":
                pick = 1 if args.quick else 0
                sizes = {key: value[pick] for key, value in ZINB_DATA.items()}
                epochs = sizes.pop("epochs")
                self.epochs = epochs if args.epochs_zinb is None else args.epochs_zinb
                self.data_kwargs.update(sizes, likelihood="zinb")
                self.model_kwargs = ZINB_MODEL_KWARGS
            adata = synthetic_counts(**self.data_kwargs)
        else:
            from sbi_vi.singlecell import load_pbmc

            self.data_kwargs = {}
            adata = load_pbmc()
            self.epochs = args.epochs_pbmc
            self.model_kwargs = MODEL_KWARGS
        for key in [k for k in adata.obs if str(k).startswith("_scvi")]:
            del adata.obs[key]
        self.adata = adata
        rng = np.random.default_rng(args.seed + 11)
        order = rng.permutation(adata.n_obs)
        n_test = round(HOLDOUT_FRACTION * adata.n_obs)
        self.test_idx = np.sort(order[:n_test])
        self.train_idx = np.sort(order[n_test:])
        x = adata.X
        digest = hashlib.sha1(
            (x.data.tobytes() + x.indices.tobytes()) if hasattr(x, "data") else x.tobytes()
        )
        digest.update(self.train_idx.tobytes())
        self.data_hash = digest.hexdigest()[:12]
        self.n_train = len(self.train_idx)
        self.n_test = len(self.test_idx)
        self.mean_library = float(np.asarray(x.sum(1)).mean())
        self.ppc_idx = np.arange(min(PPC_CELLS, self.n_train))
        self.comparisons = self._comparisons(args)

    def train_adata(self) -> Any:
        return self.adata[self.train_idx].copy()

    def test_adata(self) -> Any:
        return self.adata[self.test_idx].copy()

    def _comparisons(self, args: argparse.Namespace) -> list[dict[str, Any]]:
        """DE comparisons on the training cells: boolean masks over the training AnnData."""
        obs = self.adata.obs.iloc[self.train_idx]
        if self.synthetic:
            a, b = self.adata.uns["synthetic"]["de_types"]
            key = "cell_type"
        else:
            key = "bulk_labels"
            a, b = obs[key].value_counts().index[:2].tolist()
        in_a = (obs[key] == a).to_numpy()
        in_b = (obs[key] == b).to_numpy()
        out = []
        if self.synthetic:
            rng = np.random.default_rng(args.seed + 23)
            where_a, where_b = np.flatnonzero(in_a), np.flatnonzero(in_b)
            for r in range(args.de_repeats):
                m1 = np.zeros(self.n_train, dtype=bool)
                m2 = np.zeros(self.n_train, dtype=bool)
                m1[rng.choice(where_a, DE_CELLS, replace=False)] = True
                m2[rng.choice(where_b, DE_CELLS, replace=False)] = True
                out.append({"name": f"{DE_CELLS}v{DE_CELLS}_{r}", "idx1": m1, "idx2": m2})
        out.append({"name": "all", "idx1": in_a, "idx2": in_b})
        for c in out:
            c.update(
                group1=str(a), group2=str(b), n1=int(c["idx1"].sum()), n2=int(c["idx2"].sum())
            )
        return out

    def info(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "data_kwargs": self.data_kwargs,
            "n_cells": int(self.adata.n_obs),
            "n_genes": int(self.adata.n_vars),
            "n_batches": int(self.adata.obs["batch"].nunique()),
            "n_train_cells": self.n_train,
            "n_heldout_cells": self.n_test,
            "mean_library_size": self.mean_library,
            "data_hash": self.data_hash,
            "epochs": self.epochs,
        }


# ---------------------------------------------------------------------------- models
def _seed_all(package: str, seed: int) -> None:
    np.random.seed(seed % 2**32)  # noqa: NPY002  (both packages' DE draw from it)
    torch.manual_seed(seed)
    if package == "scvi":
        import scvi

        scvi.settings.seed = seed  # lightning's seed_everything: random, numpy, torch


def make_model(
    package: str, adata: Any, seed: int, model_kwargs: dict[str, Any] | None = None
) -> Any:
    """``setup_anndata(batch_key="batch")`` and the model (default :data:`MODEL_KWARGS`)."""
    _seed_all(package, seed)
    if package == "sbi_vi":
        from sbi_vi.singlecell import SCVI
    else:
        from scvi.model import SCVI
    SCVI.setup_anndata(adata, batch_key="batch")
    return SCVI(adata, **(MODEL_KWARGS if model_kwargs is None else model_kwargs))


def train_model(package: str, model: Any, epochs: int, seed: int) -> None:
    plan_kwargs = {"n_epochs_kl_warmup": KL_WARMUP_EPOCHS}
    _seed_all(package, seed)
    if package == "sbi_vi":
        model.train(
            max_epochs=epochs,
            accelerator="cpu",
            train_size=1.0,
            batch_size=BATCH_SIZE,
            plan_kwargs=plan_kwargs,
            show_progress_bar=False,
            seed=seed,
        )
    else:
        model.train(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            train_size=1.0,
            batch_size=BATCH_SIZE,
            plan_kwargs=plan_kwargs,
            enable_progress_bar=False,
            enable_model_summary=False,
        )


def _history_last(model: Any, key: str) -> float | None:
    try:
        frame = model.history[key]
        return float(frame.iloc[-1, 0])
    except (KeyError, IndexError, AttributeError, TypeError, ValueError):
        return None


def _model_dir(args: argparse.Namespace, dataset: str, package: str) -> Path:
    return MODELS_DIR / ("quick" if args.quick else "full") / f"{dataset}-{package}"


def save_model(package: str, model: Any, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path), overwrite=True)


def load_model(package: str, path: Path, adata: Any) -> Any:
    if package == "sbi_vi":
        from sbi_vi.singlecell import SCVI

        SCVI.setup_anndata(adata, batch_key="batch")
        return SCVI.load(str(path), adata=adata, accelerator="cpu")
    from scvi.model import SCVI

    SCVI.setup_anndata(adata, batch_key="batch")
    return SCVI.load(str(path), adata=adata, accelerator="cpu")


# ---------------------------------------------------------------------------- phases
def _per_cell(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def phase_marginal_ll(package: str, model: Any, test: Any, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"mll_n_mc_samples": MLL_SAMPLES}
    _seed_all(package, seed)
    with harness.timed(out, "mll"):
        values = model.get_marginal_ll(test, n_mc_samples=MLL_SAMPLES, return_mean=False)
    values = _per_cell(values)
    out["heldout_marginal_ll"] = float(values.mean())
    out["heldout_marginal_ll_nonfinite"] = int((~np.isfinite(values)).sum())
    if package == "scvi":
        # scvi-tools' default is one sample per forward pass; its batched pass, timed apart.
        _seed_all(package, seed)
        with harness.timed(out, "mll_batched"):
            batched = model.get_marginal_ll(
                test,
                n_mc_samples=MLL_SAMPLES,
                n_mc_samples_per_pass=MLL_SAMPLES,
                return_mean=False,
            )
        out["heldout_marginal_ll_batched"] = float(_per_cell(batched).mean())
        out["mll_n_mc_samples_per_pass"] = 1
    _seed_all(package, seed)
    elbo = _per_cell(model.get_elbo(test, return_mean=False))
    out["heldout_elbo"] = float(elbo.mean())
    return out


def phase_expression(package: str, model: Any, ds: Dataset, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _seed_all(package, seed)
    with harness.timed(out, "norm1"):
        expr = model.get_normalized_expression(n_samples=1, return_numpy=True)
    out["norm1_shape"] = list(np.shape(expr))
    del expr
    _seed_all(package, seed)
    with harness.timed(out, "norm25"):
        expr = model.get_normalized_expression(
            n_samples=NORM_SAMPLES, return_mean=True, return_numpy=True
        )
    out["norm25_shape"] = list(np.shape(expr))
    out["norm_n_samples"] = NORM_SAMPLES
    del expr
    _seed_all(package, seed)
    with harness.timed(out, "ppc"):
        draws = model.posterior_predictive_sample(indices=ds.ppc_idx, n_samples=PPC_SAMPLES)
    out["ppc_shape"] = list(draws.shape)
    out["ppc_cells"] = len(ds.ppc_idx)
    out["ppc_n_samples"] = PPC_SAMPLES
    dense = draws.todense() if hasattr(draws, "todense") else np.asarray(draws)
    out["ppc_mean_count"] = float(np.asarray(dense).mean())
    return out


def _de_scores(frame: Any, var: Any, synthetic: bool) -> dict[str, Any]:
    """AUPRC of ``proba_de`` and precision / recall of the FDR call against ``var["de"]``."""
    frame = frame.loc[~frame.index.duplicated()].reindex(var.index)
    proba = frame["proba_de"].to_numpy(dtype=float)
    call_key = f"is_de_fdr_{FDR_TARGET}"
    called = frame[call_key].fillna(False).to_numpy(dtype=bool)
    out: dict[str, Any] = {"n_called": int(called.sum())}
    top = np.argsort(-proba, kind="stable")[:TOP_GENES]
    out["top_genes"] = [str(g) for g in var.index[top]]
    if synthetic:
        from sklearn.metrics import average_precision_score

        truth = var["de"].to_numpy(dtype=bool)
        tp = int((called & truth).sum())
        out["auprc"] = float(average_precision_score(truth, proba))
        out["true_positives"] = tp
        out["precision"] = tp / int(called.sum()) if called.any() else None
        out["recall"] = tp / int(truth.sum())
        if "lfc_mean" in frame:
            lfc = frame["lfc_mean"].to_numpy(dtype=float)
            ok = np.isfinite(lfc)
            out["lfc_corr"] = float(np.corrcoef(lfc[ok], var["true_lfc"].to_numpy()[ok])[0, 1])
    return out


def phase_de(package: str, model: Any, ds: Dataset, seed: int) -> dict[str, Any]:
    """All comparisons of ``ds``; a missing ``differential_expression`` is a skip."""
    if not hasattr(model, "differential_expression"):
        return {"skipped": "AttributeError: no differential_expression"}
    out: dict[str, Any] = {"delta": DE_DELTA, "fdr_target": FDR_TARGET, "comparisons": []}
    var = ds.adata.var
    for i, c in enumerate(ds.comparisons):
        entry: dict[str, Any] = {k: c[k] for k in ("name", "group1", "group2", "n1", "n2")}
        _seed_all(package, seed + 1000 + i)
        try:
            with harness.timed(entry, "de"):
                frame = model.differential_expression(
                    idx1=c["idx1"],
                    idx2=c["idx2"],
                    mode="change",
                    delta=DE_DELTA,
                    fdr_target=FDR_TARGET,
                    silent=True,
                )
            entry.update(_de_scores(frame, var, ds.synthetic))
        except AttributeError as err:
            if "differential_expression" in str(err):
                return {"skipped": f"AttributeError: {err}"[:300]}
            entry.update(harness.error_fields(err))
        except Exception as err:  # one failed comparison is a result, not a crash
            entry.update(harness.error_fields(err))
        out["comparisons"].append(entry)
        logger.info("  %-6s DE %-8s %s", package, c["name"], _brief_de(entry))
    return out


def _brief_de(e: dict[str, Any]) -> str:
    if e.get("error"):
        return f"ERROR {e['error'][:160]}"
    return (
        f"{cell(e.get('de_cpu_s'))} cpu-s, called {e.get('n_called')}, AUPRC "
        f"{cell(e.get('auprc'), '.3f')}, precision {cell(e.get('precision'), '.3f')}, "
        f"recall {cell(e.get('recall'), '.3f')}"
    )


def run_one(
    package: str, ds: Dataset, order: int, args: argparse.Namespace, env: dict[str, Any]
) -> dict[str, Any]:
    """Train one package on one data set and time every phase; one row."""
    row: dict[str, Any] = {
        "kind": "run",
        "package": package,
        **ds.info(),
        "order": order,
        "seed": args.seed,
        "quick": bool(args.quick),
        "model_kwargs": ds.model_kwargs,
        "batch_size": BATCH_SIZE,
        "n_epochs_kl_warmup": KL_WARMUP_EPOCHS,
        "train_size": 1.0,
        "started": harness.now(),
        "loadavg_1m": harness.load_average(),
    }
    row["run_id"] = f"{ds.name}-{package}-{row['started'][:19].replace(':', '')}-{os.getpid()}"
    stdout = io.StringIO()
    with harness.logged_warnings("sbi_vi", "scvi", "lightning") as collect:
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                contextlib.redirect_stdout(stdout),
            ):
                warnings.simplefilter("always")
                adata, test = ds.train_adata(), ds.test_adata()
                model = make_model(package, adata, args.seed, ds.model_kwargs)
                with harness.timed(row, "train"):
                    train_model(package, model, ds.epochs, args.seed)
                row["torch_threads_after_train"] = torch.get_num_threads()
                row["cells_per_cpu_s"] = ds.n_train * ds.epochs / row["train_cpu_s"]
                row["cells_per_wall_s"] = ds.n_train * ds.epochs / row["train_wall_s"]
                row["elbo_train_last"] = _history_last(model, "elbo_train")
                logger.info(
                    "%-9s %-6s train %.1f cpu-s / %.1f s: %.0f cells per cpu-s, elbo_train %s",
                    ds.name,
                    package,
                    row["train_cpu_s"],
                    row["train_wall_s"],
                    row["cells_per_cpu_s"],
                    cell(row["elbo_train_last"]),
                )
                with contextlib.suppress(Exception):
                    save_model(package, model, _model_dir(args, ds.name, package))
                for name, phase in (
                    ("marginal_ll", lambda: phase_marginal_ll(package, model, test, args.seed)),
                    ("expression", lambda: phase_expression(package, model, ds, args.seed)),
                ):
                    try:
                        row.update(phase())
                    except Exception as err:
                        row[f"{name}_error"] = harness.error_fields(err)["error"]
                        row[f"{name}_traceback"] = harness.error_fields(err)["traceback"]
                logger.info("%-9s %-6s %s", ds.name, package, _brief_phases(row))
                try:
                    row["de"] = phase_de(package, model, ds, args.seed)
                except Exception as err:
                    row["de"] = harness.error_fields(err)
                row["error"] = None
            row["warnings"] = harness.warning_list(caught)
        except Exception as err:
            row.update(harness.error_fields(err))
            logger.error("%s %s: %s", ds.name, package, row["error"])
        finally:
            row["log_warnings"] = sorted(set(collect.messages)) or None
            row["stdout"] = stdout.getvalue().strip()[-600:] or None
            row["finished"] = harness.now()
            row.update(env)
    return row


def _brief_phases(row: dict[str, Any]) -> str:
    return (
        f"mLL {cell(row.get('heldout_marginal_ll'))} ({cell(row.get('mll_cpu_s'))} cpu-s; "
        f"batched {cell(row.get('mll_batched_cpu_s'))}), elbo {cell(row.get('heldout_elbo'))}, "
        f"norm1 {cell(row.get('norm1_cpu_s'), '.2f')}, norm25 {cell(row.get('norm25_cpu_s'))}, "
        f"ppc {cell(row.get('ppc_cpu_s'), '.2f')} cpu-s"
    )


def warm_up(packages: list[str]) -> None:
    """Each package once on a tiny data set, untimed: imports, Lightning, first calls."""
    from sbi_vi.singlecell import synthetic_counts

    adata = synthetic_counts(300, 50, n_de_genes=4, seed=0)
    mask = np.zeros(300, dtype=bool)
    mask[:20] = True
    for package in packages:
        with harness.silenced():
            for kwargs in (ZINB_MODEL_KWARGS, MODEL_KWARGS):  # both likelihoods' first calls
                a = adata.copy()
                model = make_model(package, a, 0, kwargs)
                train_model(package, model, 2, 0)
                model.get_marginal_ll(a[:50].copy(), n_mc_samples=5)
            model.get_normalized_expression(n_samples=2, return_numpy=True)
            model.posterior_predictive_sample(indices=np.arange(20), n_samples=2)
            if hasattr(model, "differential_expression"):
                with contextlib.suppress(Exception):
                    model.differential_expression(
                        idx1=mask, idx2=~mask, mode="change", silent=True
                    )
    gc.collect()


# ---------------------------------------------------------------------------- driver
def run_grid(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    _quiet_libraries()
    output = harness.output_path(args, DEFAULT_OUTPUT, QUICK_OUTPUT)
    env = harness.run_environment(VERSIONS)
    logger.info("environment: %s", json.dumps(env))
    logger.info("writing rows to %s", output)
    warm_up(args.packages)
    for i, name in enumerate(args.datasets):
        ds = Dataset(name, args)
        logger.info(
            "%s: %d cells × %d genes (mean library %.0f), %d train / %d held out, %d epochs",
            name,
            ds.adata.n_obs,
            ds.adata.n_vars,
            ds.mean_library,
            ds.n_train,
            ds.n_test,
            ds.epochs,
        )
        order = args.packages if i % 2 == 0 else args.packages[::-1]
        for position, package in enumerate(order):
            row = run_one(package, ds, position, args, env)
            harness.write_row(output, row)
            logger.info("%-9s %-6s row written", name, package)
            gc.collect()


def run_de_only(args: argparse.Namespace) -> None:
    """DE again from the models saved by the last run (``"kind": "de"`` rows)."""
    torch.set_num_threads(1)
    _quiet_libraries()
    output = harness.output_path(args, DEFAULT_OUTPUT, QUICK_OUTPUT)
    env = harness.run_environment(VERSIONS)
    runs = {
        (r["dataset"], r["package"]): r
        for r in harness.load_rows(output)
        if r.get("kind") == "run" and not r.get("error") and bool(r.get("quick")) == args.quick
    }
    for i, name in enumerate(args.datasets):
        ds = Dataset(name, args)
        order = args.packages if i % 2 == 0 else args.packages[::-1]
        for package in order:
            path = _model_dir(args, name, package)
            run = runs.get((name, package))
            if not path.exists() or run is None:
                logger.warning("%s %s: no saved model or run row; skipped", name, package)
                continue
            if run.get("data_hash") != ds.data_hash:
                logger.warning("%s %s: data differ from the run's; skipped", name, package)
                continue
            row: dict[str, Any] = {
                "kind": "de",
                "package": package,
                "dataset": name,
                "quick": bool(args.quick),
                "seed": args.seed,
                "run_id": run["run_id"],
                "data_hash": ds.data_hash,
                "started": harness.now(),
                "loadavg_1m": harness.load_average(),
            }
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    model = load_model(package, path, ds.train_adata())
                    row["de"] = phase_de(package, model, ds, args.seed)
                except Exception as err:
                    row["de"] = harness.error_fields(err)
            row["warnings"] = harness.warning_list(caught)
            row["finished"] = harness.now()
            row.update(env)
            harness.write_row(output, row)
            logger.info("%-9s %-6s DE row written", name, package)


# ---------------------------------------------------------------------------- report
def de_summary(de: dict[str, Any] | None) -> dict[str, Any]:
    """Means over the 25-vs-25 repeats, and the all-cells comparison."""
    if not de or de.get("skipped") or de.get("error"):
        reason = (de or {}).get("skipped") or (de or {}).get("error") or "not run"
        return {"status": reason}
    comps = [c for c in de.get("comparisons", []) if not c.get("error")]
    small = [c for c in comps if c["name"] != "all"]
    full = next((c for c in comps if c["name"] == "all"), {})
    called = sum(c.get("n_called") or 0 for c in small)
    tp = sum(c.get("true_positives") or 0 for c in small)
    return {
        "status": None,
        "n_repeats": len(small),
        "auprc": mean([c.get("auprc") for c in small], finite_only=True),
        "precision": mean([c.get("precision") for c in small], finite_only=True),
        "recall": mean([c.get("recall") for c in small], finite_only=True),
        "fdp_pooled": (1 - tp / called) if called and small and "auprc" in small[0] else None,
        "n_called": mean([c.get("n_called") for c in small], finite_only=True),
        "cpu_s": mean([c.get("de_cpu_s") for c in small], finite_only=True),
        "lfc_corr": mean([c.get("lfc_corr") for c in small], finite_only=True),
        "all_auprc": full.get("auprc"),
        "all_precision": full.get("precision"),
        "all_recall": full.get("recall"),
        "all_n_called": full.get("n_called"),
        "all_cpu_s": full.get("de_cpu_s"),
        "all_top_genes": full.get("top_genes"),
        "errors": [c["error"] for c in de.get("comparisons", []) if c.get("error")],
    }


def summarise(rows: list[dict[str, Any]], quick: bool = False) -> list[dict[str, Any]]:
    """Per data set: the latest complete run of each package (and its latest DE row)."""
    out = []
    for name in DATASETS:
        s: dict[str, Any] = {"dataset": name}
        for p in PACKAGES:
            runs = [
                r
                for r in rows
                if r.get("kind") == "run"
                and r.get("dataset") == name
                and r.get("package") == p
                and bool(r.get("quick")) == quick
            ]
            ok = [r for r in runs if not r.get("error")]
            run = ok[-1] if ok else None
            s[f"{p}.run"] = run
            s[f"{p}.errors"] = [r["error"] for r in runs if r.get("error")]
            de = (run or {}).get("de")
            if run is not None:
                for r in rows:
                    if r.get("kind") == "de" and r.get("run_id") == run["run_id"]:
                        if not (r.get("de") or {}).get("error"):
                            de = r["de"]
            s[f"{p}.de"] = de_summary(de)
        if s["sbi_vi.run"] is None and s["scvi.run"] is None:
            continue
        out.append(s)
    return out


def _get(s: dict[str, Any], p: str, key: str) -> Any:
    if key.startswith("de."):
        return s[f"{p}.de"].get(key[3:])
    return (s[f"{p}.run"] or {}).get(key)


# (label, key, format, ratio?, target) — target: a function of (sbi_vi value, scvi value, s).
def _mll_target(a: Any, b: Any, s: dict[str, Any]) -> bool | None:
    return None if a is None or b is None else a >= b - MLL_TOLERANCE * abs(b)


def _throughput_target(a: Any, b: Any, s: dict[str, Any]) -> bool | None:
    r = ratio(a, b)
    mll = _mll_target(
        _get(s, "sbi_vi", "heldout_marginal_ll"), _get(s, "scvi", "heldout_marginal_ll"), s
    )
    return None if r is None or mll is None else (r >= THROUGHPUT_RATIO and mll)


def _time_target(limit: float) -> Callable[[Any, Any, dict[str, Any]], bool | None]:
    def check(a: Any, b: Any, s: dict[str, Any]) -> bool | None:
        r = ratio(a, b)
        return None if r is None else r <= limit

    return check


def _auprc_target(a: Any, b: Any, s: dict[str, Any]) -> bool | None:
    return None if a is None or b is None else a >= b - AUPRC_TOLERANCE


def _fdr_target(a: Any, b: Any, s: dict[str, Any]) -> bool | None:
    return None if a is None else a <= FDR_TARGET


class Metric(NamedTuple):
    """One row of the table: ``key`` of the run row (``de.*``: of the DE summary)."""

    label: str
    key: str
    fmt: str = ".1f"
    ratio: bool = False  # show sbi_vi / scvi-tools
    target: Callable[[Any, Any, dict[str, Any]], bool | None] | None = None
    target_text: str = ""


METRICS = [
    Metric(
        "training cells / CPU-s", "cells_per_cpu_s", ".0f", True, _throughput_target, "≥ 2×, mLL ≥"
    ),
    Metric("training cells / wall-s", "cells_per_wall_s", ".0f", True),
    Metric("train CPU s", "train_cpu_s", ".1f", True),
    Metric("elbo_train, last epoch (−ELBO per cell)", "elbo_train_last"),
    Metric(
        f"held-out marginal LL ({MLL_SAMPLES} samples)",
        "heldout_marginal_ll",
        target=_mll_target,
        target_text="≥ (within 0.1 %)",
    ),
    Metric("held-out ELBO", "heldout_elbo"),
    Metric("marginal-LL CPU s", "mll_cpu_s", ".2f", True, _time_target(MLL_TIME_RATIO), "≤ 1/5"),
    Metric("marginal-LL CPU s, scvi 100 samples per pass", "mll_batched_cpu_s", ".2f"),
    Metric("normalised expression CPU s (n_samples=1)", "norm1_cpu_s", ".2f", True),
    Metric(
        f"normalised expression CPU s (n_samples={NORM_SAMPLES}, mean)",
        "norm25_cpu_s",
        ".2f",
        True,
    ),
    Metric(
        f"posterior predictive CPU s ({PPC_SAMPLES} samples)",
        "ppc_cpu_s",
        ".2f",
        True,
        _time_target(PPC_TIME_RATIO),
        "≤ 1/10",
    ),
    Metric(
        f"DE AUPRC, {DE_CELLS} vs {DE_CELLS} cells (mean)",
        "de.auprc",
        ".3f",
        target=_auprc_target,
        target_text="≥ (within 0.005)",
    ),
    Metric("DE precision of the 5% FDR call", "de.precision", ".3f"),
    Metric("DE recall of the 5% FDR call", "de.recall", ".3f"),
    Metric(
        "DE false discovery proportion of the 5% FDR call (pooled)",
        "de.fdp_pooled",
        ".3f",
        target=_fdr_target,
        target_text="≤ 0.05",
    ),
    Metric("DE genes called (mean)", "de.n_called"),
    Metric("DE lfc_mean vs true LFC, Pearson r", "de.lfc_corr", ".3f"),
    Metric("DE CPU s per 25-vs-25 call", "de.cpu_s", ".2f", True),
    Metric("DE all cells: AUPRC", "de.all_auprc", ".3f"),
    Metric("DE all cells: precision / recall", "de.all_precision", ".3f"),
    Metric("DE all cells: genes called", "de.all_n_called", ".0f"),
    Metric("DE all cells: CPU s", "de.all_cpu_s", ".2f", True),
]


def _cell(s: dict[str, Any], p: str, key: str, fmt: str) -> str:
    value = _get(s, p, key)
    text = cell(value, fmt)
    if key == "de.all_precision":
        text += " / " + cell(_get(s, p, "de.all_recall"), fmt)
    if key.startswith("de.") and value is None and s[f"{p}.de"].get("status"):
        text = "skipped" if "skip" in str(s[f"{p}.de"]["status"]).lower() else "—"
    return text


def markdown_table(summaries: list[dict[str, Any]]) -> tuple[str, list[str]]:
    by_name = {s["dataset"]: s for s in summaries}
    names = [n for n in DATASETS if n in by_name]
    head = "| metric | " + " | ".join(f"{n}: sbi_vi | scvi-tools | ratio" for n in names)
    head += " | target | met (" + " / ".join(names) + ") |\n"
    head += "|---|" + "---:|---:|---:|" * len(names) + ":-:|:-:|"
    lines, missed = [head], []
    for label, key, fmt, as_ratio, target, target_text in METRICS:
        cells, marks, any_value = [], [], False
        for n in names:
            s = by_name[n]
            a, b = _get(s, "sbi_vi", key), _get(s, "scvi", key)
            any_value |= a is not None or b is not None
            r = ratio(a, b) if as_ratio else None
            cells.append(
                f"{_cell(s, 'sbi_vi', key, fmt)} | {_cell(s, 'scvi', key, fmt)} "
                f"| {cell(r, '.2f') if as_ratio else ''}"
            )
            flag = target(a, b, s) if target else None
            marks.append(mark(flag))
            if flag is False:
                missed.append(f"- {n}: {label}: sbi_vi {cell(a, fmt)}, scvi-tools {cell(b, fmt)}")
        if not any_value:
            continue
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {target_text} | "
            + (" / ".join(marks) if target else "")
            + " |"
        )
    return "\n".join(lines), missed


def runs_table(summaries: list[dict[str, Any]]) -> str:
    head = (
        "| data set | cells × genes (train / held out) | batches | mean library | epochs "
        "| package | run: seed, started (UTC), load 1 min, sbi_vi source |\n"
        "|---|---|---:|---:|---:|---|---|"
    )
    lines = [head]
    for s in summaries:
        for p in PACKAGES:
            run = s[f"{p}.run"]
            if run is None:
                err = "; ".join(e[:80] for e in s[f"{p}.errors"]) or "not run"
                lines.append(f"| {s['dataset']} | {err} ||||| {LABEL[p]} | |")
                continue
            lines.append(
                f"| {s['dataset']} | {run['n_cells']} × {run['n_genes']} "
                f"({run['n_train_cells']} / {run['n_heldout_cells']}) | {run['n_batches']} "
                f"| {cell(run.get('mean_library_size'), '.0f')} | {run['epochs']} | {LABEL[p]} "
                f"| seed {run['seed']}, {str(run['started'])[5:16].replace('T', ' ')}, "
                f"{cell(run.get('loadavg_1m'), '.2f')}, {run.get('sbi_vi_src_hash')} |"
            )
    return "\n".join(lines)


def _overlap_notes(summaries: list[dict[str, Any]]) -> list[str]:
    notes = []
    for s in summaries:
        a = s["sbi_vi.de"].get("all_top_genes")
        b = s["scvi.de"].get("all_top_genes")
        if a and b:
            notes.append(
                f"- {s['dataset']}: top-{TOP_GENES} genes by `proba_de` (all-cells comparison) "
                f"shared by the two packages: {len(set(a) & set(b))}"
            )
        for p in PACKAGES:
            status = s[f"{p}.de"].get("status")
            if status:
                notes.append(f"- {s['dataset']}: {LABEL[p]} DE: {str(status)[:200]}")
            for err in s[f"{p}.errors"] + (s[f"{p}.de"].get("errors") or []):
                notes.append(f"- {s['dataset']}: {LABEL[p]}: {err[:200]}")
            run = s[f"{p}.run"] or {}
            for key in ("marginal_ll_error", "expression_error"):
                if run.get(key):
                    notes.append(f"- {s['dataset']}: {LABEL[p]}: {run[key][:200]}")
    return notes


def build_block(args: argparse.Namespace) -> tuple[str, str]:
    path = harness.output_path(args, DEFAULT_OUTPUT, QUICK_OUTPUT)
    rows = harness.load_rows(path)
    summaries = summarise(rows, quick=args.quick)
    table, missed = markdown_table(summaries)
    runs = runs_table(summaries)
    notes = _overlap_notes(summaries)
    used = [s[f"{p}.run"] for s in summaries for p in PACKAGES if s[f"{p}.run"]]
    envs = sorted(
        {(r.get("device_name"), r.get("torch"), r.get("scvi_tools")) for r in used}, key=str
    )
    block = "\n".join(
        [
            TABLE_START,
            "",
            f"Built from `{os.path.relpath(path, harness.ROOT.parent)}` ({len(rows)} rows) "
            f"on {harness.now()}: "
            "the latest complete run of each package per data set (and its latest `--only de` "
            "row). Machines/versions: "
            + "; ".join(f"{d}, torch {t}, scvi-tools {v}" for d, t, v in envs)
            + ". Ratio = sbi_vi / scvi-tools (times: < 1 is faster; throughput: > 1 is "
            "faster). Each target is checked on every data set; DE accuracy needs the synthetic "
            "ground truth.",
            "",
            table,
            "",
            runs,
            "",
            "Targets missed:" if missed else "Every measured target is met.",
            "",
            *missed,
            "",
            *(["Notes:", ""] if notes else []),
            *notes,
            "",
            TABLE_END,
        ]
    )
    return re.sub(r"\n{3,}", "\n\n", block), table


def report(args: argparse.Namespace, write: bool) -> None:
    block, _ = build_block(args)
    print(block)
    if not write or args.quick:
        return  # smoke-test numbers are printed, never written into the README
    harness.replace_block(harness.README, TABLE_START, TABLE_END, block)


# ---------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_subset_option(parser, "--datasets", DATASETS)
    harness.add_subset_option(
        parser,
        "--packages",
        PACKAGES,
        help="which side(s) to run (default both; the order alternates per data set)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data, split and training")
    parser.add_argument("--n-cells", type=int, default=None, help="synthetic (10,000; 2,000)")
    parser.add_argument("--n-genes", type=int, default=None, help="synthetic (2,000; quick 400)")
    parser.add_argument("--n-de-genes", type=int, default=None, help="synthetic (200; quick 40)")
    parser.add_argument("--epochs-synthetic", type=int, default=None, help="80 (quick 5)")
    parser.add_argument("--epochs-pbmc", type=int, default=None, help="200 (quick 5)")
    parser.add_argument("--epochs-zinb", type=int, default=None, help="100 (quick 5)")
    parser.add_argument("--de-repeats", type=int, default=None, help="25-vs-25 DE (5; quick 2)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2,000 × 400 synthetic, 5 epochs, 2 DE repeats; rows go to "
        "singlecell_quick.jsonl",
    )
    parser.add_argument(
        "--only", choices=("de",), default=None, help="redo only DE, from the saved models"
    )
    parser.add_argument("--report", action="store_true", help="rebuild the README table")
    parser.add_argument("--print", action="store_true", help="print the table only")
    parser.add_argument("--output", default=None, help="JSONL file (default results/...)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "n_cells": (10_000, 2_000),
        "n_genes": (2_000, 400),
        "n_de_genes": (200, 40),
        "epochs_synthetic": (80, 5),
        "epochs_pbmc": (200, 5),
        "de_repeats": (5, 2),
    }
    for key, (full, small) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    return args


def main(argv: list[str] | None = None) -> None:
    harness.configure_logging()
    args = parse_args(argv)
    if args.report or args.print:
        report(args, write=args.report)
    elif args.only == "de":
        run_de_only(args)
    else:
        run_grid(args)


if __name__ == "__main__":
    main()
