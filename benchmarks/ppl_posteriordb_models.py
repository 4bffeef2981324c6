"""Six Stan models of the posteriordb collection, written once for ``sbi_vi.ppl`` and Pyro.

Each model is one function of a *backend* (``OURS`` or ``pyro_backend()``): the backend
supplies ``sample``, ``plate`` and the distributions, so both packages run the very same
model code and score the same log density (checked by :func:`log_joint` on reference draws
in ``ppl_posteriordb.py``). The models broadcast over a leading particle dim (``sbi_vi.ppl``
runs all particles in one pass; Pyro runs one particle without it).

Posteriors (posteriordb name, reference: the collection's 10 x 1,000 NUTS draws):

- ``eight_schools``: ``eight_schools-eight_schools_noncentered`` data and reference, the
  model written *centered* (``theta ~ normal(mu, tau)``, the harder geometry), 10 params;
- ``funnel``: Neal's funnel, ``v ~ N(0, 3)``, ``x_1..9 ~ N(0, exp(v / 2))`` (not in
  posteriordb; the reference is 10,000 exact draws), 10 params;
- ``kidiq``: ``kidiq-kidscore_momhsiq``, a linear regression with improper flat priors on
  its coefficients, 4 params;
- ``arK``: ``arK-arK``, an AR(5) model, 7 params;
- ``gp_pois``: ``gp_pois_regr-gp_pois_regr``, a latent GP with Poisson counts (compared on
  ``f = L f_tilde``; jitter ``1e-4 alpha² + 1e-6`` instead of Stan's 1e-10, which float32
  Cholesky cannot take when a draw has a long length scale),
  13 params;
- ``diamonds``: ``diamonds-diamonds``, a badly conditioned 26-parameter regression (brms).

Data and reference draws are read from a posteriordb checkout or its git directory
(``--posteriordb``; e.g. the ``stan-dev/posteriordb`` repository).
"""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributions as td

from sbi_vi import ppl
from sbi_vi.ppl import distributions as sd

__all__ = ["MODELS", "OURS", "Posterior", "load", "pyro_backend"]

_ROOT = "posterior_database"


def _read_zip_json(pdb: Path, rel: str) -> Any:
    """``rel`` (a ``.json.zip`` under posterior_database/) from a checkout or a git dir."""
    path = pdb / _ROOT / rel
    if path.exists():
        raw = path.read_bytes()
    else:  # a bare git directory (e.g. a mirror)
        raw = subprocess.run(
            ["git", f"--git-dir={pdb}", "show", f"HEAD:{_ROOT}/{rel}"],
            capture_output=True,
            check=True,
        ).stdout
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return json.loads(zf.read(zf.namelist()[0]))


def _reference(pdb: Path, posterior: str, columns: list[str]) -> torch.Tensor:
    chains = _read_zip_json(pdb, f"reference_posteriors/draws/draws/{posterior}.json.zip")
    return torch.tensor(
        [[v for c in chains for v in c[name]] for name in columns], dtype=torch.float64
    ).T


# --- backends ----------------------------------------------------------------------------


OURS = SimpleNamespace(
    sample=ppl.sample,
    plate=ppl.plate,
    deterministic=ppl.deterministic,
    Normal=td.Normal,
    HalfNormal=td.HalfNormal,
    HalfCauchy=td.HalfCauchy,
    StudentT=td.StudentT,
    Gamma=td.Gamma,
    Poisson=td.Poisson,
    HalfStudentT=lambda df, scale: sd.HalfStudentT(df, scale),
    event=lambda d, n: td.Independent(d, n),
    flat=lambda support, shape: sd.ImproperUniform(support, event_shape=shape),
    real=td.constraints.real,
)


def pyro_backend() -> SimpleNamespace:
    """The same names for Pyro (imported lazily: Pyro is an optional benchmark dependency)."""
    import pyro
    import pyro.distributions as dist

    return SimpleNamespace(
        sample=pyro.sample,
        plate=pyro.plate,
        deterministic=pyro.deterministic,
        Normal=dist.Normal,
        HalfNormal=dist.HalfNormal,
        HalfCauchy=dist.HalfCauchy,
        StudentT=dist.StudentT,
        Gamma=dist.Gamma,
        Poisson=dist.Poisson,
        HalfStudentT=lambda df, scale: dist.FoldedDistribution(dist.StudentT(df, 0.0, scale)),
        event=lambda d, n: d.to_event(n),
        flat=lambda support, shape: dist.ImproperUniform(support, (), shape),
        real=dist.constraints.real,
    )


# --- models ------------------------------------------------------------------------------


def eight_schools(b: Any, y: torch.Tensor, sigma: torch.Tensor) -> None:
    mu = b.sample("mu", b.Normal(0.0, 5.0))
    tau = b.sample("tau", b.HalfCauchy(5.0))
    with b.plate("schools", y.shape[0]):
        theta = b.sample("theta", b.Normal(mu, tau))
        b.sample("y", b.Normal(theta, sigma), obs=y)


def funnel(b: Any, dim: int) -> None:
    v = b.sample("v", b.Normal(0.0, 3.0))
    with b.plate("dims", dim):
        b.sample("x", b.Normal(torch.zeros(()), (0.5 * v).exp()))


def kidiq(b: Any, mom_hs: torch.Tensor, mom_iq: torch.Tensor, kid_score: torch.Tensor) -> None:
    beta = b.sample("beta", b.flat(b.real, (3,)))
    sigma = b.sample("sigma", b.HalfCauchy(2.5))
    with b.plate("data", kid_score.shape[0]):
        mean = beta[..., 0] + beta[..., 1] * mom_hs + beta[..., 2] * mom_iq
        b.sample("y", b.Normal(mean, sigma), obs=kid_score)


def ark(b: Any, lags: torch.Tensor, y: torch.Tensor) -> None:
    alpha = b.sample("alpha", b.Normal(0.0, 10.0))
    beta = b.sample("beta", b.event(b.Normal(torch.zeros(lags.shape[1]), 10.0), 1))
    sigma = b.sample("sigma", b.HalfCauchy(2.5))
    with b.plate("time", y.shape[0]):
        b.sample("y", b.Normal(alpha + (lags * beta).sum(-1), sigma), obs=y)


def gp_pois(b: Any, sq_dist: torch.Tensor, k: torch.Tensor) -> None:
    rho = b.sample("rho", b.Gamma(25.0, 4.0))
    alpha = b.sample("alpha", b.HalfNormal(2.0))
    with b.plate("obs", k.shape[0]):
        f_tilde = b.sample("f_tilde", b.Normal(0.0, 1.0))
        cov = alpha[..., None] ** 2 * torch.exp(-0.5 * sq_dist / rho[..., None] ** 2)
        cov = cov + (1e-4 * alpha[..., None] ** 2 + 1e-6) * torch.eye(k.shape[0])
        f = b.deterministic("f", (torch.linalg.cholesky(cov) @ f_tilde[..., None]).squeeze(-1))
        b.sample("k", b.Poisson(f.exp()), obs=k)


def diamonds(b: Any, xc: torch.Tensor, y: torch.Tensor) -> None:
    coef = b.sample("b", b.event(b.Normal(torch.zeros(xc.shape[1]), 1.0), 1))
    intercept = b.sample("Intercept", b.StudentT(3.0, 8.0, 10.0))
    sigma = b.sample("sigma", b.HalfStudentT(3.0, 10.0))
    with b.plate("data", y.shape[0]):
        b.sample("y", b.Normal(intercept + (xc * coef).sum(-1), sigma), obs=y)


# --- posteriors --------------------------------------------------------------------------


@dataclass
class Posterior:
    """A model, its data, the reference draws and the map from latent draws to columns.

    Attributes:
        name: Short name (table row).
        model: ``model(backend, *args)``.
        args: The data.
        latents: Latent site names.
        sites: The sites compared with the reference (latents or deterministic sites).
        columns: Reference column names.
        reference: Reference draws ``[S, D]`` (float64), columns in ``columns`` order.
    """

    name: str
    model: Callable[..., None]
    args: tuple
    latents: list[str]
    sites: list[str]
    columns: list[str]
    reference: torch.Tensor

    def to_columns(self, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{site: [S, ...]}`` draws of :attr:`sites` -> ``[S, D]`` in ``columns`` order."""
        n = next(iter(samples.values())).shape[0]
        return torch.cat(
            [torch.as_tensor(samples[k]).reshape(n, -1).double() for k in self.sites], 1
        )


def _indexed(name: str, n: int) -> list[str]:
    return [f"{name}[{i}]" for i in range(1, n + 1)]


def load(name: str, pdb: Path) -> Posterior:
    """The posterior ``name`` (one of :data:`MODELS`) with its data and reference draws."""
    if name == "eight_schools":
        d = _read_zip_json(pdb, "data/data/eight_schools.json.zip")
        cols = [*_indexed("theta", 8), "mu", "tau"]
        ref = _reference(pdb, "eight_schools-eight_schools_noncentered", cols)
        args = (torch.tensor(d["y"]).float(), torch.tensor(d["sigma"]).float())
        latents = ["theta", "mu", "tau"]
        return Posterior(name, eight_schools, args, latents, latents, cols, ref)
    if name == "funnel":
        g = torch.Generator().manual_seed(123)
        v = 3.0 * torch.randn(10_000, 1, generator=g, dtype=torch.float64)
        x = torch.randn(10_000, 9, generator=g, dtype=torch.float64) * (0.5 * v).exp()
        cols = ["v", *_indexed("x", 9)]
        return Posterior(name, funnel, (9,), ["v", "x"], ["v", "x"], cols, torch.cat([v, x], 1))
    if name == "kidiq":
        d = _read_zip_json(pdb, "data/data/kidiq.json.zip")
        args = tuple(torch.tensor(d[k]).float() for k in ("mom_hs", "mom_iq", "kid_score"))
        cols = [*_indexed("beta", 3), "sigma"]
        ref = _reference(pdb, "kidiq-kidscore_momhsiq", cols)
        return Posterior(name, kidiq, args, ["beta", "sigma"], ["beta", "sigma"], cols, ref)
    if name == "arK":
        d = _read_zip_json(pdb, "data/data/arK.json.zip")
        y, k = torch.tensor(d["y"]).float(), int(d["K"])
        lags = torch.stack([y[k - j - 1 : len(y) - j - 1] for j in range(k)], 1)
        cols = ["alpha", *_indexed("beta", k), "sigma"]
        ref = _reference(pdb, "arK-arK", cols)
        latents = ["alpha", "beta", "sigma"]
        return Posterior(name, ark, (lags, y[k:]), latents, latents, cols, ref)
    if name == "gp_pois":
        d = _read_zip_json(pdb, "data/data/gp_pois_regr.json.zip")
        x = torch.tensor(d["x"]).float()
        sq = (x[:, None] - x[None, :]) ** 2
        cols = ["rho", "alpha", *_indexed("f", len(x))]
        ref = _reference(pdb, "gp_pois_regr-gp_pois_regr", cols)

        args = (sq, torch.tensor(d["k"]).float())
        return Posterior(
            name, gp_pois, args, ["rho", "alpha", "f_tilde"], ["rho", "alpha", "f"], cols, ref
        )
    if name == "diamonds":
        d = _read_zip_json(pdb, "data/data/diamonds.json.zip")
        x = torch.tensor(d["X"], dtype=torch.float64)[:, 1:]
        xc = (x - x.mean(0)).float()
        cols = [*_indexed("b", xc.shape[1]), "Intercept", "sigma"]
        ref = _reference(pdb, "diamonds-diamonds", cols)
        latents = ["b", "Intercept", "sigma"]
        args = (xc, torch.tensor(d["Y"]).float())
        return Posterior(name, diamonds, args, latents, latents, cols, ref)
    raise ValueError(f"`name` must be one of {MODELS}, got {name!r}.")


MODELS = ("eight_schools", "funnel", "kidiq", "arK", "gp_pois", "diamonds")


def bind(post: Posterior, backend: Any) -> Callable[..., None]:
    """``model(*args)`` of ``post`` on ``backend`` (the function the PPLs see)."""
    model = post.model

    def bound(*args: Any) -> None:
        model(backend, *args)

    bound.__name__ = post.name
    return bound
