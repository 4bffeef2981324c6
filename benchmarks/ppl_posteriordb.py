"""posteriordb-style multi-model table: ``sbi_vi.ppl`` SVI against pyro-ppl 1.9.2.

Six models (``ppl_posteriordb_models.py``: eight schools centered, Neal's funnel, a
flat-prior regression, AR(5), a latent Poisson GP, the badly conditioned 26-parameter
diamonds regression), each written once and run by both packages, so the log densities are
the same function (checked first: both log joints at 20 reference draws must agree to
float32 rounding). Per model and guide:

- **speed**: CPU (and wall) ms per step, blocks of steps alternating between the two
  packages in one process (the order flips every repeat), ``torch.set_num_threads(1)``,
  distribution validation off for both; the ratio is sbi_vi / Pyro of the median block;
- **accuracy**: each package fits from the same start (``init_to_feasible``, Adam, one
  particle, the same learning rate and number of steps), draws 1,000 times from its guide,
  and the draws' means and sds are compared with the reference draws:
  ``z = (mean_q - mean_ref) / sd_ref`` per coordinate (mean and max |z|) and the sd ratio
  ``sd_q / sd_ref``; for sbi_vi also PSIS k-hat and the same numbers for the
  importance-weighted summaries (``sample_posterior(importance_weighted=True)``).

Guides: ``AutoNormal``, ``AutoMultivariateNormal`` and a flow: sbi_vi's
``AutoFlow("maf", num_transforms=3, hidden_features=32)`` against Pyro's
``AutoIAFNormal(hidden_dim=[32, 32], num_transforms=3)`` (both affine autoregressive with
one-pass sampling; not the same parametrisation, so the flow row's ratio compares two
comparable flows, not one computation).

Usage (a venv with sbi_vi and pyro-ppl==1.9.2; a posteriordb checkout or git directory)::

    python benchmarks/ppl_posteriordb.py --posteriordb PATH   # results/ppl_posteriordb.jsonl
    python benchmarks/ppl_posteriordb.py --posteriordb PATH --quick
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ppl import _meta  # noqa: E402
from ppl_posteriordb_models import MODELS, OURS, Posterior, bind, load, pyro_backend  # noqa: E402

from sbi_vi.ppl import handlers  # noqa: E402
from sbi_vi.ppl.infer import (  # noqa: E402
    SVI,
    AutoFlow,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_feasible,
)

RESULTS = Path(__file__).resolve().parent / "results" / "ppl_posteriordb.jsonl"
GUIDES = ("normal", "mvn", "flow")
LR = {"normal": 1e-2, "mvn": 1e-2, "flow": 5e-3}


# --- the two packages ----------------------------------------------------------------------


class Ours:
    def __init__(self, post: Posterior, guide: str) -> None:
        self.post, self.model = post, bind(post, OURS)
        if guide == "normal":
            g = AutoNormal(self.model, init_loc_fn=init_to_feasible)
        elif guide == "mvn":
            g = AutoMultivariateNormal(self.model, init_loc_fn=init_to_feasible)
        else:
            g = AutoFlow(
                self.model,
                "maf",
                num_transforms=3,
                hidden_features=32,
                init_loc_fn=init_to_feasible,
            )
        self.svi = SVI(self.model, g, lr=LR[guide])
        self.svi.setup(*post.args)
        self.result: Any = None

    def steps(self, n: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.result = self.svi.run(
                n, *self.post.args, show_progress_bar=False, quality_control=False
            )

    def draws(self, n: int, *, weighted: bool = False) -> dict[str, Any]:
        out = self.result.sample_posterior(
            num_samples=n,
            return_sites=self.post.sites,
            return_samples=not weighted,
            importance_weighted=weighted,
            seed=11,
        )
        return out


def _pyro_feasible(site: dict) -> torch.Tensor:
    """Pyro's ``init_to_feasible`` without a draw (it fails on ``ImproperUniform``)."""
    from torch.distributions import transform_to

    fn = site["fn"]
    value = transform_to(fn.support)(torch.zeros(fn.batch_shape + fn.event_shape))
    value._pyro_custom_init = False
    return value


class Pyro:
    def __init__(self, post: Posterior, guide: str) -> None:
        import pyro
        from pyro.infer import SVI as PyroSVI
        from pyro.infer import Trace_ELBO
        from pyro.infer import autoguide as ag
        from pyro.optim import Adam

        self.pyro, self.post = pyro, post
        self.model = bind(post, pyro_backend())
        pyro.clear_param_store()  # Pyro's store is global: one Pyro fit alive at a time
        if guide == "normal":
            self.guide = ag.AutoNormal(self.model, init_loc_fn=_pyro_feasible)
        elif guide == "mvn":
            self.guide = ag.AutoMultivariateNormal(self.model, init_loc_fn=_pyro_feasible)
        else:
            from pyro.infer.autoguide.initialization import InitMessenger

            # its own init_to_feasible draws from the prior (ImproperUniform cannot)
            self.guide = ag.AutoIAFNormal(
                InitMessenger(_pyro_feasible)(self.model), hidden_dim=[32, 32], num_transforms=3
            )
        self.svi = PyroSVI(self.model, self.guide, Adam({"lr": LR[guide]}), Trace_ELBO())
        self.svi.step(*post.args)
        self.store = pyro.get_param_store().get_state()

    def steps(self, n: int) -> None:
        self.pyro.get_param_store().set_state(self.store)  # several Pyro fits interleave
        for _ in range(n):
            self.svi.step(*self.post.args)

    def draws(self, n: int) -> dict[str, Any]:
        """``n`` guide draws, each run through the model conditioned on it (for the
        deterministic sites); Pyro's ``Predictive`` draws unconditioned sites from their
        prior, which ``ImproperUniform`` refuses."""
        import pyro.poutine as poutine

        out: dict[str, list] = {k: [] for k in self.post.sites}
        with torch.no_grad():
            for _ in range(n):
                latents = self.guide(*self.post.args)
                tr = poutine.trace(poutine.condition(self.model, data=latents)).get_trace(
                    *self.post.args
                )
                for k in out:
                    out[k].append(tr.nodes[k]["value"])
        return {"posterior_samples": {k: torch.stack(v) for k, v in out.items()}}


# --- checks and scores ---------------------------------------------------------------------


def reference_values(post: Posterior, rows: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The latent values of reference draws (the GP's ``f_tilde = L⁻¹ f``)."""
    out = []
    for row in rows.float():
        vals: dict[str, torch.Tensor] = {}
        i = 0
        for name in post.sites:
            width = sum(1 for c in post.columns if c == name or c.startswith(name + "["))
            v = row[i : i + width]
            vals[name] = v[0] if width == 1 and name + "[1]" not in post.columns else v
            i += width
        if post.name == "gp_pois":
            sq = post.args[0]
            cov = vals["alpha"] ** 2 * torch.exp(-0.5 * sq / vals["rho"] ** 2)
            jitter = (1e-4 * vals["alpha"] ** 2 + 1e-6) * torch.eye(sq.shape[0])
            chol = torch.linalg.cholesky(cov + jitter)
            vals["f_tilde"] = torch.linalg.solve_triangular(
                chol, vals.pop("f")[:, None], upper=False
            ).squeeze(-1)
        out.append(vals)
    return out


def log_joint_gap(post: Posterior, n: int = 20) -> float:
    """Largest |log p_sbi_vi - log p_pyro| over ``n`` reference draws (relative)."""
    import pyro.poutine as poutine

    ours_model, pyro_model = bind(post, OURS), bind(post, pyro_backend())
    gap = 0.0
    for vals in reference_values(post, post.reference[:: len(post.reference) // n][:n]):
        a = handlers.trace(handlers.condition(ours_model, data=vals)).get_trace(*post.args)
        b = poutine.trace(poutine.condition(pyro_model, data=vals)).get_trace(*post.args)
        la, lb = float(a.log_prob_sum()), float(b.log_prob_sum())
        gap = max(gap, abs(la - lb) / max(1.0, abs(lb)))
    return gap


def scores(post: Posterior, columns: torch.Tensor) -> dict[str, float]:
    return moment_scores(post, columns.mean(0), columns.std(0))


def moment_scores(post: Posterior, mean: torch.Tensor, sd: torch.Tensor) -> dict[str, float]:
    ref = post.reference
    z = ((mean.double() - ref.mean(0)) / ref.std(0)).abs()
    ratio = sd.double() / ref.std(0)
    if not torch.isfinite(z).all():
        return dict.fromkeys(("mean_abs_z", "max_abs_z", "sd_ratio_min", "sd_ratio_max"), math.nan)
    return {
        "mean_abs_z": float(z.mean()),
        "max_abs_z": float(z.max()),
        "sd_ratio_min": float(ratio.min()),
        "sd_ratio_max": float(ratio.max()),
    }


def summary_columns(post: Posterior, summary: dict[str, Any], key: str) -> torch.Tensor:
    return post.to_columns(
        {k: torch.as_tensor(np.asarray(summary[key][k]))[None] for k in post.sites}
    )[0]


# --- runs ----------------------------------------------------------------------------------


def time_steps(post: Posterior, guide: str, repeats: int, block: int) -> dict:
    fits = {"sbi_vi": Ours(post, guide), "pyro": Pyro(post, guide)}
    for fit in fits.values():
        fit.steps(10)
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fits}
    for r in range(repeats):
        for impl in list(fits)[:: 1 if r % 2 == 0 else -1]:
            w0, c0 = time.perf_counter(), time.process_time()
            fits[impl].steps(block)
            times[impl]["wall"].append((time.perf_counter() - w0) / block * 1e3)
            times[impl]["cpu"].append((time.process_time() - c0) / block * 1e3)
    return times


def fit_accuracy(post: Posterior, guide: str, steps: int, n_draws: int) -> dict:
    out: dict[str, Any] = {}
    for impl, cls in (("sbi_vi", Ours), ("pyro", Pyro)):
        torch.manual_seed(3)
        fit = cls(post, guide)
        c0 = time.process_time()
        try:
            fit.steps(steps)
        except (RuntimeError, ValueError) as err:  # e.g. a Cholesky of a diverged GP fit
            out[impl] = {"error": f"{type(err).__name__}: {err}"[:200]}
            continue
        row: dict[str, Any] = {"train_cpu_s": time.process_time() - c0}
        samples = fit.draws(n_draws)["posterior_samples"]
        cols = post.to_columns({k: torch.as_tensor(v) for k, v in samples.items()})
        row.update(scores(post, cols))
        if impl == "sbi_vi":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                weighted = fit.draws(n_draws, weighted=True)
            row["khat"] = weighted.get("khat")
            row["weighting"] = weighted.get("weighting")
            row["weighted"] = moment_scores(
                post,
                summary_columns(post, weighted, "means"),
                summary_columns(post, weighted, "stds"),
            )
        out[impl] = row
    return out


def report(rows: list[dict]) -> str:
    head = (
        "| model | guide | CPU ms/step sbi_vi | CPU ms/step Pyro | ratio | mean/max abs z sbi_vi "
        "| mean/max abs z Pyro | sd ratio sbi_vi | sd ratio Pyro | k-hat | IW mean/max abs z |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        t, a = r["times"], r["accuracy"]
        ours, pyro = (statistics.median(t[k]["cpu"]) for k in ("sbi_vi", "pyro"))
        o, p = a["sbi_vi"], a["pyro"]
        if "error" in o or "error" in p:
            lines.append(
                f"| {r['model']} | {r['guide']} | {ours:.3f} | {pyro:.3f} | "
                f"{ours / pyro:.2f} | {o.get('error', '')} | {p.get('error', '')} |"
            )
            continue
        w = o.get("weighted", {})
        iw = (
            f"{w['mean_abs_z']:.2f} / {w['max_abs_z']:.2f}"
            if o.get("weighting") == "psis"
            else "not used"
        )
        kh = o.get("khat")
        lines.append(
            f"| {r['model']} | {r['guide']} | {ours:.3f} | {pyro:.3f} | {ours / pyro:.2f} | "
            f"{o['mean_abs_z']:.2f} / {o['max_abs_z']:.2f} | "
            f"{p['mean_abs_z']:.2f} / {p['max_abs_z']:.2f} | "
            f"{o['sd_ratio_min']:.2f}-{o['sd_ratio_max']:.2f} | "
            f"{p['sd_ratio_min']:.2f}-{p['sd_ratio_max']:.2f} | "
            f"{'-' if kh is None else f'{kh:.2f}'} | {iw} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posteriordb", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--guides", default=",".join(GUIDES))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--no-accuracy", action="store_true", help="timings only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.distributions.Distribution.set_default_validate_args(False)
    import pyro

    pyro.enable_validation(False)
    repeats = args.repeats or (2 if args.quick else 6)
    block = args.block or (20 if args.quick else 100)
    steps = args.steps or (200 if args.quick else 3000)
    n_draws = 500 if args.quick else 1000
    meta = _meta()
    rows = []
    for name in args.models.split(","):
        post = load(name, args.posteriordb)
        gap = log_joint_gap(post)
        print(f"{name}: log joint relative gap {gap:.2e}", flush=True)
        for guide in args.guides.split(","):
            times = time_steps(post, guide, repeats, block)
            acc = {} if args.no_accuracy else fit_accuracy(post, guide, steps, n_draws)
            row = {
                "kind": "posteriordb",
                "model": name,
                "guide": guide,
                "log_joint_gap": gap,
                "block": block,
                "repeats": repeats,
                "steps": steps,
                "lr": LR[guide],
                "times": times,
                "accuracy": acc,
                "loadavg_end": os.getloadavg()[0],
                **meta,
            }
            rows.append(row)
            cpu = {k: statistics.median(v["cpu"]) for k, v in times.items()}
            print(
                name,
                guide,
                {k: round(v, 3) for k, v in cpu.items()},
                round(cpu["sbi_vi"] / cpu["pyro"], 3),
                json.dumps(acc),
                flush=True,
            )
            if not args.quick:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                with args.output.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    if not args.no_accuracy:
        print(report(rows))


if __name__ == "__main__":
    main()
