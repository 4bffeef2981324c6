"""What one unvectorised run of a Pyro model and guide tells: sites, shapes and plates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
from pyro import poutine
from pyro.poutine.util import site_is_subsample

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
