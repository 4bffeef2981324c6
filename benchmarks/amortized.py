"""Amortised VI (``train_amortized``) of sbi_vi against ``sbi==0.27.0``, side by side.

Both packages fit q(θ | x) with ``VIPosterior.train_amortized(theta, x)`` at their defaults
(NSF, 128 particles, batch 64, lr 1e-3, at most 500 iterations, early stopping after 20
iterations without a better validation loss) to the **same potential** on the **same
10,000 (θ, x) pairs**, in one process with one torch thread, alternating which package goes
first from one task to the next. Potentials: the true likelihood of ``gaussian_linear`` and
``two_moons``, and one sbi_vi ``NLE`` trained once on the two_moons pairs (``nle_two_moons``;
its training is not timed) — both sides call the very same likelihood + log prior.

Per package and task (one JSON line, written as soon as the fit is evaluated, to
``benchmarks/results/amortized.jsonl``): CPU and wall seconds of ``train_amortized`` alone,
iterations, the seconds of 10,000 draws at each of observations 1–10, PSIS k-hat of those
draws against the shared potential (both packages, the same way), sbi_vi's own
``evaluate(x, N=5000)`` k-hat, and C2ST of 5,000 draws against 5,000 reference draws per
observation (computed by one low-priority worker process into ``amortized_c2st.jsonl``).
An SBC check of sbi_vi's q on gaussian_linear (200 fresh prior pairs) is one more row.

Usage (from the repository root, in the benchmark venv)::

    python benchmarks/amortized.py --quick      # smoke test, < 2 minutes, own JSONL
    python benchmarks/amortized.py              # the full comparison (about an hour on 2 CPUs)
    python benchmarks/amortized.py --report     # table -> benchmarks/README.md
"""

from __future__ import annotations

import harness  # benchmarks/ is on sys.path when run as a script

harness.use_one_thread()  # torch, and the BLAS under numpy/scikit-learn: before they load

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from harness import cell, mark, mean, ratio  # noqa: E402  (table cells)
from torch import Tensor  # noqa: E402

DEFAULT_OUTPUT = harness.RESULTS / "amortized.jsonl"
QUICK_OUTPUT = harness.RESULTS / "amortized_quick.jsonl"
SAMPLES_DIR = harness.RESULTS / "amortized_samples.tmp"  # gitignored (*.tmp)
SECTION = "## `amortized.py` — amortised VI against `sbi==0.27.0`"
TABLE_START, TABLE_END = harness.table_markers("amortized")

TASKS = ("two_moons", "gaussian_linear", "nle_two_moons")
PACKAGES = ("sbi_vi", "sbi")
OBSERVATIONS = tuple(range(1, 11))

# Targets of the issue: mean C2ST no worse than sbi's, CPU time ≤ 0.5 × sbi's.
C2ST_MARGIN = 0.01  # "no worse": within the noise of C2ST on 5,000 + 5,000 draws
TIME_RATIO = 0.5
SBC_ALPHA = 0.05

logger = logging.getLogger("amortized_bench")


# ---------------------------------------------------------------------------- set-up
VERSIONS = {"sbi": "sbi", "sbi_vi": "sbi_vi", "zuko": "zuko", "sklearn": "scikit-learn"}


def sbi_prior_like(prior: Any) -> Any:
    """sbi's equivalent of a task prior (sbi's ``BoxUniform`` or a ``MultivariateNormal``)."""
    from sbi.utils import BoxUniform as SbiBoxUniform
    from torch.distributions import Independent, MultivariateNormal, Normal

    from sbi_vi.priors import BoxUniform

    if isinstance(prior, BoxUniform):
        return SbiBoxUniform(prior.low.clone(), prior.high.clone())
    if isinstance(prior, Independent) and isinstance(prior.base_dist, Normal):
        loc, scale = prior.base_dist.loc, prior.base_dist.scale
        return MultivariateNormal(loc.clone(), covariance_matrix=torch.diag(scale**2))
    raise TypeError(f"No sbi equivalent known for prior {prior!r}.")


def sbi_potential_class() -> type:
    """A subclass of sbi's ``BasePotential``: log prior + a likelihood, θ paired with x rows.

    sbi 0.27's amortised ELBO calls ``set_x(x_expanded, x_is_iid=False)`` with x tiled to
    ``[particles · B, L]`` and then ``potential(theta_flat)`` with θ ``[particles · B, D]``:
    row i of θ goes with row i of x (a single x row serves every θ).
    """
    from sbi.inference.potentials.base_potential import BasePotential

    class PairedLikelihoodPotential(BasePotential):
        def __init__(self, likelihood: Any, prior: Any, device: str = "cpu"):
            super().__init__(prior, None, device)
            self.likelihood = likelihood

        def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
            x = self.x_o
            with torch.set_grad_enabled(track_gradients):
                x = x.expand(*theta.shape[:-1], x.shape[-1]) if x.shape[0] == 1 else x
                log_lik = self.likelihood.log_prob(x, theta)
                log_prior = self.prior.log_prob(theta)
                return torch.where(torch.isfinite(log_prior), log_lik + log_prior, log_prior)

    return PairedLikelihoodPotential


class Problem:
    """One task: the shared pairs, the shared likelihood, both packages' potentials."""

    def __init__(self, name: str, args: argparse.Namespace, cache: dict[str, Any]):
        from sbi_vi.potentials import likelihood_estimator_based_potential
        from sbi_vi.tasks import get_task

        self.name = name
        self.base = "two_moons" if name == "nle_two_moons" else name
        self.task = get_task(self.base)
        self.prior = self.task.prior
        self.sbi_prior = sbi_prior_like(self.prior)
        self.info: dict[str, Any] = {}
        self.theta, self.x = self._pairs(args, cache)
        self.observations = torch.cat([self.task.get_observation(i) for i in args.observations])
        if name == "nle_two_moons":
            self.likelihood = self._nle(args, cache)
        else:
            self.likelihood = self.task.likelihood
        self.potential, self.theta_transform = likelihood_estimator_based_potential(
            self.likelihood, self.prior, None
        )
        self.sbi_potential = sbi_potential_class()(self.likelihood, self.sbi_prior)

    def _pairs(self, args: argparse.Namespace, cache: dict[str, Any]) -> tuple[Tensor, Tensor]:
        key = f"pairs-{self.base}"
        if key not in cache:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)
                theta = self.prior.sample((args.num_simulations,))
            # Another seed for the noise: the same seed would replay θ's normal draws
            # (gaussian_linear: x = 2θ exactly).
            x = self.task.simulator(theta, seed=args.seed + 1)
            ok = torch.isfinite(x).all(-1)
            cache[key] = (theta[ok], x[ok])
        theta, x = cache[key]
        digest = hashlib.sha1(theta.numpy().tobytes() + x.numpy().tobytes()).hexdigest()[:12]
        self.info.update(num_pairs=int(x.shape[0]), data_hash=digest)
        return theta, x

    def _nle(self, args: argparse.Namespace, cache: dict[str, Any]) -> Any:
        """One sbi_vi NLE (its default flow) on the two_moons pairs; not timed in the rows."""
        from sbi_vi.estimators import NLE

        if "nle" not in cache:
            times: dict[str, float] = {}
            with harness.timed(times, "nle_train"):
                nle = NLE(self.prior, show_progress_bars=False)
                kwargs = {"max_num_epochs": 5} if args.quick else {}
                net = nle.append_simulations(self.theta, self.x).train(seed=args.seed, **kwargs)
            cache["nle"] = net
            cache["nle_info"] = {
                "nle_epochs": int(nle.summary["epochs_trained"][-1]),
                "nle_best_validation_loss": float(nle.summary["best_validation_loss"][-1]),
                **times,
            }
            logger.info("NLE trained: %s", cache["nle_info"])
        self.info.update(cache["nle_info"])
        return cache["nle"]

    def potential_check(self, n: int = 2000, seed: int = 0) -> float:
        """Largest |difference| of the two potentials on paired (prior θ, simulated x) rows."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(self.x.shape[0], (n,), generator=g)
        theta = torch.cat([self.prior.sample((n,)), self.theta[idx]])
        x = torch.cat([self.x[idx], self.x[idx]])
        with torch.no_grad():
            self.potential.set_x(x, x_is_iid=False)
            a = self.potential(theta, track_gradients=False)
            self.sbi_potential.set_x(x, x_is_iid=False)
            b = self.sbi_potential(theta, track_gradients=False)
        if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
            return math.inf
        finite = torch.isfinite(a)
        return float((a[finite] - b[finite]).abs().max()) if bool(finite.any()) else 0.0

    def log_p(self, theta: Tensor, x_o: Tensor) -> Tensor:
        """The shared potential at one observation, for the k-hat of both packages' q."""
        with torch.no_grad():
            self.potential.set_x(x_o.reshape(1, -1))
            return self.potential(theta, track_gradients=False)


# ---------------------------------------------------------------------------- one fit
class FitTimeout(Exception):
    """sbi's ``train_amortized`` used more CPU seconds than ``--time-limit``."""


class SbiIterations:
    """Counts sbi's iterations through its ``_compute_amortized_elbo_loss`` (on the instance).

    sbi calls it once with gradients (training step) and once without (validation loss)
    per iteration. The wrapper keeps the weights of the best validation loss, as sbi does,
    so that a fit stopped by the CPU limit can still be evaluated at what it reached.
    """

    def __init__(self, posterior: Any, cpu_limit: float | None):
        self.posterior = posterior
        self.inner = posterior._compute_amortized_elbo_loss
        self.cpu_limit = cpu_limit
        self.start = time.process_time()
        self.iters = 0
        self.val_losses: list[float] = []
        self.best: dict | None = None
        posterior._compute_amortized_elbo_loss = self

    def __call__(self, x_batch: Tensor, n_particles: int) -> Tensor:
        training = torch.is_grad_enabled()
        if training:
            if self.cpu_limit and time.process_time() - self.start > self.cpu_limit:
                raise FitTimeout(
                    f"sbi's train_amortized passed the limit of {self.cpu_limit:.0f} CPU s "
                    f"after {self.iters} iterations"
                )
            self.iters += 1
        loss = self.inner(x_batch, n_particles)
        if not training:
            value = float(loss)
            if not self.val_losses or value < min(self.val_losses):
                self.best = copy.deepcopy(self.posterior._amortized_q.state_dict())
            self.val_losses.append(value)
        return loss

    def restore_best(self) -> bool:
        """After an interrupted fit: best-validation weights in q, amortised mode on."""
        if self.best is None or self.posterior._amortized_q is None:
            return False
        self.posterior._amortized_q.load_state_dict(self.best)
        self.posterior._amortized_q.eval()
        self.posterior._mode = "amortized"
        return True


def train(
    package: str, problem: Problem, seed: int, train_kwargs: dict, cpu_limit: float | None
) -> tuple[Any, dict[str, Any]]:
    """Build ``VIPosterior`` at its defaults and time ``train_amortized`` alone."""
    info: dict[str, Any] = {}
    if package == "sbi_vi":
        from sbi_vi import VIPosterior

        posterior = VIPosterior(
            problem.potential, problem.prior, theta_transform=problem.theta_transform
        )
        counter = None
    else:
        from sbi.inference import VIPosterior as SbiVIPosterior

        posterior = SbiVIPosterior(problem.sbi_potential, problem.sbi_prior)
        counter = SbiIterations(posterior, cpu_limit)
    torch.manual_seed(seed)
    stdout = io.StringIO()
    try:
        with harness.timed(info, "train"), contextlib.redirect_stdout(stdout):
            posterior.train_amortized(
                problem.theta, problem.x, show_progress_bar=False, **train_kwargs
            )
    except Exception as err:
        info.update(harness.error_fields(err))
        info["timed_out"] = isinstance(err, FitTimeout)
        if counter is not None:
            info["num_iters"] = counter.iters
            info["evaluated_best_snapshot"] = counter.restore_best()
            info["best_validation_loss"] = min(counter.val_losses, default=None)
        return (posterior if info.get("evaluated_best_snapshot") else None), info
    info["error"] = None
    info["stdout"] = stdout.getvalue().strip()[-600:] or None
    if package == "sbi_vi":
        last = posterior.history[-1]
        info["num_iters"] = int(last.num_iters)
        info["converged"] = bool(last.converged)
        info["best_validation_loss"] = min(posterior.validation_losses, default=None)
    else:
        info["num_iters"] = counter.iters
        info["best_validation_loss"] = min(counter.val_losses, default=None)
    return posterior, info


def evaluate(
    package: str, posterior: Any, problem: Problem, args: argparse.Namespace, seed: int
) -> tuple[dict[str, Any], dict[int, Tensor]]:
    """Draws at each observation (timed), k-hat of them, sbi_vi's own ``evaluate``."""
    from sbi_vi.diagnostics import psis

    out: dict[str, Any] = {"obs": {}}
    draws: dict[int, Tensor] = {}
    torch.manual_seed(seed + 7)
    sampling = harness.Timer()
    for i, x_o in zip(args.observations, problem.observations, strict=True):
        x_o = x_o.reshape(1, -1)
        o: dict[str, Any] = {}
        try:
            with sampling.time(), torch.no_grad():
                theta = posterior.sample((args.num_samples,), x=x_o)
            theta = theta.detach().reshape(args.num_samples, -1)
            o["num_nonfinite_samples"] = int((~torch.isfinite(theta).all(-1)).sum())
            draws[i] = theta[: args.c2st_samples].clone()
            with torch.no_grad():
                log_q = posterior.log_prob(theta, x=x_o).reshape(-1)
            log_w = problem.log_p(theta, x_o) - log_q
            o["num_outside_support"] = int(torch.isneginf(log_w).sum())
            o["num_nonfinite_log_w"] = int((~torch.isfinite(log_w)).sum())
            result = psis(log_w)
            o["khat"] = float(result.khat)
            o["ess"] = float(result.ess)
        except Exception as err:
            o["error"] = f"{type(err).__name__}: {err}"[:500]
        out["obs"][str(i)] = o
    out["sample_wall_s"], out["sample_cpu_s"] = sampling.wall, sampling.cpu
    khats = [o.get("khat") for o in out["obs"].values()]
    finite = [k for k in khats if k is not None and math.isfinite(k)]
    out["khat_mean"] = statistics.fmean(finite) if len(finite) == len(khats) else None
    out["khat_mean_finite"] = statistics.fmean(finite) if finite else None
    out["num_outside_support"] = sum(o.get("num_outside_support", 0) for o in out["obs"].values())
    if package == "sbi_vi":
        try:
            wall = time.perf_counter()
            quality = posterior.evaluate(x=problem.observations, N=args.evaluate_n)
            out["evaluate_wall_s"] = time.perf_counter() - wall
            out["evaluate_khat"] = [float(k) for k in quality.khat]
            out["evaluate_khat_mean"] = float(quality.khat.mean())
            out["evaluate_num_unreliable"] = int((~quality.reliable).sum())
        except Exception as err:
            out["evaluate_error"] = f"{type(err).__name__}: {err}"[:500]
    return out, draws


def run_sbc(posterior: Any, problem: Problem, args: argparse.Namespace) -> dict[str, Any]:
    """SBC of sbi_vi's amortised q on fresh prior pairs (marginals, KS + chi-square)."""
    from sbi_vi.diagnostics import run_sbc as sbc

    row: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 10_000)
        thetas = problem.prior.sample((args.sbc_num,))
    xs = problem.task.simulator(thetas, seed=args.seed + 20_000)  # not θ's seed (see _pairs)
    wall = time.perf_counter()
    result = sbc(
        thetas,
        xs,
        posterior,
        args.sbc_samples,
        seed=args.seed,
        show_progress_bar=False,
    )
    row["sbc_wall_s"] = time.perf_counter() - wall
    row["sbc_num_simulations"] = args.sbc_num
    row["sbc_num_posterior_samples"] = args.sbc_samples
    row["sbc_ks_pvalues"] = [float(p) for p in result.ks_pvalues]
    row["sbc_chi2_pvalues"] = [float(p) for p in result.chi2_pvalues]
    row["sbc_min_pvalue"] = float(min(result.ks_pvalues.min(), result.chi2_pvalues.min()))
    row["sbc_rejected"] = [name for name, r in zip(result.names, result.rejected(SBC_ALPHA)) if r]
    row["sbc_passed"] = result.passed(SBC_ALPHA)
    return row


# ---------------------------------------------------------------------------- C2ST
def reference_task(task: str) -> str:
    """The task whose reference posterior a task's draws are compared with."""
    return "two_moons" if task == "nle_two_moons" else task


def submit_c2st(
    runner: harness.C2STRunner, row: dict[str, Any], draws: dict[int, Tensor], max_samples: int
) -> None:
    """The C2ST of each observation's draws of one fit, ``{"run_id", "obs"}`` rows."""
    for obs, theta in draws.items():
        ids = {"run_id": row["run_id"], "obs": obs}
        name = f"{row['run_id']}-obs{obs}"
        task = reference_task(row["task"])
        runner.submit(ids, name, task, obs, theta, max_samples, row["seed"])


# ---------------------------------------------------------------------------- the run
def train_kwargs_for(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults for real runs; a few iterations in ``--quick`` (same for both packages)."""
    if args.quick:
        return {"max_num_iters": 3, "n_particles": 16}
    return {}


def run_one(
    package: str,
    problem: Problem,
    args: argparse.Namespace,
    env: dict[str, Any],
    runner: harness.C2STRunner,
    output: Path,
    potential_diff: float,
) -> None:
    seed = args.seed
    row: dict[str, Any] = {
        "kind": "fit",
        "package": package,
        "task": problem.name,
        "seed": seed,
        "quick": bool(args.quick),
        "observations": list(args.observations),
        "num_samples": args.num_samples,
        "c2st_samples": args.c2st_samples,
        "train_kwargs": train_kwargs_for(args),
        "cpu_limit_s": args.time_limit if package == "sbi" else None,
        "potential_max_abs_diff": potential_diff,
        "started": harness.now(),
        "loadavg_1m": harness.load_average(),
        **problem.info,
    }
    row["run_id"] = (
        f"{problem.name}-{package}-{row['started'][:19].replace(':', '')}-{os.getpid()}"
    )
    draws: dict[int, Tensor] = {}
    with harness.logged_warnings("sbi_vi") as collect:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                posterior, info = train(
                    package, problem, seed, train_kwargs_for(args), args.time_limit
                )
                row.update(info)
                logger.info(
                    "%-15s %-6s trained: %.1f CPU s, %.1f s, %s it%s",
                    problem.name,
                    package,
                    info["train_cpu_s"],
                    info["train_wall_s"],
                    info.get("num_iters"),
                    f" — {info['error'][:200]}" if info.get("error") else "",
                )
                if posterior is not None:
                    result, draws = evaluate(package, posterior, problem, args, seed)
                    row.update(result)
                    if package == "sbi_vi" and problem.name == "gaussian_linear" and args.sbc_num:
                        try:
                            row.update(run_sbc(posterior, problem, args))
                        except Exception as err:
                            row["sbc_error"] = f"{type(err).__name__}: {err}"[:500]
            row["warnings"] = harness.warning_list(caught)
        except Exception as err:
            row.update(harness.error_fields(err))
    row["log_warnings"] = sorted(set(collect.messages)) or None
    row["finished"] = harness.now()
    row.update(env)
    harness.write_row(output, row)
    logger.info(
        "%-15s %-6s k-hat mean %s (evaluate %s), sampling %s CPU s, SBC %s",
        problem.name,
        package,
        cell(row.get("khat_mean"), ".3f"),
        cell(row.get("evaluate_khat_mean"), ".3f"),
        cell(row.get("sample_cpu_s"), ".1f"),
        row.get("sbc_passed"),
    )
    submit_c2st(runner, row, draws, args.c2st_samples)


def warm_up(problem: Problem, packages: list[str]) -> None:
    """Each package once, untimed, so that lazy imports and first calls are paid here."""
    from sbi_vi.diagnostics import psis

    psis(torch.randn(100))
    for package in packages:
        with harness.silenced():
            posterior, _ = train(package, problem, 0, {"max_num_iters": 2, "n_particles": 4}, None)
            if posterior is not None:
                posterior.sample((10,), x=problem.observations[:1])


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    output = harness.output_path(args, DEFAULT_OUTPUT, QUICK_OUTPUT)
    env = harness.environment(VERSIONS)
    harness.log_start(env, output)
    runner = harness.C2STRunner(args.c2st, output, SAMPLES_DIR)
    cache: dict[str, Any] = {}
    try:
        for t, name in enumerate(args.tasks):
            problem = Problem(name, args, cache)
            if t == 0:
                warm_up(problem, args.packages)
            diff = problem.potential_check()
            logger.info("%s: max |potential_sbi_vi - potential_sbi| = %.3g", name, diff)
            if not diff < 1e-3:
                logger.error("%s: the potentials differ (%.3g); rows are flagged", name, diff)
            order = args.packages if t % 2 == 0 else args.packages[::-1]
            for package in order:
                run_one(package, problem, args, env, runner, output, diff)
    finally:
        runner.close()


def c2st_missing(args: argparse.Namespace) -> None:
    """Compute, in this process, the C2ST of finished fits that lack one (saved draws)."""
    output = Path(args.output) if args.output else DEFAULT_OUTPUT
    target = harness.c2st_output_for(output)
    done = {(r["run_id"], int(r["obs"])) for r in harness.load_rows(target) if "obs" in r}
    for row in harness.load_rows(output):
        if row.get("kind") != "fit" or row.get("quick") != bool(args.quick):
            continue
        if row["task"] not in args.tasks or row["package"] not in args.packages:
            continue
        for obs in row.get("observations", []):
            path = SAMPLES_DIR / f"{row['run_id']}-obs{obs}.pt"
            if (row["run_id"], obs) in done or not path.exists():
                continue
            max_samples = row.get("c2st_samples") or args.c2st_samples
            ids = {"run_id": row["run_id"], "obs": obs}
            task = reference_task(row["task"])
            harness.log_c2st(
                harness.c2st_job(ids, task, obs, str(path), max_samples, row["seed"], str(target))
            )


# ---------------------------------------------------------------------------- report
def summarise(path: Path) -> list[dict[str, Any]]:
    """One summary per task: the latest finished fit of each package with its C2ST."""
    c2st_rows: dict[str, dict[int, float | None]] = {}
    for r in harness.load_rows(harness.c2st_output_for(path)):
        c2st_rows.setdefault(r["run_id"], {})[int(r["obs"])] = r.get("c2st")
    fits: dict[tuple[str, str], dict[str, Any]] = {}
    for r in harness.load_rows(path):
        if r.get("kind") == "fit" and not r.get("quick"):
            fits[(r["task"], r["package"])] = r  # the latest run wins
    summaries = []
    for task in TASKS:
        if not any((task, p) in fits for p in PACKAGES):
            continue
        s: dict[str, Any] = {"task": task}
        for p in PACKAGES:
            r = fits.get((task, p), {})
            per_obs = c2st_rows.get(r.get("run_id"), {})
            values = [per_obs.get(i) for i in r.get("observations", [])]
            s[f"{p}_row"] = r
            s[f"{p}_c2st"] = mean(values) if all(v is not None for v in values) else None
            s[f"{p}_c2st_n"] = sum(v is not None for v in values)
        a, b = s["sbi_vi_row"], s["sbi_row"]
        crashed = bool(b.get("error")) and not b.get("timed_out")  # no time to compare
        s["ratio_cpu"] = None if crashed else ratio(a.get("train_cpu_s"), b.get("train_cpu_s"))
        s["ratio_wall"] = None if crashed else ratio(a.get("train_wall_s"), b.get("train_wall_s"))
        s["bound"] = bool(b.get("timed_out"))  # sbi's time is at least the limit
        cpu_ratio = s["ratio_cpu"]
        s["target_time"] = None if cpu_ratio is None or a.get("error") else cpu_ratio <= TIME_RATIO
        if s["bound"] and s["target_time"] is False:
            s["target_time"] = None  # an upper bound above the target decides nothing
        c_vi, c_sbi = s["sbi_vi_c2st"], s["sbi_c2st"]
        s["target_c2st"] = None if c_vi is None or c_sbi is None else c_vi <= c_sbi + C2ST_MARGIN
        if c_vi is not None and c_sbi is None and b.get("error") and not b.get("timed_out"):
            s["target_c2st"] = True  # sbi crashed: no C2ST to beat
            s["sbi_failed"] = True
        summaries.append(s)
    return summaries


def _cpu_cell(r: dict[str, Any]) -> str:
    if not r:
        return "—"
    text = cell(r.get("train_cpu_s"))
    if r.get("timed_out"):
        return f"> {text} (limit)"
    if r.get("error"):
        return f"{text} (crashed)"
    return text


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    lines = [
        "| task | CPU s sbi_vi | CPU s sbi | ratio CPU | ratio wall | iterations sbi_vi / sbi "
        "| mean C2ST sbi_vi | mean C2ST sbi | mean k̂ sbi_vi (evaluate) | mean k̂ sbi "
        "| sampling CPU s sbi_vi / sbi | C2ST target | time target | SBC (sbi_vi) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|:-:|:-:|",
    ]
    for s in summaries:
        a, b = s["sbi_vi_row"], s["sbi_row"]
        lt = "< " if s["bound"] else ""
        sbc = "—"
        if a.get("sbc_passed") is not None:
            sbc = f"{mark(a['sbc_passed'])} (min p {a['sbc_min_pvalue']:.3f})"

        def khat(r: dict[str, Any]) -> str:
            if r.get("khat_mean") is not None:
                return cell(r["khat_mean"], ".2f")
            if r.get("khat_mean_finite") is not None:
                return f"{r['khat_mean_finite']:.2f} (finite only)"
            return "—"

        def c2(p: str, s: dict[str, Any] = s) -> str:
            n = s[f"{p}_c2st_n"]
            if s[f"{p}_c2st"] is None and n:
                return f"({n}/10 done)"
            return cell(s[f"{p}_c2st"], ".3f")

        lines.append(
            f"| {s['task']} | {_cpu_cell(a)} | {_cpu_cell(b)} "
            f"| {lt}{cell(s['ratio_cpu'], '.2f')} | {lt}{cell(s['ratio_wall'], '.2f')} "
            f"| {cell(a.get('num_iters'), '.0f')} / {cell(b.get('num_iters'), '.0f')} "
            f"| {c2('sbi_vi')} | {c2('sbi')} "
            f"| {khat(a)} ({cell(a.get('evaluate_khat_mean'), '.2f')}) | {khat(b)} "
            f"| {cell(a.get('sample_cpu_s'))} / {cell(b.get('sample_cpu_s'))} "
            f"| {mark(s['target_c2st'])}{' (sbi failed)' if s.get('sbi_failed') else ''} "
            f"| {mark(s['target_time'])} | {sbc} |"
        )
    return "\n".join(lines)


def notes(summaries: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in summaries:
        for p in PACKAGES:
            r = s[f"{p}_row"]
            if r.get("error"):
                out.append(f"- {s['task']} / {p}: {r['error'].splitlines()[0][:240]}")
            if r.get("num_outside_support"):
                out.append(
                    f"- {s['task']} / {p}: {r['num_outside_support']} of "
                    f"{r['num_samples'] * len(r['observations'])} draws where the potential "
                    "is −inf (zero likelihood or outside the prior's support)"
                )
    return out


def report(args: argparse.Namespace) -> None:
    path = Path(args.output) if args.output else DEFAULT_OUTPUT
    summaries = summarise(path)
    rows = [r for r in harness.load_rows(path) if r.get("kind") == "fit" and not r.get("quick")]
    envs = sorted({(r.get("device_name"), r.get("torch"), r.get("sbi")) for r in rows}, key=str)
    table = markdown_table(summaries)
    block = "\n".join(
        [
            TABLE_START,
            "",
            f"Built from `{os.path.relpath(path, harness.ROOT.parent)}` ({len(rows)} fits) "
            f"on {harness.now()}; "
            + "; ".join(f"{d}, torch {t}, sbi {s}" for d, t, s in envs)
            + ".",
            "",
            table,
            "",
            *notes(summaries),
            "",
            TABLE_END,
        ]
    )
    text = harness.README.read_text()
    if TABLE_START not in text and SECTION not in text:
        block = f"{SECTION}\n\n{block}"  # a README without the section gets its heading
    harness.replace_block(harness.README, TABLE_START, TABLE_END, block)
    print(table)
    print("\n".join(notes(summaries)))


# ---------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_subset_option(parser, "--tasks", TASKS)
    harness.add_subset_option(parser, "--packages", PACKAGES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--observations", type=harness.int_list(1, 10), default=list(OBSERVATIONS))
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument(
        "--num-samples", type=int, default=10_000, help="timed draws per observation"
    )
    parser.add_argument("--c2st-samples", type=int, default=5000, help="draws used for C2ST")
    parser.add_argument("--evaluate-n", type=int, default=5000, help="N of sbi_vi's evaluate")
    parser.add_argument("--sbc-num", type=int, default=200, help="SBC pairs (0: no SBC)")
    parser.add_argument("--sbc-samples", type=int, default=1000, help="draws per SBC pair")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=1200.0,
        help="CPU seconds one sbi train_amortized may take before it is stopped and recorded "
        "as timed out, evaluated at its best validation weights (default 1200; 0 = none)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test, < 2 minutes")
    harness.add_c2st_options(parser)
    parser.add_argument("--report", action="store_true", help="rebuild the README table")
    parser.add_argument("--output", default=None, help="JSONL file (default results/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_simulations = min(args.num_simulations, 1000)
        args.num_samples = min(args.num_samples, 500)
        args.c2st_samples = min(args.c2st_samples, 200)
        args.evaluate_n = min(args.evaluate_n, 200)
        args.sbc_num = min(args.sbc_num, 20)
        args.sbc_samples = min(args.sbc_samples, 50)
        args.observations = args.observations[:2]
    args.c2st_samples = min(args.c2st_samples, args.num_samples)
    return args


def main(argv: list[str] | None = None) -> None:
    harness.configure_logging()
    args = parse_args(argv)
    if args.report:
        report(args)
    elif args.c2st_missing:
        torch.set_num_threads(1)
        c2st_missing(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
