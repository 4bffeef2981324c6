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
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:
    import pyro
    from pyro import poutine
    from pyro.distributions.util import scale_and_mask
    from pyro.infer.autoguide import AutoContinuous, AutoGuide
    from pyro.poutine.messenger import Messenger
    from pyro.poutine.util import site_is_subsample
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sbi_vi.ppl.pyro needs Pyro: install the optional extra with "
        "`pip install 'sbi_vi[pyro]'` (pyro-ppl>=1.9)."
    ) from err

from sbi_vi._checks import check_positive_int
from sbi_vi.diagnostics.psis import psis
from sbi_vi.ppl.infer.evidence import LogEvidence
from sbi_vi.ppl.infer.summary import DEFAULT_SUMMARIES

__all__ = ["sample_posterior"]

_PARTICLES = "_sbi_vi_particles"


@dataclass(frozen=True)
class _Site:
    """A model site as the unvectorised prototype run saw it."""

    kind: str  # "latent" | "deterministic" | "observed"
    shape: tuple[int, ...]  # natural shape, the observation plate at full size
    plate_axis: int | None  # axis of the observation plate in `shape`, None for globals


@dataclass(frozen=True)
class _Layout:
    """What the prototype run found: the sites, the plate nesting and the observation plate."""

    sites: dict[str, _Site]
    max_plate_nesting: int
    plate: str | None
    plate_size: int | None
    plate_dim: int | None
    fixed_size: int | None  # the model's `subsample_size` for the plate, if it fixes one
    point_mass: bool  # every latent site of the guide is a Delta: no density, no weights


class _PlateIndices(Messenger):
    """Hand the observation plate the given indices (its subsample site's value)."""

    def __init__(self, name: str, indices: Tensor) -> None:
        super().__init__()
        self.name, self.indices = name, indices

    def _pyro_sample(self, msg: Any) -> None:
        if msg["name"] == self.name and site_is_subsample(msg):
            msg["value"] = self.indices


@contextlib.contextmanager
def _guide_plate(guide: Any, name: str, size: int, dim: int, indices: Tensor) -> Iterator[None]:
    """Give a Pyro autoguide the observation plate with ``indices`` for the block."""
    if not isinstance(guide, AutoGuide) or guide.create_plates is not None:
        yield
        return
    guide.create_plates = lambda *a, **k: pyro.plate(name, size, dim=dim, subsample=indices)
    try:
        yield
    finally:
        guide.create_plates = None


def _kind(site: Any) -> str:
    if not site["is_observed"]:
        return "latent"
    if site["infer"].get("_deterministic", False):
        return "deterministic"
    return "observed"


def _plate_axis(site: Any, plate: str, n: int) -> int | None:
    frames = [f for f in site["cond_indep_stack"] if f.name == plate and f.vectorized]
    if not frames:
        return None
    ndim = site["value"].dim()
    axis = ndim - site["fn"].event_dim + frames[0].dim
    if axis < 0:  # a deterministic site whose event covers the plate dim
        axis = ndim + frames[0].dim
    if not 0 <= axis < ndim or site["value"].shape[axis] != n:
        raise ValueError(
            f"site {site['name']!r} has shape {tuple(site['value'].shape)} but should have "
            f"{n} entries on the dim of plate {plate!r} ({frames[0].dim}); the model must "
            "broadcast with the plate's dim."
        )
    return axis


def _find_plate(trace: Any, obs_plate: str | None) -> Any:
    """The observation plate's subsample site: named, the one that subsamples, or the only one."""
    plates = {n: s for n, s in trace.nodes.items() if site_is_subsample(s)}
    plates.pop(_PARTICLES, None)
    if obs_plate is not None:
        if obs_plate not in plates:
            raise ValueError(
                f"`obs_plate` names plate {obs_plate!r}, but the model has "
                f"{sorted(plates) or 'no plates'}."
            )
        return plates[obs_plate]
    subsampling = [
        s
        for s in plates.values()
        if s["fn"].subsample_size is not None or len(s["value"]) < s["fn"].size
    ]
    if len(subsampling) > 1:
        raise ValueError(
            f"the model subsamples several plates ({sorted(s['name'] for s in subsampling)}); "
            "name the observation plate with `obs_plate=`."
        )
    if subsampling:
        return subsampling[0]
    return next(iter(plates.values())) if len(plates) == 1 else None


def _layout(model: Callable, guide: Callable, args: tuple, kwargs: dict, obs_plate: str | None):
    """Run guide and model once, unvectorised, to learn the sites and the plates."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    subsample = _find_plate(trace, obs_plate)
    plate = None if subsample is None else subsample["name"]
    n_proto = None if subsample is None else len(subsample["value"])
    sites, dims, plate_dim = {}, [0], None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        for f in site["cond_indep_stack"]:
            if f.vectorized:
                dims.append(-f.dim)
                plate_dim = f.dim if f.name == plate else plate_dim
        axis = None if plate is None else _plate_axis(site, plate, n_proto)
        shape = list(site["value"].shape)
        if axis is not None:
            shape[axis] = subsample["fn"].size
        sites[name] = _Site(_kind(site), tuple(shape), axis)
    size = None if subsample is None else subsample["fn"].size
    fixed_size = None if subsample is None else subsample["fn"].subsample_size
    if plate is not None and plate_dim is None:
        raise ValueError(f"plate {plate!r} holds no vectorised site; name another `obs_plate`.")
    point_mass = all(
        _is_delta(s["fn"])
        for s in guide_trace.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    )
    return _Layout(sites, max(dims), plate, size, plate_dim, fixed_size, point_mass)


def _is_delta(fn: Any) -> bool:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, pyro.distributions.Delta)


def _select(layout: _Layout, return_sites: Sequence[str] | None, return_observed: bool):
    wanted = {n for n, s in layout.sites.items() if s.kind != "observed" or return_observed}
    if return_sites is None:
        return [n for n in layout.sites if n in wanted]
    if isinstance(return_sites, str) or not isinstance(return_sites, Sequence):
        raise TypeError(f"`return_sites` must be a list of site names, got {return_sites!r}.")
    for name in return_sites:
        if name not in layout.sites:
            raise ValueError(
                f"`return_sites` names {name!r}, which is not a site of the model; its sites "
                f"are {sorted(layout.sites)}."
            )
        if name not in wanted:
            raise ValueError(
                f"`return_sites` names the observed site {name!r}; pass return_observed=True "
                "to draw it from the posterior predictive."
            )
    return list(dict.fromkeys(return_sites))


def _log_density(trace: Any, keep: Callable[[Any], bool], n_particles: int, k: int, local):
    """``Σ log_prob`` over the kept sites of a particle-vectorised trace, shape ``[S]``.

    ``local(site, lp)`` undoes the plate's subsample scale of a per-observation site and
    drops the padding of its chunk (the weights are those of the full data).
    """
    total = torch.zeros(n_particles, dtype=torch.float64)
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or not keep(site):
            continue
        lp = site["fn"].log_prob(site["value"])
        lp = local(site, scale_and_mask(lp, site["scale"], site["mask"]))
        if not isinstance(lp, Tensor) or lp.dim() < k + 1:
            lp = torch.as_tensor(lp).reshape((1,) * (k + 1))
        lp = lp.movedim(lp.dim() - k - 1, 0)
        total = total + lp.reshape(lp.shape[0], -1).double().sum(-1)
    return total


def _in_plate(site: Any, plate: str | None) -> bool:
    return plate is not None and any(f.name == plate for f in site["cond_indep_stack"])


def _draws(site: Any, spec: _Site, n_particles: int, n: int | None, n_real: int | None) -> Tensor:
    """A site's values ``[S, *shape]`` from a particle-vectorised run on a chunk of n.

    The chunk's first ``n_real`` indices are kept (the rest pads it to a fixed size).
    """
    value = site["fn"].sample() if spec.kind == "observed" else site["value"]
    shape = list(spec.shape)
    if spec.plate_axis is not None:
        shape[spec.plate_axis] = n
    size = math.prod(shape)
    if value.numel() == n_particles * size:
        value = value.reshape(n_particles, *shape)
    elif value.numel() == size:  # constant across particles (e.g. a fixed deterministic)
        value = value.reshape(shape).expand(n_particles, *shape)
    else:
        raise _shape_error(site, value, n_particles, shape)
    if spec.plate_axis is not None and n_real != n:
        value = value.narrow(1 + spec.plate_axis, 0, n_real)
    return value


def _shape_error(site: Any, value: Tensor, n_particles: int, shape: list[int]) -> ValueError:
    return ValueError(
        f"site {site['name']!r} has shape {tuple(value.shape)} under the particle plate, which "
        f"does not hold {n_particles} draws of shape {tuple(shape)}; write the model so that it "
        "broadcasts over extra batch dims on the left (negative plate dims, `...` indexing)."
    )


def _chunk_run(model, guide, args, kwargs, layout, n_particles, indices, fixed):
    """Vectorised guide and model traces on one chunk of the observation plate."""
    k = layout.max_plate_nesting
    plate = layout.plate
    guide_fn = guide if fixed is None else poutine.replay(guide, trace=fixed)
    with contextlib.ExitStack() as stack:
        if plate is not None:
            stack.enter_context(_PlateIndices(plate, indices))
            stack.enter_context(
                _guide_plate(guide, plate, layout.plate_size, layout.plate_dim, indices)
            )
        stack.enter_context(pyro.plate(_PARTICLES, n_particles, dim=-(k + 1)))
        guide_trace = poutine.trace(guide_fn).get_trace(*args, **kwargs)
        model_fn = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(model_fn).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def _globals_of(guide_trace: Any, plate: str | None) -> Any:
    fixed = poutine.Trace()
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            if not _in_plate(site, plate):
                fixed.add_node(name, **site)
    return fixed


def _chunk(model, guide, args, kwargs, layout, sites, n_particles, idx, n_real, fixed):
    """log p - log q ``[S]`` and the draws of ``sites`` on one chunk of the plate.

    Global sites count only in the first chunk (``fixed is None``); later chunks replay them.
    Only the first ``n_real`` indices of the chunk count (the rest pads it to a fixed size).
    """
    plate, k = layout.plate, layout.max_plate_nesting
    n = None if idx is None else len(idx)
    guide_trace, model_trace = _chunk_run(
        model, guide, args, kwargs, layout, n_particles, idx, fixed
    )

    def counted(site):
        return fixed is None or _in_plate(site, plate)

    def local(site, lp):
        frames = [f for f in site["cond_indep_stack"] if f.name == plate and f.vectorized]
        if not frames:
            return lp
        lp = lp * (n / layout.plate_size)  # undo the plate's subsample scale
        dim = lp.dim() + frames[0].dim
        return lp.narrow(dim, 0, n_real) if n_real != n and lp.shape[dim] == n else lp

    log_p = _log_density(model_trace, counted, n_particles, k, local)
    log_q = _log_density(
        guide_trace, lambda s: not s["is_observed"] and counted(s), n_particles, k, local
    )
    draws = {
        name: _draws(model_trace.nodes[name], layout.sites[name], n_particles, n, n_real)
        for name in sites
        if fixed is None or layout.sites[name].plate_axis is not None
    }
    return log_p - log_q, draws, guide_trace


def _chunks(
    layout: _Layout, batch_size: int | None, guide: Any
) -> list[tuple[Tensor | None, int | None]]:
    """The chunks of the observation plate: ``(indices, number of real ones)``.

    A model that fixes ``subsample_size`` is walked in chunks of that size, the last one
    padded with repeated indices whose values and densities are dropped.
    """
    if layout.plate is None:
        return [(None, None)]
    size, n_obs = layout.fixed_size, layout.plate_size
    if size is not None and batch_size not in (None, size):
        raise ValueError(
            f"`batch_size` is {batch_size}, but the model fixes subsample_size={size} for plate "
            f"{layout.plate!r}; pass batch_size=None (or {size}), or declare the plate with "
            "`subsample=` indices instead of a fixed size."
        )
    size = size or batch_size or n_obs
    if size < n_obs and isinstance(guide, AutoContinuous):
        raise ValueError(
            f"{type(guide).__name__} draws every latent jointly, so it cannot be walked in "
            f"chunks of plate {layout.plate!r}; pass batch_size=None, or use AutoNormal."
        )
    out = []
    for idx in torch.arange(n_obs).split(size):
        n_real = len(idx)
        if n_real < size:
            idx = idx.repeat(-(-size // n_real))[:size]
        out.append((idx, n_real))
    return out


def _posterior(model, guide, args, kwargs, layout, sites, n_particles, batch_size):
    """Draws of ``sites`` and ``log_w`` ``[S]`` over the whole observation plate."""
    plate, n_obs = layout.plate, layout.plate_size
    log_w = torch.zeros(n_particles, dtype=torch.float64)
    pieces: dict[str, list[Tensor]] = {s: [] for s in sites}
    fixed = None
    for idx, n_real in _chunks(layout, batch_size, guide):
        try:
            piece, draws, guide_trace = _chunk(
                model, guide, args, kwargs, layout, sites, n_particles, idx, n_real, fixed
            )
        except (ValueError, RuntimeError, IndexError) as err:
            if plate is None or fixed is not None:
                raise
            raise ValueError(
                f"the model and guide failed on a chunk of {len(idx)} of the {n_obs} indices "
                f"of plate {plate!r}: {err} Both must pick their per-observation data and "
                "latents by the indices the plate yields (`with pyro.plate(...) as idx: "
                "x[idx]`)."
            ) from err
        log_w += piece
        for name, value in draws.items():
            pieces[name].append(value)
        if fixed is None:
            fixed = _globals_of(guide_trace, plate)
    draws = {
        name: torch.cat(p, dim=1 + layout.sites[name].plate_axis) if len(p) > 1 else p[0]
        for name, p in pieces.items()
    }
    return draws, log_w


def _evidence(log_w: Tensor) -> tuple[float, LogEvidence]:
    """PSIS k-hat and the evidence estimate of ``log_w`` ``[S]`` (as ``SVI.log_evidence``)."""
    log_w = log_w.double()
    result = psis(log_w)
    w = torch.exp(log_w - log_w.max())
    mean = w.mean()
    stderr = float(w.std() / math.sqrt(len(w)) / mean) if float(mean) > 0 else math.inf
    evidence = LogEvidence(float(result.log_evidence), stderr, float(result.khat), len(w))
    return float(result.khat), evidence


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
