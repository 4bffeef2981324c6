"""Side-by-side benchmark of the whole pipeline against ``sbi==0.27.0``.

Simulator → neural estimator (NLE with an NSF flow, or NRE-C with a residual classifier) →
VI (``q="nsf"``, ``vi_method="rKL"``) for observations 1–3, in both packages at their
defaults, in one process with alternating package order, one torch thread and one BLAS
thread. Each task is simulated once (10,000 simulations, fixed seed, with
``sbi_vi.simulate``); both packages train on those same ``theta``/``x`` tensors, with the
same prior bounds (sbi gets its own ``sbi.utils.BoxUniform``). Every finished run (one
package × task × method: one estimator and one VI per observation) is appended at once as
one JSON line to ``benchmarks/results/pipeline.jsonl``; ``--report`` rebuilds the table in
``benchmarks/README.md`` from that file.

Usage (from the repository root, in the benchmark venv)::

    .venv-bench/bin/python benchmarks/pipeline.py --quick             # smoke test, minutes
    .venv-bench/bin/python benchmarks/pipeline.py                     # the grid (about an hour+)
    .venv-bench/bin/python benchmarks/pipeline.py --tasks slcp --methods NRE --packages sbi
    .venv-bench/bin/python benchmarks/pipeline.py --c2st-missing      # C2ST left to do
    .venv-bench/bin/python benchmarks/pipeline.py --report            # table -> README.md

Per run it records the simulation seconds of the package's own simulation call (sbi_vi:
``simulate``; sbi: ``simulate_for_sbi`` with the same batch size, whose output is thrown
away), the wall and CPU seconds and epochs of the estimator's ``train()``, and per
observation the seconds of ``build_posterior`` + ``set_default_x(x_o).train()`` (quality
control included, and timed apart) and of ``posterior.sample((10_000,))``, PSIS k-hat of
those draws against the package's own potential, and C2ST against the reference posterior
(from the saved draws, in a low-priority worker, ``--c2st-max-samples`` rows of each set).
"""

from __future__ import annotations

import harness  # benchmarks/ is on sys.path when run as a script

harness.use_one_thread()  # torch, and the BLAS under numpy/scikit-learn: before they load

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from harness import cell, mark, mean, ratio  # noqa: E402  (table cells)
from torch import Tensor  # noqa: E402

DEFAULT_OUTPUT = harness.RESULTS / "pipeline.jsonl"
QUICK_OUTPUT = harness.RESULTS / "pipeline_quick.jsonl"
# q draws kept for the C2ST worker; `benchmarks/results/*.tmp` is gitignored.
SAMPLES_DIR = harness.RESULTS / "pipeline_samples.tmp"
TABLE_START, TABLE_END = harness.table_markers("pipeline")

TASKS = ("two_moons", "slcp")
METHODS = ("NLE", "NRE")
PACKAGES = ("sbi_vi", "sbi")
OBSERVATIONS = (1, 2, 3)
NUM_SIMULATIONS = 10_000
SIMULATION_BATCH_SIZE = 1000
DENSITY_ESTIMATOR = "nsf"  # NLE, both packages
CLASSIFIER = "resnet"  # NRE-C, both packages (sbi's default)
VI_Q = "nsf"
VI_METHOD = "rKL"

# Targets.
C2ST_MARGIN = 0.02
TIME_RATIO = 0.5

logger = logging.getLogger("pipeline_bench")


# ---------------------------------------------------------------------------- set-up


VERSIONS = {
    "sbi": "sbi",
    "sbi_vi": "sbi_vi",
    "zuko": "zuko",
    "nflows": "nflows",
    "sklearn": "scikit-learn",
}


# ---------------------------------------------------------------------------- data
class Problem:
    """One task: the shared simulations, the priors of both packages, the observations."""

    def __init__(self, name: str, args: argparse.Namespace):
        from sbi_vi.tasks import get_task

        self.name = name
        self.task = get_task(name)
        self.prior = self.task.prior
        self.sbi_prior = sbi_prior_like(self.prior)
        self.num_simulations = args.num_simulations
        self.seed = args.seed
        self.observations = {i: self.task.get_observation(i) for i in args.observations}
        self.simulate_info: dict[str, dict[str, Any]] = {}
        self.theta, self.x = self._simulate()

    def _simulate(self) -> tuple[Tensor, Tensor]:
        """Simulate once with ``sbi_vi.simulate`` (these are the data both packages get);
        time ``sbi.simulate_for_sbi`` on the same simulator and bounds (output unused)."""
        from sbi.inference import simulate_for_sbi

        from sbi_vi import simulate

        info: dict[str, Any] = {}
        timer = harness.Timer()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with timer.time():
                theta, x = simulate(
                    self.task.simulator,
                    self.prior,
                    self.num_simulations,
                    simulation_batch_size=SIMULATION_BATCH_SIZE,
                    seed=self.seed,
                    show_progress_bar=False,
                )
        info["simulate_wall_s"], info["simulate_cpu_s"] = timer.wall, timer.cpu
        info["simulate_warnings"] = harness.warning_list(caught)
        self.simulate_info["sbi_vi"] = info

        info, timer = {}, harness.Timer()
        with torch.random.fork_rng(devices=[]), timer.time():
            # simulate_for_sbi seeds every global generator: fork torch's, not to leak it.
            simulate_for_sbi(
                self.task.simulator,
                self.sbi_prior,
                self.num_simulations,
                simulation_batch_size=SIMULATION_BATCH_SIZE,
                seed=self.seed,
                show_progress_bar=False,
            )
        info["simulate_wall_s"], info["simulate_cpu_s"] = timer.wall, timer.cpu
        self.simulate_info["sbi"] = info
        digest = hashlib.sha1(theta.numpy().tobytes() + x.numpy().tobytes()).hexdigest()[:12]
        self.data_hash = digest
        self.num_valid = int(x.shape[0])
        return theta, x


def sbi_prior_like(prior: Any) -> Any:
    """sbi's ``BoxUniform`` with the bounds of the task's (sbi_vi) ``BoxUniform``; any other
    torch ``Distribution`` (e.g. gaussian_linear's Gaussian) as it is, which sbi accepts."""
    from sbi.utils import BoxUniform as SbiBoxUniform

    from sbi_vi.priors import BoxUniform

    if isinstance(prior, BoxUniform):
        return SbiBoxUniform(prior.low.clone(), prior.high.clone())
    if isinstance(prior, torch.distributions.Distribution):
        return prior
    raise TypeError(f"No sbi equivalent known for prior {prior!r}.")


# ---------------------------------------------------------------------------- one run
def make_estimator(package: str, method: str, prior: Any) -> Any:
    """The estimator at its defaults (NLE: ``density_estimator="nsf"``; NRE-C: resnet)."""
    if package == "sbi_vi":
        from sbi_vi.estimators import NLE, NRE_C

        if method == "NLE":
            return NLE(prior, density_estimator=DENSITY_ESTIMATOR, show_progress_bars=False)
        return NRE_C(prior, classifier=CLASSIFIER, show_progress_bars=False)
    from sbi.inference import NLE as SbiNLE
    from sbi.inference import NRE_C as SbiNRE_C

    if method == "NLE":
        return SbiNLE(prior=prior, density_estimator=DENSITY_ESTIMATOR, show_progress_bars=False)
    return SbiNRE_C(prior=prior, classifier=CLASSIFIER, show_progress_bars=False)


def train_estimator(
    package: str,
    problem: Problem,
    method: str,
    train_kwargs: dict,
    timeout: float | None,
    theta: Tensor | None = None,
    x: Tensor | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build the estimator, append the shared simulations, time ``train()``."""
    prior = problem.prior if package == "sbi_vi" else problem.sbi_prior
    theta = problem.theta if theta is None else theta
    x = problem.x if x is None else x
    info: dict[str, Any] = {}
    timer = harness.Timer()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), harness.time_limit(timeout, f"{method}.train()"):
        with timer.time():
            inference = make_estimator(package, method, prior)
            inference.append_simulations(theta.clone(), x.clone())
            inference.train(**train_kwargs)
    info["estimator_wall_s"], info["estimator_cpu_s"] = timer.wall, timer.cpu
    summary = inference.summary
    info["epochs"] = int(summary["epochs_trained"][-1])
    info["best_validation_loss"] = float(summary["best_validation_loss"][-1])
    durations = summary.get("epoch_durations_sec") or []
    info["epoch_wall_s_median"] = statistics.median(durations) if durations else None
    info["estimator_stdout"] = stdout.getvalue().strip()[-600:] or None
    return inference, info


def train_vi(
    package: str,
    inference: Any,
    x_o: Tensor,
    vi_kwargs: dict,
    timeout: float | None,
) -> tuple[Any, dict[str, Any]]:
    """``build_posterior(sample_with="vi", ...)`` then ``set_default_x(x_o).train()``."""
    info: dict[str, Any] = {}
    build, train, qc = harness.Timer(), harness.Timer(), harness.Timer()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), harness.time_limit(timeout, "VI train()"):
        with build.time():
            posterior = inference.build_posterior(
                sample_with="vi", vi_method=VI_METHOD, vi_parameters={"q": VI_Q}
            )
        # Time the quality-control part of train() without a second training.
        if package == "sbi_vi":
            if hasattr(posterior, "_quality_control"):
                posterior._quality_control = qc.wrap(posterior._quality_control)
        else:
            posterior.evaluate = qc.wrap(posterior.evaluate)  # sbi's QC calls self.evaluate
        with train.time():
            posterior.set_default_x(x_o)
            posterior.train(show_progress_bar=False, **vi_kwargs)
    info["vi_build_wall_s"], info["vi_build_cpu_s"] = build.wall, build.cpu
    info["vi_train_wall_s"], info["vi_train_cpu_s"] = train.wall, train.cpu
    info["vi_wall_s"] = build.wall + train.wall
    info["vi_cpu_s"] = build.cpu + train.cpu
    info["qc_wall_s"] = qc.wall if qc.calls else None
    info["qc_cpu_s"] = qc.cpu if qc.calls else None
    printed = stdout.getvalue().strip()
    info["vi_stdout"] = printed[-600:] or None
    if package == "sbi_vi":
        last = posterior.history[-1]
        info["vi_iters"] = int(last.num_iters)
        info["vi_converged"] = bool(last.converged)
    else:
        info["vi_iters"] = int(posterior._optimizer.num_step)
        info["qc_retrained"] = "automatically retraining" in printed
    return posterior, info


def sample_and_khat(
    package: str, posterior: Any, x_o: Tensor, num_samples: int
) -> tuple[Tensor, dict[str, Any]]:
    """Time ``posterior.sample``; PSIS k-hat of the draws against the package's potential."""
    from sbi_vi.diagnostics import psis

    info: dict[str, Any] = {}
    timer = harness.Timer()
    with timer.time():
        theta = posterior.sample((num_samples,), show_progress_bars=False)
    info["sample_wall_s"], info["sample_cpu_s"] = timer.wall, timer.cpu
    theta = theta.detach()
    info["num_nonfinite_samples"] = int((~torch.isfinite(theta).all(-1)).sum())
    try:
        with torch.no_grad():
            log_q = posterior.q.log_prob(theta)
            if package == "sbi_vi":
                # potential_fn directly: posterior.potential() rejects θ on the support's edge.
                posterior.potential_fn.set_x(x_o.reshape(1, -1))
                log_p = posterior.potential_fn(theta, track_gradients=False)
            else:
                log_p = posterior.potential(theta)
        log_w = (log_p - log_q).reshape(-1)
        info["num_nonfinite_log_w"] = int((~torch.isfinite(log_w)).sum())
        result = psis(log_w.cpu())
        info["khat"] = float(result.khat)
        info["ess"] = float(result.ess)
    except Exception as err:
        info["khat"] = None
        info["khat_error"] = f"{type(err).__name__}: {err}"[:500]
    return theta.cpu(), info


def train_kwargs_for(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Estimator and VI ``train()`` arguments: defaults, or few epochs/iterations in --quick."""
    if args.quick:
        return {"max_num_epochs": 5}, {"max_num_iters": 30, "warm_up_rounds": 10}
    return {}, {}


def run_one(
    package: str,
    problem: Problem,
    method: str,
    order: int,
    args: argparse.Namespace,
    env: dict[str, Any],
    runner: harness.C2STRunner,
) -> dict[str, Any]:
    """One package × task × method: estimator once, then VI and sampling per observation."""
    est_kwargs, vi_kwargs = train_kwargs_for(args)
    row: dict[str, Any] = {
        "kind": "run",
        "package": package,
        "task": problem.name,
        "method": method,
        "density_estimator": DENSITY_ESTIMATOR if method == "NLE" else CLASSIFIER,
        "q": VI_Q,
        "vi_method": VI_METHOD,
        "order": order,
        "seed": args.seed,
        "quick": bool(args.quick),
        "num_simulations": problem.num_simulations,
        "num_valid_simulations": problem.num_valid,
        "data_hash": problem.data_hash,
        "observations": list(args.observations),
        "num_samples": args.num_samples,
        "c2st_max_samples": args.c2st_max_samples,
        "estimator_kwargs": est_kwargs,
        "vi_kwargs": vi_kwargs,
        "timeout_s": args.timeout,
        "started": harness.now(),
        "loadavg_1m": harness.load_average(),
        **problem.simulate_info[package],
    }
    row["run_id"] = (
        f"{problem.name}-{method}-{package}-{row['started'][:19].replace(':', '')}-{os.getpid()}"
    )
    per_obs: list[dict[str, Any]] = []
    row["per_observation"] = per_obs
    with harness.logged_warnings("sbi_vi", "sbi") as collect:
        try:
            torch.manual_seed(args.seed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    inference, info = train_estimator(
                        package, problem, method, est_kwargs, args.timeout
                    )
                    row.update(info)
                    row["error"] = None
                except Exception as err:
                    row.update(harness.error_fields(err))
                    if row.get("timed_out"):
                        row["estimator_wall_s"] = float(args.timeout)
                    inference = None
            row["estimator_warnings"] = harness.warning_list(caught)
            logger.info(
                "%-9s %-3s %-6s estimator %s", problem.name, method, package, _brief_est(row)
            )
            if inference is None:
                return row
            for obs, x_o in problem.observations.items():
                o: dict[str, Any] = {"num_observation": obs, "loadavg_1m": harness.load_average()}
                per_obs.append(o)
                theta = None
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        torch.manual_seed(args.seed + obs)
                        posterior, info = train_vi(
                            package, inference, x_o, vi_kwargs, args.timeout
                        )
                        o.update(info)
                        torch.manual_seed(args.seed + 100 + obs)
                        theta, info = sample_and_khat(package, posterior, x_o, args.num_samples)
                        o.update(info)
                        o["error"] = None
                    except Exception as err:
                        o.update(harness.error_fields(err))
                o["warnings"] = harness.warning_list(caught)
                o["sample_id"] = f"{row['run_id']}-o{obs}"
                logger.info(
                    "%-9s %-3s %-6s obs %d %s", problem.name, method, package, obs, _brief_obs(o)
                )
                if theta is not None:
                    runner.submit(
                        {"sample_id": o["sample_id"], "num_observation": obs},
                        o["sample_id"],
                        problem.name,
                        obs,
                        theta,
                        args.c2st_max_samples,
                        args.seed,
                    )
            ok = [o for o in per_obs if not o.get("error")]
            if len(ok) == len(per_obs):
                for field in ("wall", "cpu"):
                    row[f"vi_total_{field}_s"] = sum(o[f"vi_{field}_s"] for o in ok)
                    row[f"sample_total_{field}_s"] = sum(o[f"sample_{field}_s"] for o in ok)
                    row[f"total_{field}_s"] = (
                        row[f"simulate_{field}_s"]
                        + row[f"estimator_{field}_s"]
                        + row[f"vi_total_{field}_s"]
                        + row[f"sample_total_{field}_s"]
                    )
            row["num_observations_ok"] = len(ok)
        finally:
            row["log_warnings"] = sorted(set(collect.messages)) or None
            row["finished"] = harness.now()
            row.update(env)
    return row


def _brief_est(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"ERROR {row['error'][:160]}"
    return (
        f"{cell(row.get('estimator_cpu_s'))} cpu-s / {cell(row.get('estimator_wall_s'))} s, "
        f"{row.get('epochs')} epochs"
    )


def _brief_obs(o: dict[str, Any]) -> str:
    if o.get("error"):
        return f"ERROR {o['error'][:160]}"
    return (
        f"VI {cell(o.get('vi_cpu_s'), '.1f')} cpu-s / {cell(o.get('vi_wall_s'), '.1f')} s "
        f"(qc {cell(o.get('qc_cpu_s'), '.1f')}), {o.get('vi_iters')} it, sample "
        f"{cell(o.get('sample_wall_s'), '.2f')} s, khat {cell(o.get('khat'), '.2f')}"
    )


def warm_up(problem: Problem, methods: list[str], packages: list[str]) -> None:
    """Run each package once on a few simulations, untimed: lazy imports and first calls."""
    from sbi_vi.diagnostics import psis

    psis(torch.randn(100))
    x_o = next(iter(problem.observations.values()))
    for package in packages:
        for method in methods:
            with harness.silenced():
                torch.manual_seed(0)
                inference, _ = train_estimator(
                    package,
                    problem,
                    method,
                    {"max_num_epochs": 1},
                    None,
                    problem.theta[:400],
                    problem.x[:400],
                )
                posterior, _ = train_vi(
                    package,
                    inference,
                    x_o,
                    {"max_num_iters": 5, "warm_up_rounds": 2, "quality_control": False},
                    None,
                )
                sample_and_khat(package, posterior, x_o, 100)


# ---------------------------------------------------------------------------- C2ST


def c2st_missing(args: argparse.Namespace) -> None:
    """Compute C2ST (in this process) for finished observations that have none yet."""
    output = harness.output_path(args, DEFAULT_OUTPUT, QUICK_OUTPUT)
    done = {
        r["sample_id"]
        for r in harness.load_rows(harness.c2st_output_for(output))
        if "sample_id" in r
    }
    for row in harness.load_rows(output):
        if row.get("task") not in args.tasks:
            continue
        for o in row.get("per_observation") or []:
            path = SAMPLES_DIR / f"{o.get('sample_id')}.pt"
            if o.get("error") or o.get("sample_id") in done or not path.exists():
                continue
            harness.log_c2st(
                harness.c2st_job(
                    {"sample_id": o["sample_id"], "num_observation": o["num_observation"]},
                    row["task"],
                    o["num_observation"],
                    str(path),
                    args.c2st_max_samples,
                    row["seed"],
                    str(harness.c2st_output_for(output)),
                )
            )


# ---------------------------------------------------------------------------- grid
def run_grid(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    output = harness.output_path(args, DEFAULT_OUTPUT, QUICK_OUTPUT)
    env = harness.run_environment(VERSIONS)
    harness.log_start(env, output)
    runner = harness.C2STRunner(args.c2st, output, SAMPLES_DIR)
    config = 0
    try:
        for i, task_name in enumerate(args.tasks):
            problem = Problem(task_name, args)
            logger.info(
                "%s: %d simulations (data %s); simulate %.2f s (sbi_vi), "
                "simulate_for_sbi %.2f s (sbi)",
                task_name,
                problem.num_valid,
                problem.data_hash,
                problem.simulate_info["sbi_vi"]["simulate_wall_s"],
                problem.simulate_info["sbi"]["simulate_wall_s"],
            )
            if i == 0:
                warm_up(problem, args.methods, args.packages)
            for method in args.methods:
                # Alternate which package goes first from one configuration to the next.
                order = args.packages if config % 2 == 0 else args.packages[::-1]
                config += 1
                for position, package in enumerate(order):
                    row = run_one(package, problem, method, position, args, env, runner)
                    harness.write_row(output, row)
                    logger.info(
                        "%-9s %-3s %-6s done: total %s cpu-s / %s s",
                        task_name,
                        method,
                        package,
                        cell(row.get("total_cpu_s"), ".1f"),
                        cell(row.get("total_wall_s"), ".1f"),
                    )
    finally:
        runner.close()


# ---------------------------------------------------------------------------- report


def merged_rows(path: Path) -> list[dict[str, Any]]:
    """Run rows with the C2ST of each observation (from ``*_c2st.jsonl``) filled in."""
    c2st_rows = harness.latest_by(
        (r for r in harness.load_rows(harness.c2st_output_for(path)) if "sample_id" in r),
        lambda r: r["sample_id"],
    )
    rows = harness.load_rows(path)
    for row in rows:
        harness.merge_c2st(row.get("per_observation") or [], c2st_rows)
    return rows


def summarise(rows: list[dict[str, Any]], quick: bool = False) -> list[dict[str, Any]]:
    """One summary per (task, method); the latest complete run of each package counts."""
    groups: dict[tuple[str, str], dict[str, list]] = {}
    for row in rows:
        if bool(row.get("quick")) != quick or row.get("kind") != "run":
            continue
        groups.setdefault((row["task"], row["method"]), {p: [] for p in PACKAGES})
        groups[(row["task"], row["method"])].setdefault(row["package"], []).append(row)
    torder = {name: i for i, name in enumerate(TASKS)}
    morder = {name: i for i, name in enumerate(METHODS)}
    summaries = []
    for key in sorted(groups, key=lambda k: (torder.get(k[0], 99), morder.get(k[1], 99))):
        task, method = key
        s: dict[str, Any] = {"task": task, "method": method}
        for p in PACKAGES:
            runs = groups[key].get(p, [])
            complete = [r for r in runs if not r.get("error") and r.get("total_cpu_s")]
            partial = [r for r in runs if not r.get("error")]
            run = (complete or partial or [None])[-1]
            s[f"{p}.run"] = run
            s[f"{p}.complete"] = bool(complete)
            s[f"{p}.seed"] = (run or {}).get("seed")
            s[f"{p}.errors"] = [r["error"] for r in runs if r.get("error")] + [
                f"obs {o['num_observation']}: {o['error']}"
                for r in ([run] if run else [])
                for o in r.get("per_observation") or []
                if o.get("error")
            ]
            obs = [o for o in (run or {}).get("per_observation", []) if not o.get("error")]
            s[f"{p}.num_obs"] = len(obs)
            s[f"{p}.c2st_n"] = sum(1 for o in obs if o.get("c2st") is not None)
            s[f"{p}.c2st"] = mean([o.get("c2st") for o in obs])
            s[f"{p}.c2st_each"] = [o.get("c2st") for o in obs]
            khats = [o.get("khat") for o in obs]
            s[f"{p}.khat"] = mean([k for k in khats if k is not None and math.isfinite(k)])
            s[f"{p}.khat_each"] = khats
            s[f"{p}.vi_iters_each"] = [o.get("vi_iters") for o in obs]
            for field in (
                "simulate_wall_s",
                "simulate_cpu_s",
                "estimator_wall_s",
                "estimator_cpu_s",
                "epochs",
                "vi_total_wall_s",
                "vi_total_cpu_s",
                "sample_total_wall_s",
                "sample_total_cpu_s",
                "total_wall_s",
                "total_cpu_s",
            ):
                s[f"{p}.{field}"] = (run or {}).get(field)
            s[f"{p}.vi_cpu_mean"] = mean([o.get("vi_cpu_s") for o in obs])
            s[f"{p}.vi_wall_mean"] = mean([o.get("vi_wall_s") for o in obs])
            s[f"{p}.qc_cpu_mean"] = mean([o.get("qc_cpu_s") for o in obs])
            s[f"{p}.sample_wall_mean"] = mean([o.get("sample_wall_s") for o in obs])
        for field in ("total_cpu_s", "total_wall_s", "estimator_cpu_s", "vi_total_cpu_s"):
            s[f"ratio_{field}"] = ratio(s[f"sbi_vi.{field}"], s[f"sbi.{field}"])
        c_vi, c_sbi = s["sbi_vi.c2st"], s["sbi.c2st"]
        s["target_c2st"] = None if c_vi is None or c_sbi is None else c_vi <= c_sbi + C2ST_MARGIN
        r = s["ratio_total_cpu_s"]
        s["target_time"] = None if r is None else r <= TIME_RATIO
        summaries.append(s)
    return summaries


def _pair(s: dict[str, Any], field: str, fmt: str = ".0f") -> str:
    return f"{cell(s[f'sbi_vi.{field}'], fmt)} / {cell(s[f'sbi.{field}'], fmt)}"


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    head = (
        "| task | method | estimator CPU s | epochs | VI CPU s (all obs) | total CPU s "
        "| total wall s | ratio CPU estimator / VI | ratio CPU total | ratio wall total "
        "| C2ST sbi_vi | C2ST sbi | k̂ sbi_vi | k̂ sbi | C2ST target | time target |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|:-:|"
    )
    lines = [head]
    for s in summaries:
        lines.append(
            f"| {s['task']} | {s['method']} | {_pair(s, 'estimator_cpu_s')} "
            f"| {_pair(s, 'epochs')} | {_pair(s, 'vi_total_cpu_s')} "
            f"| {_pair(s, 'total_cpu_s')} | {_pair(s, 'total_wall_s')} "
            f"| {cell(s['ratio_estimator_cpu_s'], '.2f')} "
            f"/ {cell(s['ratio_vi_total_cpu_s'], '.2f')} "
            f"| {cell(s['ratio_total_cpu_s'], '.2f')} | {cell(s['ratio_total_wall_s'], '.2f')} "
            f"| {cell(s['sbi_vi.c2st'], '.3f')} | {cell(s['sbi.c2st'], '.3f')} "
            f"| {cell(s['sbi_vi.khat'], '.2f')} | {cell(s['sbi.khat'], '.2f')} "
            f"| {mark(s['target_c2st'])} | {mark(s['target_time'])} |"
        )
    return "\n".join(lines)


def phase_table(summaries: list[dict[str, Any]]) -> str:
    """Per package and phase: CPU / wall seconds, and the per-observation numbers."""
    head = (
        "| task | method | package | simulate s | estimator CPU / wall s (epochs) "
        "| VI CPU / wall s per obs (QC CPU, mean) | VI iters per obs | sample wall s per obs "
        "| C2ST per obs | k̂ per obs | run: seed, started (UTC), sbi_vi source |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]

    def each(values: list, fmt: str) -> str:
        return ", ".join(cell(v, fmt) for v in values) or "—"

    for s in summaries:
        for p in PACKAGES:
            run = s[f"{p}.run"]
            if run is None:
                err = "; ".join(e[:80] for e in s[f"{p}.errors"]) or "not run"
                lines.append(f"| {s['task']} | {s['method']} | {p} | {err} |||||||| ")
                continue
            obs = [o for o in run.get("per_observation", []) if not o.get("error")]
            vi = ", ".join(f"{cell(o.get('vi_cpu_s'))} / {cell(o.get('vi_wall_s'))}" for o in obs)
            lines.append(
                f"| {s['task']} | {s['method']} | {p} | {cell(s[f'{p}.simulate_wall_s'], '.2f')} "
                f"| {cell(s[f'{p}.estimator_cpu_s'])} / {cell(s[f'{p}.estimator_wall_s'])} "
                f"({cell(s[f'{p}.epochs'], '.0f')}) "
                f"| {vi or '—'} ({cell(s[f'{p}.qc_cpu_mean'])}) "
                f"| {each(s[f'{p}.vi_iters_each'], 'd')} "
                f"| {each([o.get('sample_wall_s') for o in obs], '.2f')} "
                f"| {each(s[f'{p}.c2st_each'], '.3f')} | {each(s[f'{p}.khat_each'], '.2f')} "
                f"| {_run_label(run)} |"
            )
    return "\n".join(lines)


def _run_label(run: dict[str, Any]) -> str:
    """``seed N, MM-DD HH:MM, <source hash>`` of a run row."""
    started = str(run.get("started") or "")[5:16].replace("T", " ")
    return f"seed {run.get('seed')}, {started or '—'}, {run.get('sbi_vi_src_hash') or '—'}"


def seed_summaries(rows: list[dict[str, Any]], quick: bool = False) -> list[dict[str, Any]]:
    """Per task × method run with more than one seed: the latest complete run of each
    package per seed, and the means over those seeds."""
    by_seed: dict[tuple[str, str], dict[Any, dict[str, dict]]] = {}
    for row in rows:
        if bool(row.get("quick")) != quick or row.get("kind") != "run":
            continue
        if row.get("error") or not row.get("total_cpu_s"):
            continue
        key = (row["task"], row["method"])
        by_seed.setdefault(key, {}).setdefault(row.get("seed"), {})[row["package"]] = row
    torder = {name: i for i, name in enumerate(TASKS)}
    morder = {name: i for i, name in enumerate(METHODS)}
    out = []
    for key in sorted(by_seed, key=lambda k: (torder.get(k[0], 99), morder.get(k[1], 99))):
        seeds = {
            seed: runs
            for seed, runs in sorted(by_seed[key].items(), key=lambda kv: str(kv[0]))
            if all(p in runs for p in PACKAGES)
        }
        if len(seeds) < 2:
            continue
        per_seed = []
        for seed, runs in seeds.items():
            entry: dict[str, Any] = {"seed": seed}
            for p in PACKAGES:
                obs = [o for o in runs[p].get("per_observation", []) if not o.get("error")]
                entry[f"{p}.c2st"] = mean([o.get("c2st") for o in obs])
                entry[f"{p}.epochs"] = runs[p].get("epochs")
                entry[f"{p}.total_cpu_s"] = runs[p].get("total_cpu_s")
                entry[f"{p}.run"] = runs[p]
            entry["ratio"] = ratio(entry["sbi_vi.total_cpu_s"], entry["sbi.total_cpu_s"])
            per_seed.append(entry)
        means = {
            f: mean([e[f] for e in per_seed])
            for f in ("sbi_vi.c2st", "sbi.c2st", "sbi_vi.epochs", "sbi.epochs", "ratio")
        }
        c_vi, c_sbi = means["sbi_vi.c2st"], means["sbi.c2st"]
        means["target_c2st"] = (
            None if c_vi is None or c_sbi is None else c_vi <= c_sbi + C2ST_MARGIN
        )
        out.append({"task": key[0], "method": key[1], "seeds": per_seed, "mean": means})
    return out


def seed_table(seed_rows: list[dict[str, Any]]) -> str:
    head = (
        "| task | method | seed | C2ST sbi_vi | C2ST sbi | epochs sbi_vi / sbi "
        "| ratio CPU total | C2ST target | runs (sbi_vi; sbi) |\n"
        "|---|---|---|---:|---:|---:|---:|:-:|---|"
    )
    lines = [head]
    for g in seed_rows:
        for e in g["seeds"]:
            lines.append(
                f"| {g['task']} | {g['method']} | {e['seed']} | {cell(e['sbi_vi.c2st'], '.3f')} "
                f"| {cell(e['sbi.c2st'], '.3f')} "
                f"| {cell(e['sbi_vi.epochs'], '.0f')} / {cell(e['sbi.epochs'], '.0f')} "
                f"| {cell(e['ratio'], '.2f')} | "
                f"| {_run_label(e['sbi_vi.run'])}; {_run_label(e['sbi.run'])} |"
            )
        m = g["mean"]
        lines.append(
            f"| {g['task']} | {g['method']} | **mean of {len(g['seeds'])}** "
            f"| {cell(m['sbi_vi.c2st'], '.3f')} | {cell(m['sbi.c2st'], '.3f')} "
            f"| {cell(m['sbi_vi.epochs'], '.0f')} / {cell(m['sbi.epochs'], '.0f')} "
            f"| {cell(m['ratio'], '.2f')} | {mark(m['target_c2st'])} | |"
        )
    return "\n".join(lines)


def misses(summaries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    out, notes = [], []
    for s in summaries:
        name = f"{s['task']} / {s['method']}"
        reasons = []
        if s["target_c2st"] is False:
            reasons.append(f"C2ST {s['sbi_vi.c2st']:.3f} > sbi's {s['sbi.c2st']:.3f} + 0.02")
        if s["target_time"] is False:
            reasons.append(f"CPU time ratio {s['ratio_total_cpu_s']:.2f} > {TIME_RATIO}")
        if reasons:
            out.append(f"- {name}: " + "; ".join(reasons))
        for p in PACKAGES:
            for err in s[f"{p}.errors"]:
                notes.append(f"- {name}: {p}: {err[:200]}")
            if s[f"{p}.run"] is not None and s[f"{p}.c2st_n"] < s[f"{p}.num_obs"]:
                notes.append(
                    f"- {name}: {p}: C2ST for {s[f'{p}.c2st_n']} of {s[f'{p}.num_obs']} "
                    "observations so far (`--c2st-missing`)"
                )
    return out, notes


def report(args: argparse.Namespace) -> None:
    path = harness.output_path(args, DEFAULT_OUTPUT, QUICK_OUTPUT)
    rows = merged_rows(path)
    summaries = summarise(rows, quick=args.quick)
    seed_rows = seed_summaries(rows, quick=args.quick)
    every = [r for r in rows if bool(r.get("quick")) == bool(args.quick)]
    used_ids = {
        id(s[f"{p}.run"]) for s in summaries for p in PACKAGES if s[f"{p}.run"] is not None
    }
    used_ids |= {id(e[f"{p}.run"]) for g in seed_rows for e in g["seeds"] for p in PACKAGES}
    used = [r for r in every if id(r) in used_ids]
    envs = {(r.get("device_name"), r.get("torch"), r.get("sbi")) for r in used}
    commits = sorted({f"{r.get('git_commit')}/{r.get('sbi_vi_src_hash')}" for r in used})
    table = markdown_table(summaries)
    phases = phase_table(summaries)
    seeds = seed_table(seed_rows) if seed_rows else ""
    missed, notes = misses(summaries)
    for g in seed_rows:
        m = g["mean"]
        if m["target_c2st"] is False:
            missed.append(
                f"- {g['task']} / {g['method']} (mean of {len(g['seeds'])} seeds): C2ST "
                f"{m['sbi_vi.c2st']:.3f} > sbi's {m['sbi.c2st']:.3f} + {C2ST_MARGIN}"
            )
    complete = sum(1 for s in summaries if s["sbi_vi.complete"] and s["sbi.complete"])
    c2st_n = {r.get("c2st_max_samples") for r in used}
    block = "\n".join(
        [
            TABLE_START,
            "",
            f"Rows: {complete} task × method pairs with both packages finished, "
            f"{len(summaries)} started; built from `{os.path.relpath(path, harness.ROOT.parent)}` "
            f"({len(every)} runs, {len(used)} of them shown) on {harness.now()}. "
            "Each row shows the latest complete run of each package for that task × method, "
            "whatever its seed "
            "(the `run` column of the per-phase table names it); rows run with more than one "
            "seed also get the latest run per seed and their mean, below. Machines/versions "
            "of the runs shown: "
            + "; ".join(f"{d}, torch {t}, sbi {s}" for d, t, s in sorted(envs, key=str))
            + f"; sbi_vi commit/source hash {', '.join(commits) or '—'}; "
            f"C2ST on {', '.join(str(n) for n in sorted(c2st_n, key=str))} draws of each set.",
            "",
            "Summary (sbi_vi / sbi; VI and C2ST/k̂ over observations "
            f"{', '.join(str(i) for i in args.observations)}; ratio = sbi_vi / sbi of the "
            "total):",
            "",
            table,
            "",
            "Per phase:",
            "",
            phases,
            "",
            *(
                [
                    "Over seeds (the latest complete run of each package per seed; C2ST is "
                    "the mean over the observations of that run; the target is checked on the "
                    "mean over seeds):",
                    "",
                    seeds,
                    "",
                ]
                if seeds
                else []
            ),
            "Rows missing a target:" if missed else "Every finished row meets its targets.",
            "",
            *missed,
            "",
            *(["Errors, timeouts and missing C2ST:", ""] if notes else []),
            *notes,
            "",
            TABLE_END,
        ]
    )
    print(table)
    print()
    print(phases)
    print()
    if seeds:
        print(seeds)
        print()
    print("\n".join(missed + notes))
    if args.quick:
        return  # smoke-test numbers are printed, never written into the README
    block = re.sub(r"\n{3,}", "\n\n", block)  # no double blank lines
    harness.replace_block(harness.README, TABLE_START, TABLE_END, block)


# ---------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_subset_option(parser, "--tasks", TASKS)
    harness.add_subset_option(parser, "--methods", METHODS)
    harness.add_subset_option(
        parser,
        "--packages",
        PACKAGES,
        help="which side(s) to run (default both; the order alternates per task × method)",
    )
    parser.add_argument(
        "--observations",
        type=harness.int_list(1, 10),
        default=None,
        help="comma-separated observation numbers (default 1,2,3; quick: 1)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of simulation and training")
    parser.add_argument(
        "--num-simulations", type=int, default=None, help="default 10,000 (quick: 1,000)"
    )
    parser.add_argument(
        "--num-samples", type=int, default=None, help="draws of q (default 10,000; quick 1,000)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="wall seconds one train() (estimator or VI) may take before it is recorded as "
        "timed out (default 1800; 0 = none)",
    )
    parser.add_argument(
        "--c2st-max-samples",
        type=int,
        default=None,
        help="rows of each set used by C2ST (default 5,000; quick 500)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1,000 simulations, 5 epochs, 30 VI iterations, observation 1; rows "
        "go to pipeline_quick.jsonl",
    )
    harness.add_c2st_options(parser)
    parser.add_argument(
        "--report",
        action="store_true",
        help="rebuild the README table (with --quick: print the smoke-test table only)",
    )
    parser.add_argument("--output", default=None, help="JSONL file (default results/...)")
    args = parser.parse_args(argv)
    if args.observations is None:
        args.observations = [1] if args.quick else list(OBSERVATIONS)
    if args.num_simulations is None:
        args.num_simulations = 1000 if args.quick else NUM_SIMULATIONS
    if args.num_samples is None:
        args.num_samples = 1000 if args.quick else 10_000
    if args.c2st_max_samples is None:
        args.c2st_max_samples = 500 if args.quick else 5000
    return args


def main(argv: list[str] | None = None) -> None:
    harness.configure_logging()
    args = parse_args(argv)
    if args.report:
        report(args)
    elif args.c2st_missing:
        c2st_missing(args)
    else:
        run_grid(args)


if __name__ == "__main__":
    main()
