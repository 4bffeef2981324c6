"""Side-by-side benchmark of ``sbi_vi.ppl`` SVI against pyro-ppl 1.9.2 and a hand-written loop.

Two models, each fitted with a mean-field Gaussian guide (``AutoNormal``, lr 1e-2, Adam,
one particle, init at zero in unconstrained space) by three implementations:

- **sbi_vi**: ``SVI(model, AutoNormal(model), lr=1e-2).run(block, ...)`` (the engine's fit
  loop, progress bar off);
- **pyro**: ``pyro.infer.SVI(model, AutoNormal(model), Adam({"lr": 1e-2}), Trace_ELBO())``,
  ``svi.step`` in a loop, validation off;
- **hand**: the same model and guide written out in torch: the model's distributions
  built every step exactly as the model builds them, the guide's location and softplus
  scale as two tensors per group of sites, ``torch.optim.Adam``.

Models:

- ``logreg``: logistic regression, N = 10,000 observations, D = 20 features plus an
  intercept, plate subsample 256;
- ``hier``: random intercepts, 1,000 groups of 5 observations, ``mu ~ N(0, 5)``,
  ``tau ~ HalfNormal(2)``, ``theta_g ~ N(mu, tau)``, ``y_gj ~ N(theta_g, 1)``, plate
  subsample 100 (one local latent per group).

Per model it alternates blocks of steps between the implementations (the order rotates
from one repeat to the next) in one process with ``torch.set_num_threads(1)`` and torch's
distribution argument validation off for all three (``pyro.enable_validation(False)``
switches it off process-wide anyway), recording wall and CPU milliseconds per step; then
it trains each implementation for the same number of steps from the same start and
compares the guide with an exact reference (logreg:
Laplace + importance sampling with PSIS; hier: the 2-D marginal posterior of (mu, tau) on
a grid, theta integrated analytically). Finally it times ``sample_posterior`` of the
per-group site: 1,000 samples x 1,000 groups, batch size 100.

Usage (a venv with both sbi_vi and pyro-ppl==1.9.2, e.g. ``/tmp/pyrovenv``)::

    python benchmarks/ppl.py                 # full run, results/ppl.jsonl + table
    python benchmarks/ppl.py --quick         # smoke test
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import harness  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.distributions import Bernoulli, HalfNormal, Independent, Normal  # noqa: E402

from sbi_vi.ppl import plate, sample  # noqa: E402
from sbi_vi.ppl.infer import SVI, AutoNormal, init_to_feasible  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "ppl.jsonl"
N, D, B_LOGREG = 10_000, 20, 256
G, M, B_HIER = 1_000, 5, 100
LR = 1e-2


# --- data ------------------------------------------------------------------------------------


def make_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    w = 0.5 * torch.randn(D, generator=g)
    y = torch.bernoulli(torch.sigmoid(x @ w + 0.3), generator=g)
    theta = 1.0 + 1.5 * torch.randn(G, generator=g)
    obs = theta[:, None] + torch.randn(G, M, generator=g)
    return {"x": x, "y": y, "obs": obs}


# --- sbi_vi models ---------------------------------------------------------------------------


def logreg_model(x: torch.Tensor, y: torch.Tensor) -> None:
    w = sample("w", Independent(Normal(torch.zeros(D), 1.0), 1))
    b = sample("b", Normal(0.0, 1.0))
    with plate("data", N, subsample_size=B_LOGREG) as idx:
        logits = (x[idx] * w).sum(-1) + b
        sample("y", Bernoulli(logits=logits), obs=y[idx])


def hier_model(obs: torch.Tensor) -> None:
    mu = sample("mu", Normal(0.0, 5.0))
    tau = sample("tau", HalfNormal(2.0))
    with plate("groups", G, subsample_size=B_HIER) as idx:
        theta = sample("theta", Normal(mu, tau))
        sample("y", Independent(Normal(theta.unsqueeze(-1), 1.0), 1), obs=obs[idx])


class Ours:
    def __init__(self, model: Callable[..., Any], args: tuple) -> None:
        self.svi = SVI(model, AutoNormal(model, init_loc_fn=init_to_feasible), lr=LR)
        self.args = args
        self.svi.setup(*args)

    def steps(self, n: int) -> None:
        self.svi.run(n, *self.args, show_progress_bar=False, quality_control=False)

    def summary(self) -> dict[str, torch.Tensor]:
        p = self.svi.guide.named_site_params()
        return {k[: -len("_auto_loc")]: v for k, v in p.items() if k.endswith("_auto_loc")} | {
            k[: -len("_auto_scale")] + "_scale": v
            for k, v in p.items()
            if k.endswith("_auto_scale")
        }


# --- pyro ------------------------------------------------------------------------------------


class Pyro:
    def __init__(self, name: str, args: tuple) -> None:
        import pyro
        import pyro.distributions as dist
        from pyro.infer import SVI as PyroSVI
        from pyro.infer import Trace_ELBO
        from pyro.infer.autoguide import AutoNormal as PyroAutoNormal
        from pyro.infer.autoguide import init_to_feasible as pyro_feasible
        from pyro.optim import Adam

        def logreg(x, y):
            w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
            with pyro.plate("data", N, subsample_size=B_LOGREG) as idx:
                pyro.sample("y", dist.Bernoulli(logits=x[idx] @ w + b), obs=y[idx])

        def hier(obs):
            mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
            tau = pyro.sample("tau", dist.HalfNormal(2.0))
            with pyro.plate("groups", G, subsample_size=B_HIER) as idx:
                theta = pyro.sample("theta", dist.Normal(mu, tau))
                pyro.sample("y", dist.Normal(theta.unsqueeze(-1), 1.0).to_event(1), obs=obs[idx])

        self.pyro = pyro
        model = {"logreg": logreg, "hier": hier}[name]
        pyro.clear_param_store()  # one Pyro fit alive at a time (Pyro's store is global)
        self.guide = PyroAutoNormal(model, init_loc_fn=pyro_feasible)
        self.svi = PyroSVI(model, self.guide, Adam({"lr": LR}), Trace_ELBO())
        self.args = args
        self.svi.step(*args)

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.svi.step(*self.args)

    def summary(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.guide._event_dims:  # the latent sites, in the model's order
            out[name] = getattr(self.guide.locs, name).detach().clone()
            out[name + "_scale"] = getattr(self.guide.scales, name).detach().clone()
        return out


# --- hand-written ------------------------------------------------------------------------------


def _raw(n: int) -> torch.Tensor:
    return torch.full((n,), math.log(math.expm1(0.1)), requires_grad=True)


class HandLogreg:
    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.x, self.y = data["x"], data["y"]
        self.loc = torch.zeros(D + 1, requires_grad=True)
        self.raw = _raw(D + 1)
        self.opt = torch.optim.Adam([self.loc, self.raw], lr=LR)

    def step(self) -> float:
        idx = torch.randperm(N)[:B_LOGREG]
        scale = F.softplus(self.raw)
        z = self.loc + scale * torch.randn(D + 1)
        log_q = Normal(self.loc, scale).log_prob(z).sum()
        w, b = z[:D], z[D]
        log_p = Independent(Normal(torch.zeros(D), 1.0), 1).log_prob(w)
        log_p = log_p + Normal(0.0, 1.0).log_prob(b)
        logits = self.x[idx] @ w + b
        lik = Bernoulli(logits=logits).log_prob(self.y[idx]).sum()
        loss = log_q - (log_p + (N / B_LOGREG) * lik)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def summary(self) -> dict[str, torch.Tensor]:
        scale = F.softplus(self.raw).detach()
        return {
            "w": self.loc[:D].detach(),
            "b": self.loc[D].detach(),
            "w_scale": scale[:D],
            "b_scale": scale[D],
        }


class HandHier:
    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.obs = data["obs"]
        self.gloc, self.graw = torch.zeros(2, requires_grad=True), _raw(2)
        self.lloc, self.lraw = torch.zeros(G, requires_grad=True), _raw(G)
        params = [self.gloc, self.graw, self.lloc, self.lraw]
        self.opt = torch.optim.Adam(params, lr=LR)

    def step(self) -> float:
        idx = torch.randperm(G)[:B_HIER]
        gscale = F.softplus(self.graw)
        zg = self.gloc + gscale * torch.randn(2)
        log_q = Normal(self.gloc, gscale).log_prob(zg).sum() - zg[1]  # tau = exp(u)
        mu, tau = zg[0], zg[1].exp()
        loc, lscale = self.lloc[idx], F.softplus(self.lraw[idx])
        theta = loc + lscale * torch.randn(B_HIER)
        scale = G / B_HIER
        log_q = log_q + scale * Normal(loc, lscale).log_prob(theta).sum()
        log_p = Normal(0.0, 5.0).log_prob(mu) + HalfNormal(2.0).log_prob(tau)
        local = Normal(mu, tau).log_prob(theta).sum()
        local = (
            local + Independent(Normal(theta.unsqueeze(-1), 1.0), 1).log_prob(self.obs[idx]).sum()
        )
        loss = log_q - (log_p + scale * local)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def summary(self) -> dict[str, torch.Tensor]:
        gs, ls = F.softplus(self.graw).detach(), F.softplus(self.lraw).detach()
        return {
            "mu": self.gloc[0].detach(),
            "tau": self.gloc[1].detach(),
            "theta": self.lloc.detach(),
            "mu_scale": gs[0],
            "tau_scale": gs[1],
            "theta_scale": ls,
        }


# --- exact references ------------------------------------------------------------------------


def logreg_reference(data: dict[str, torch.Tensor], n_draws: int = 20_000) -> dict[str, Any]:
    """Posterior mean and sd of (w, b): Laplace at the mode, corrected by PSIS-IS."""
    from sbi_vi.diagnostics import psis

    x, y = data["x"].double(), data["y"].double()
    xb = torch.cat([x, torch.ones(N, 1, dtype=torch.float64)], 1)

    def log_post(z: torch.Tensor) -> torch.Tensor:  # z [..., D + 1]
        logits = z @ xb.T
        lik = -F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none")
        return lik.sum(-1) - 0.5 * z.square().sum(-1)

    z = torch.zeros(D + 1, dtype=torch.float64)
    for _ in range(30):  # Newton
        p = torch.sigmoid(xb @ z)
        grad = xb.T @ (y - p) - z
        hess = -(xb.T * (p * (1 - p))) @ xb - torch.eye(D + 1, dtype=torch.float64)
        z = z - torch.linalg.solve(hess, grad)
    cov = torch.linalg.inv(-hess)
    g = torch.Generator().manual_seed(1)
    prop = torch.distributions.MultivariateNormal(z, covariance_matrix=1.2 * cov)
    draws = (
        z
        + torch.randn(n_draws, D + 1, generator=g, dtype=torch.float64)
        @ torch.linalg.cholesky(1.2 * cov).T
    )
    log_w = log_post(draws) - prop.log_prob(draws)
    res = psis(log_w)
    w = res.log_weights.exp()
    mean = (w[:, None] * draws).sum(0)
    sd = ((w[:, None] * (draws - mean) ** 2).sum(0)).sqrt()
    return {"mean": mean.float(), "sd": sd.float(), "khat": float(res.khat)}


def hier_reference(data: dict[str, torch.Tensor], grid: int = 400) -> dict[str, Any]:
    """Exact posterior moments: (mu, tau) on a grid, theta | mu, tau, y Gaussian."""
    obs = data["obs"].double()
    ybar, se2 = obs.mean(1), 1.0 / M
    center = float(ybar.mean())
    spread = math.sqrt(max(float(ybar.var()) - se2, 1e-2))
    mu = torch.linspace(center - 0.5, center + 0.5, grid, dtype=torch.float64)
    tau = torch.linspace(max(spread - 0.4, 1e-3), spread + 0.4, grid, dtype=torch.float64)
    mg, tg = torch.meshgrid(mu, tau, indexing="ij")
    var = tg[..., None] ** 2 + se2
    loglik = (-0.5 * (ybar - mg[..., None]) ** 2 / var - 0.5 * var.log()).sum(-1)
    logp = loglik + Normal(0.0, 5.0).log_prob(mg) + HalfNormal(2.0).log_prob(tg)
    wts = torch.softmax(logp.reshape(-1), 0).reshape(grid, grid)
    assert float(wts[0].sum() + wts[-1].sum() + wts[:, 0].sum() + wts[:, -1].sum()) < 1e-6
    # theta_g | mu, tau: precision 1/tau^2 + M, mean (mu/tau^2 + M ybar) / precision
    prec = 1 / tg**2 + M
    cond_mean = (mg[..., None] / tg[..., None] ** 2 + M * ybar) / prec[..., None]
    m1 = (wts[..., None] * cond_mean).sum((0, 1))
    m2 = (wts[..., None] * (cond_mean**2 + 1 / prec[..., None])).sum((0, 1))
    out = {"theta": (m1, (m2 - m1**2).sqrt())}
    for name, v in (("mu", mg), ("log_tau", tg.log())):
        e1 = (wts * v).sum()
        out[name] = (e1, ((wts * v**2).sum() - e1**2).sqrt())
    return {k: (a.float(), b.float()) for k, (a, b) in out.items()}


def accuracy(
    summary: dict[str, torch.Tensor], model: str, ref: dict[str, Any]
) -> dict[str, float]:
    """Largest and mean |guide mean - reference mean| / reference sd, and the sd ratios."""
    if model == "logreg":
        loc = torch.cat([summary["w"].reshape(-1), summary["b"].reshape(-1)])
        scale = torch.cat([summary["w_scale"].reshape(-1), summary["b_scale"].reshape(-1)])
        z = (loc - ref["mean"]).abs() / ref["sd"]
        ratio = scale / ref["sd"]
    else:
        parts = [("mu", "mu"), ("tau", "log_tau"), ("theta", "theta")]
        z = torch.cat(
            [
                ((summary[a].reshape(-1) - ref[b][0]).abs() / ref[b][1]).reshape(-1)
                for a, b in parts
            ]
        )
        ratio = torch.cat(
            [(summary[a + "_scale"].reshape(-1) / ref[b][1]).reshape(-1) for a, b in parts]
        )
    return {
        "max_abs_z": float(z.max()),
        "mean_abs_z": float(z.mean()),
        "sd_ratio_min": float(ratio.min()),
        "sd_ratio_max": float(ratio.max()),
    }


# --- runs ------------------------------------------------------------------------------------


def build(impl: str, model: str, data: dict[str, torch.Tensor]) -> Any:
    args = (data["x"], data["y"]) if model == "logreg" else (data["obs"],)
    if impl == "sbi_vi":
        return Ours(logreg_model if model == "logreg" else hier_model, args)
    if impl == "pyro":
        return Pyro(model, args)
    return HandLogreg(data) if model == "logreg" else HandHier(data)


def time_steps(model: str, data: dict, impls: list[str], repeats: int, block: int) -> dict:
    """Alternating blocks of steps; ms per step (wall and CPU) per block."""
    fits = {impl: build(impl, model, data) for impl in impls}
    for fit in fits.values():  # warm up
        fit.steps(20)
    times: dict[str, dict[str, list[float]]] = {i: {"wall": [], "cpu": []} for i in impls}
    for r in range(repeats):
        order = impls[r % len(impls) :] + impls[: r % len(impls)]
        for impl in order:
            w0, c0 = time.perf_counter(), time.process_time()
            fits[impl].steps(block)
            times[impl]["wall"].append((time.perf_counter() - w0) / block * 1e3)
            times[impl]["cpu"].append((time.process_time() - c0) / block * 1e3)
    return times


def train_accuracy(model: str, data: dict, impls: list[str], steps: int, ref: dict) -> dict:
    out = {}
    for impl in impls:
        torch.manual_seed(2)
        fit = build(impl, model, data)
        w0, c0 = time.perf_counter(), time.process_time()
        fit.steps(steps)
        out[impl] = {
            **accuracy(fit.summary(), model, ref),
            "train_wall_s": time.perf_counter() - w0,
            "train_cpu_s": time.process_time() - c0,
        }
    return out


def time_sample_posterior(data: dict, steps: int, repeats: int) -> dict:
    fit = Ours(hier_model, (data["obs"],))
    fit.steps(steps)
    result_args = {"num_samples": 1000, "batch_size": 100, "return_sites": ["theta"]}
    svi = fit.svi
    from sbi_vi.ppl.infer.summary import sample_posterior

    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = sample_posterior(svi, fit.args, {}, **result_args)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    shape = tuple(out["means"]["theta"].shape)
    w1, c1 = time.perf_counter(), time.process_time()
    sample_posterior(svi, fit.args, {}, **result_args, return_samples=True)
    return {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "with_samples_wall_s": time.perf_counter() - w1,
        "with_samples_cpu_s": time.process_time() - c1,
        "means_shape": shape,
    }


def _meta() -> dict[str, Any]:
    return {
        "time": harness.now(),
        "torch": torch.__version__,
        "pyro": harness.package_version("pyro-ppl"),
        "python": platform.python_version(),
        "cpu": harness.cpu_model(),
        "threads": torch.get_num_threads(),
        "loadavg": harness.load_average(),
        "commit": harness.git("rev-parse", "HEAD") or "",
    }


def report(rows: list[dict]) -> str:
    lines = [
        "| model | impl | ms/step wall | ms/step CPU | vs pyro | vs hand | max abs z | sd ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["kind"] != "svi":
            continue
        t = row["times"]
        for impl, tt in t.items():
            wall, cpu = harness.median(tt["wall"]), harness.median(tt["cpu"])
            rel = {
                other: cpu / harness.median(t[other]["cpu"]) if other in t else float("nan")
                for other in ("pyro", "hand")
            }
            acc = row["accuracy"].get(impl, {})
            lines.append(
                f"| {row['model']} | {impl} | {wall:.3f} | {cpu:.3f} | {rel['pyro']:.2f} | "
                f"{rel['hand']:.2f} | {acc.get('max_abs_z', float('nan')):.2f} | "
                f"{acc.get('sd_ratio_min', float('nan')):.2f}-"
                f"{acc.get('sd_ratio_max', float('nan')):.2f} |"
            )
    for row in rows:
        if row["kind"] == "sample_posterior":
            lines.append("")
            lines.append(
                f"sample_posterior (theta, 1,000 samples x 1,000 groups, batch 100): "
                f"{row['wall_s']:.3f} s wall, {row['cpu_s']:.3f} s CPU "
                f"({row['with_samples_wall_s']:.3f} s wall with return_samples)"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few blocks and steps")
    parser.add_argument("--repeats", type=int, default=None, help="blocks per implementation")
    parser.add_argument("--block", type=int, default=None, help="steps per block")
    parser.add_argument("--models", default="logreg,hier")
    parser.add_argument("--impls", default="sbi_vi,pyro,hand")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.distributions.Distribution.set_default_validate_args(False)  # as pyro's, for all
    impls = args.impls.split(",")
    if "pyro" in impls:
        import pyro

        pyro.enable_validation(False)
    repeats = args.repeats or (3 if args.quick else 15)
    block = args.block or (50 if args.quick else 200)
    train = {"logreg": 300 if args.quick else 4000, "hier": 300 if args.quick else 5000}
    data = make_data()
    meta = _meta()
    rows = []
    refs = {"logreg": logreg_reference(data), "hier": hier_reference(data)}
    for model in args.models.split(","):
        times = time_steps(model, data, impls, repeats, block)
        acc = train_accuracy(model, data, impls, train[model], refs[model])
        rows.append(
            {
                "kind": "svi",
                "model": model,
                "block": block,
                "repeats": repeats,
                "train_steps": train[model],
                "times": times,
                "accuracy": acc,
                **meta,
            }
        )
    sp = time_sample_posterior(data, 200 if args.quick else 2000, 3 if args.quick else 7)
    rows.append({"kind": "sample_posterior", **sp, **meta})
    if not args.quick or args.output != RESULTS:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    print(report(rows))


if __name__ == "__main__":
    main()
