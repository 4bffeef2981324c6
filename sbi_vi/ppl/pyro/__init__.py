"""Posterior summaries of a user's own Pyro model and guide (the optional extra ``pyro``).

scvi-tools' ``PyroSampleMixin.sample_posterior`` runs the guide and the model once per
sample and once per minibatch. :func:`sample_posterior` offers the same contract on any
Pyro ``model`` / ``guide`` pair, with three differences:

- The draws are vectorised: both run once per chunk inside a particle plate of
  ``num_samples`` (the way Pyro's ``Trace_ELBO(vectorize_particles=True)`` and
  ``Predictive(parallel=True)`` run), not once per sample.
- The observation plate is walked in chunks of ``batch_size`` indices. Global sites (outside
  the plate) are drawn once, in the first chunk, and *replayed* in every later chunk, so
  the per-observation draws of every chunk are conditioned on the same global draws and the
  result is one joint sample; per-observation sites are concatenated along the plate.
- The same draws give the importance weights ``log p(x, θ) - log q(θ)`` over the full data,
  hence PSIS k-hat (:func:`sbi_vi.diagnostics.psis`) and the evidence estimate.

The observation-plate contract: the plate is a ``pyro.plate(name, size, ...)`` whose
*indices* the model (and the guide, where it has per-observation sites) uses to pick its
data and latents, Pyro's own subsampling idiom::

    with pyro.plate("obs", len(x)) as idx:          # or subsample=idx / subsample_size
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

``sample_posterior`` hands that plate the indices of each chunk; the arguments are passed
whole. A model that fixes ``subsample_size=B`` is walked in chunks of B, the last one padded
with repeated indices whose draws and densities are dropped. Pyro autoguides
(``AutoNormal`` ...) receive the plate through their ``create_plates`` hook for the
duration of the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:
    from pyro import poutine
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sbi_vi.ppl.pyro needs Pyro: install the optional extra with "
        "`pip install 'sbi_vi[pyro]'` (pyro-ppl>=1.9)."
    ) from err

from sbi_vi._checks import check_positive_int
from sbi_vi.diagnostics.evidence import LogEvidence, log_evidence_from_log_weights
from sbi_vi.ppl.infer.summary import DEFAULT_SUMMARIES
from sbi_vi.ppl.pyro._chunks import _posterior
from sbi_vi.ppl.pyro._layout import _layout, _select

__all__ = ["sample_posterior"]


def _evidence(log_w: Tensor) -> tuple[float, LogEvidence]:
    """PSIS k-hat and the evidence estimate of ``log_w`` ``[S]`` (as ``SVI.log_evidence``)."""
    evidence = log_evidence_from_log_weights(log_w.double())
    return float(evidence.khat), evidence


def sample_posterior(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    return_sites: Sequence[str] | None = None,
    batch_size: int | None = None,
    return_observed: bool = False,
    return_samples: bool = False,
    summary_fun: Mapping[str, Callable[..., np.ndarray]] | None = None,
    obs_plate: str | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Summarise the posterior of a Pyro model, site by site, with PSIS and the evidence.

    scvi-tools' ``PyroSampleMixin.sample_posterior`` contract for a user's own Pyro
    ``model`` and fitted ``guide``, vectorised over samples and minibatched over the
    observation plate (see the module docstring for the plate contract).

    Args:
        model: The Pyro model, called as ``model(*args, **kwargs)``.
        guide: The fitted guide (a Pyro autoguide or a function), same arguments.
        *args: The model's arguments (passed whole to every chunk).
        num_samples: Number of joint posterior draws S (at least 2: PSIS needs two).
        return_sites: Sites to summarise; default: every latent and deterministic site of
            the model (and the observed ones with ``return_observed``).
        batch_size: Indices of the observation plate per chunk (``None``: all at once, or
            the model's ``subsample_size`` where it fixes one; then only that size is valid).
        return_observed: Also draw the observed sites, each from its distribution given the
            posterior draw of the latents (the posterior predictive).
        return_samples: Add ``"posterior_samples"``: ``{site: (S, *shape)}`` arrays.
        summary_fun: ``{name: fun}`` replacing the default summaries (``means``, ``stds``,
            ``q05``, ``q95``); each is called as ``fun(samples, axis=0)``.
        obs_plate: Name of the observation plate; default: the one plate of the model that
            subsamples (declared with ``subsample_size`` or fewer ``subsample`` indices than
            its size), else none.
        seed: Seed of the draws (the caller's RNG state is restored afterwards).
        **kwargs: The model's keyword arguments (the names of this function's own keywords
            go to it, not to the model: pass such model arguments positionally).

    Returns:
        ``{summary name: {site: np.ndarray of the site's shape}}``, plus
        ``"posterior_samples"`` with ``return_samples``, and from the same draws
        ``"log_weights"`` (``[S]`` array of ``log p(x, θ_s) - log q(θ_s)`` over the full
        data), ``"khat"`` (PSIS k̂ of those weights; > 0.7: do not trust the guide) and
        ``"log_evidence"`` (a :class:`~sbi_vi.ppl.infer.evidence.LogEvidence`: the estimate
        of log p(x) with its standard error); both ``None`` for a point-mass guide
        (``AutoDelta``), which has no density.

    Raises:
        ValueError: If ``num_samples`` < 2 or ``batch_size`` is not positive; if
            ``return_sites`` names an unknown site, or an observed one without
            ``return_observed``; if ``batch_size`` differs from a ``subsample_size`` that the
            model fixes, or chunks an ``AutoContinuous`` guide (it draws every latent
            jointly); if ``obs_plate`` is not a plate of the model, the model
            subsamples several plates and none is named, ``batch_size`` is given for a
            model without an observation plate, or the model does not follow the plate's
            indices; if a site's shape does not broadcast with the particle plate.
        TypeError: If an argument has the wrong type.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("obs", len(x)) as idx:
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])
        >>> x = torch.randn(10)
        >>> guide = AutoNormal(model)
        >>> out = sample_posterior(model, guide, x, num_samples=200, batch_size=4, seed=0)
        >>> means = out["means"]
        >>> sorted(means), means["mu"].shape, out["log_weights"].shape
        (['mu'], (), (200,))
    """
    num_samples = check_positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError(f"`num_samples` must be at least 2 (PSIS needs two), got {num_samples}.")
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if obs_plate is not None and not isinstance(obs_plate, str):
        raise TypeError(f"`obs_plate` must be a plate name (str), got {obs_plate!r}.")
    summaries = DEFAULT_SUMMARIES if summary_fun is None else summary_fun
    if not isinstance(summaries, Mapping) or not all(
        isinstance(k, str) and callable(f) for k, f in summaries.items()
    ):
        raise TypeError("`summary_fun` must be a dict {name: callable}, e.g. {'means': np.mean}.")
    seeded = contextlib.nullcontext() if seed is None else poutine.seed(rng_seed=seed)
    with seeded, torch.no_grad():
        layout = _layout(model, guide, args, kwargs, obs_plate)
        sites = _select(layout, return_sites, return_observed)
        if batch_size is not None and layout.plate is None:
            raise ValueError(
                "`batch_size` splits the observation plate, but the model subsamples no plate; "
                "name it with `obs_plate=`."
            )
        draws, log_w = _posterior(
            model, guide, args, kwargs, layout, sites, num_samples, batch_size
        )
    samples = {s: v.detach().cpu().numpy() for s, v in draws.items()}
    results: dict[str, Any] = {
        name: {s: np.asarray(fun(v, axis=0)) for s, v in samples.items()}
        for name, fun in summaries.items()
    }
    if return_samples:
        results["posterior_samples"] = samples
    results["log_weights"] = log_w.double().cpu().numpy()
    if layout.point_mass:  # AutoDelta: log q is not a density, the weights mean nothing
        results["khat"], results["log_evidence"] = None, None
    else:
        results["khat"], results["log_evidence"] = _evidence(log_w)
    return results
