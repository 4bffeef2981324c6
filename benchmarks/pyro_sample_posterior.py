"""``sbi_vi.ppl.pyro.sample_posterior`` against scvi-tools' ``PyroSampleMixin.sample_posterior``.

One Pyro model with a global mean and one latent per observation (``mu ~ N(0, 3²)``,
``z_i ~ N(mu, 1)``, ``x_i ~ N(z_i, 1)``) and one fixed mean-field guide near the posterior
(the same parameters for both libraries, no training: only the summaries are timed), at
``--num-samples`` draws × ``--n-obs`` observations, one thread.

- scvi-tools: its own ``PyroSampleMixin.sample_posterior`` on a minimal
  ``PyroBaseModuleClass`` / ``BaseModelClass`` model over an AnnData, run in the venv named
  by ``--scvi-python`` (scvi-tools 1.5.1 with pyro there) as a subprocess of this script.
- sbi_vi: ``sbi_vi.ppl.pyro.sample_posterior`` on the same model written with the plate's
  indices, once on the whole plate and once in chunks of scvi-tools' default batch size.

Both return the means of ``mu`` and ``z``; the script prints their largest difference in
Monte Carlo standard errors as a check that the two compute the same thing.

Run (from the repository root)::

    .venv/bin/python benchmarks/pyro_sample_posterior.py --scvi-python /tmp/scvivenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from harness import Timer  # benchmarks/ is on sys.path when run as a script
from pyro.distributions.constraints import positive
from pyro.nn import PyroModule, PyroParam


class Guide(PyroModule):
    """q(mu) q(z_i): per-observation Normal parameters selected by the plate's indices."""

    def __init__(self, n_obs: int, plate_name: str) -> None:
        super().__init__()
        x = data(n_obs)  # near the posterior: mu ≈ mean(x), z_i | mu ≈ N((mu + x_i) / 2, 1/2)
        self.n_obs, self.plate_name = n_obs, plate_name
        self.mu_loc = PyroParam(x.mean())
        self.mu_scale = PyroParam(torch.tensor((2.0 / n_obs) ** 0.5), constraint=positive)
        self.z_loc = PyroParam((x.mean() + x) / 2.0)
        self.z_scale = PyroParam(torch.full((n_obs,), 0.75), constraint=positive)

    def forward(self, x: torch.Tensor, ind: torch.Tensor | None = None) -> None:
        pyro.sample("mu", dist.Normal(self.mu_loc, self.mu_scale))
        with pyro.plate(self.plate_name, self.n_obs, subsample=ind) as idx:
            pyro.sample("z", dist.Normal(self.z_loc[idx], self.z_scale[idx]))


def data(n_obs: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return 0.5 + torch.randn(n_obs, generator=g) * 2**0.5


def run_scvi(num_samples: int, n_obs: int) -> dict[str, Any]:
    """scvi-tools' own sample_posterior on a minimal Pyro model class."""
    import anndata
    from scvi import REGISTRY_KEYS
    from scvi.data import AnnDataManager
    from scvi.data.fields import LayerField, NumericalObsField
    from scvi.model.base import BaseModelClass, PyroSampleMixin
    from scvi.module.base import PyroBaseModuleClass

    n_total = n_obs

    def model(x, ind):  # scvi-tools hands the model the minibatch, not the whole data
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("obs_plate", n_total, subsample=ind):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    class Module(PyroBaseModuleClass):
        def __init__(self, n: int) -> None:
            super().__init__()
            self._model, self._guide = model, Guide(n, "obs_plate")

        @staticmethod
        def _get_fn_args_from_batch(tensor_dict):
            x = tensor_dict[REGISTRY_KEYS.X_KEY][:, 0]
            return (x, tensor_dict[REGISTRY_KEYS.INDICES_KEY].long().reshape(-1)), {}

        @property
        def model(self):
            return self._model

        @property
        def guide(self):
            return self._guide

        @property
        def list_obs_plate_vars(self):
            return {"name": "obs_plate", "in": [], "sites": {"z": 1}}

    class Model(PyroSampleMixin, BaseModelClass):
        def __init__(self, adata) -> None:
            super().__init__(adata)
            self.module = Module(adata.n_obs)
            self.init_params_ = self._get_init_params(locals())

        @classmethod
        def setup_anndata(cls, adata, **kwargs):
            setup_method_args = cls._get_setup_method_args(**locals())
            adata.obs["_indices"] = np.arange(adata.n_obs).astype("int64")
            fields = [
                LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False),
                NumericalObsField(REGISTRY_KEYS.INDICES_KEY, "_indices"),
            ]
            manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
            manager.register_fields(adata, **kwargs)
            cls.register_manager(manager)

        def train(self):  # sampling only: the guide's parameters are fixed
            raise NotImplementedError

    adata = anndata.AnnData(data(n_obs).numpy()[:, None].astype(np.float32))
    Model.setup_anndata(adata)
    pyro.clear_param_store()
    m = Model(adata)
    pyro.set_rng_seed(0)
    timer = Timer()
    with timer.time():
        out = m.sample_posterior(
            num_samples=num_samples, accelerator="cpu", return_sites=["mu", "z"]
        )
    return {
        "cpu_s": timer.cpu,
        "wall_s": timer.wall,
        "means": {k: np.asarray(v).tolist() for k, v in out["post_sample_means"].items()},
        "stds": {k: np.asarray(v).tolist() for k, v in out["post_sample_stds"].items()},
    }


def run_ours(num_samples: int, n_obs: int, batch_size: int | None) -> dict[str, Any]:
    from sbi_vi.ppl.pyro import sample_posterior

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("obs", len(x)) as idx:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    pyro.clear_param_store()  # PyroModule parameters live in Pyro's global store
    guide = Guide(n_obs, "obs")
    x = data(n_obs)
    timer = Timer()
    with timer.time():
        out = sample_posterior(
            model, guide, x, num_samples=num_samples, batch_size=batch_size, seed=0
        )
    return {
        "cpu_s": timer.cpu,
        "wall_s": timer.wall,
        "means": {k: np.asarray(v).tolist() for k, v in out["means"].items()},
        "stds": {k: np.asarray(v).tolist() for k, v in out["stds"].items()},
        "khat": out["khat"],
        "log_evidence": out["log_evidence"].value,
        "log_evidence_stderr": out["log_evidence"].stderr,
    }


def _max_z(a: dict, b: dict, num_samples: int) -> float:
    """Largest |mean difference| over sites and entries, in Monte Carlo standard errors."""
    worst = 0.0
    for site in a["means"]:
        diff = np.abs(np.asarray(a["means"][site]) - np.asarray(b["means"][site]))
        se = np.asarray(a["stds"][site]) * np.sqrt(2.0 / num_samples)
        worst = max(worst, float(np.max(diff / se)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--n-obs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128, help="scvi-tools' default")
    parser.add_argument("--scvi-python", default=None, help="python of a scvi-tools venv")
    parser.add_argument("--scvi-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.scvi_only:
        print(json.dumps(run_scvi(args.num_samples, args.n_obs)))
        return
    run_ours(10, 10, 4)  # warm-up: imports (arviz for PSIS) and first-call costs
    rows = {
        "sbi_vi (whole plate)": run_ours(args.num_samples, args.n_obs, None),
        f"sbi_vi (batch_size={args.batch_size})": run_ours(
            args.num_samples, args.n_obs, args.batch_size
        ),
    }
    if args.scvi_python:
        cmd = [args.scvi_python, __file__, "--scvi-only", "--num-samples", str(args.num_samples)]
        cmd += ["--n-obs", str(args.n_obs)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows["scvi-tools 1.5.1 (batch_size=128)"] = json.loads(done.stdout.splitlines()[-1])
    ref = rows.get("scvi-tools 1.5.1 (batch_size=128)")
    print(f"{args.num_samples} samples x {args.n_obs} observations, torch threads = 1")
    head = f"{'':38s} {'CPU s':>8s} {'wall s':>8s} {'x scvi CPU':>11s} {'x scvi wall':>12s}"
    print(f"{head} {'max |Δmean|/se':>15s}")
    for name, row in rows.items():
        cpu = f"{ref['cpu_s'] / row['cpu_s']:.0f}" if ref else "-"
        wall = f"{ref['wall_s'] / row['wall_s']:.0f}" if ref else "-"
        z = f"{_max_z(row, ref, args.num_samples):.1f}" if ref and row is not ref else "-"
        line = f"{name:38s} {row['cpu_s']:8.2f} {row['wall_s']:8.2f} {cpu:>11s} {wall:>12s}"
        print(f"{line} {z:>15s}")
    ours = rows["sbi_vi (whole plate)"]
    print(
        f"k-hat {ours['khat']:.2f}, log p(x) ≈ {ours['log_evidence']:.2f} "
        f"± {ours['log_evidence_stderr']:.2f}"
    )


if __name__ == "__main__":
    main()
