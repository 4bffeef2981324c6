"""Particle-vectorised draws of a Pyro guide and model, chunk by chunk of the observation plate.

Global sites are drawn in the first chunk and replayed in every later one (one joint
sample); per-observation sites are concatenated along the plate; the log weights add the
global sites once and each chunk's per-observation sites, unscaled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide import AutoContinuous, AutoGuide
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from sbi_vi.ppl.pyro._layout import _PARTICLES, _Layout, _Site


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
