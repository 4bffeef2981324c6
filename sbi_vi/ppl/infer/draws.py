"""Vectorised draws of a fitted guide and model, on the whole data or on chunks of a plate.

The building blocks of the summaries: :func:`guide_values` draws the guide for given plate
indices (autoguides without any handler, guide functions traced), :func:`model_trace`
runs the model on those values, and :func:`posterior_samples` walks the observation plate
in chunks — global sites drawn once, local sites per chunk and concatenated — and returns
every requested site in its plain shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sbi_vi.ppl.handlers import seed as seed_handler
from sbi_vi.ppl.handlers import trace
from sbi_vi.ppl.infer.autoguides.base import AutoGuide
from sbi_vi.ppl.infer.runner import ModelRunner, particle_plate
from sbi_vi.ppl.infer.sites import ModelInfo, natural_shape
from sbi_vi.ppl.particles import PARTICLE_PLATE, vectorize_particles

if TYPE_CHECKING:
    from sbi_vi.ppl.infer.svi import SVI

__all__ = [
    "guide_values",
    "model_trace",
    "posterior_samples",
    "posterior_samples_and_log_weights",
    "resolve_obs_plate",
    "seeded",
    "select_sites",
]


def seeded(seed: int | None) -> Any:
    """A ``seed`` handler for ``seed``, or a no-op context for ``None``."""
    return contextlib.nullcontext() if seed is None else seed_handler(rng_seed=seed)


def guide_values(
    svi: SVI,
    args: tuple,
    kwargs: dict,
    n: int,
    indices: Mapping[str, Tensor],
    fixed: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """``n`` vectorised draws of the guide at the given plate indices, and log q ``[n]``.

    ``fixed`` values (sites drawn earlier) replace the guide's draws of those sites.
    """
    guide, k = svi.guide, svi.objective.max_plate_nesting
    if isinstance(guide, AutoGuide):
        draw = guide.draw(n, indices)
        values, log_q = dict(draw.values), draw.log_q
        if fixed:
            values.update(fixed)
        return values, log_q
    runner = ModelRunner(
        values=dict(fixed or {}),
        indices=dict(indices),
        store=svi.store,
        max_plate_nesting=k,
        log_joint=False,
    )
    with trace() as gt, runner:
        vectorize_particles(guide, n, max_plate_nesting=k)(*args, **kwargs)
    values = {m: s.value for m, s in gt.items() if s.type == "sample" and not s.is_observed}
    return values, gt.batch_log_prob([PARTICLE_PLATE])


def model_trace(
    svi: SVI,
    args: tuple,
    kwargs: dict,
    values: Mapping[str, Tensor],
    n: int,
    indices: Mapping[str, Tensor],
    *,
    uncondition: bool = False,
) -> Any:
    """The trace of the model vectorised over ``n`` particles at the given values."""
    k = svi.objective.max_plate_nesting
    runner = ModelRunner(
        values=dict(values),
        indices=dict(indices),
        store=svi.store,
        max_plate_nesting=k,
        log_joint=False,
        uncondition=uncondition,
    )
    with trace() as tr, particle_plate(n, k), runner:
        svi.model(*args, **kwargs)
    return tr


def resolve_obs_plate(info: ModelInfo, obs_plate: str | None, model: Any = None) -> str | None:
    """The observation plate: given, declared by the model, subsampled, or enclosing all data.

    The model may declare it as ``model.list_obs_plate_vars = {"name": "data", ...}`` (as
    scvi-tools models do). Otherwise the plate the model subsamples is it; without
    subsampling, the one plate that encloses every observed site.

    Raises:
        ValueError: If ``obs_plate`` is not a plate of the model, or the model subsamples
            several plates and none was named.
    """
    if obs_plate is None:
        declared = getattr(model, "list_obs_plate_vars", None)
        if isinstance(declared, Mapping):
            obs_plate = declared.get("name")
    if obs_plate is not None:
        if obs_plate not in info.plates:
            raise ValueError(
                f"`obs_plate` {obs_plate!r} is not a plate of the model; its plates: "
                f"{list(info.plates) or 'none'}."
            )
        return obs_plate
    subsampled = info.subsampled_plates
    if len(subsampled) > 1:
        raise ValueError(
            f"the model subsamples several plates {subsampled}; name the observation plate "
            "with `obs_plate=`."
        )
    if subsampled:
        return subsampled[0]
    observed = [o for o in info.observed if o in info.site_frames]
    if not observed:
        return None
    common = set.intersection(*({f.name for f in info.site_frames[o]} for o in observed))
    return common.pop() if len(common) == 1 else None


def select_sites(
    info: ModelInfo, return_sites: Sequence[str] | None, return_observed: bool
) -> list[str]:
    """The sites to draw: ``return_sites`` checked, or every latent and deterministic site.

    Observed sites come back only as posterior-predictive draws, so they need
    ``return_observed=True`` (by default they are left out; named in ``return_sites``
    without it they are refused: their value is the data, not a posterior draw).

    Raises:
        TypeError: If ``return_sites`` is a string or not a sequence of strings.
        ValueError: If a site is not in the model, or is observed without
            ``return_observed``.
    """
    if not isinstance(return_observed, bool):
        raise TypeError(f"`return_observed` must be a bool, got {return_observed!r}.")
    available = [*info.latent, *info.deterministic]
    observed = [o for o in info.observed if o in info.site_frames]
    if return_sites is None:
        return available + (observed if return_observed else [])
    if isinstance(return_sites, str) or not all(isinstance(s, str) for s in return_sites):
        raise TypeError(
            f"`return_sites` takes a list of site names, e.g. ['mu'], got {return_sites!r}."
        )
    unknown = [s for s in return_sites if s not in available and s not in observed]
    if unknown:
        raise ValueError(
            f"`return_sites` {unknown} are not sites of the model; its sites: "
            f"{available + observed}."
        )
    data = [s for s in return_sites if s in observed]
    if data and not return_observed:
        raise ValueError(
            f"`return_sites` names the observed site(s) {data}: their value is the data, not a "
            "posterior draw. Pass `return_observed=True` for draws from the posterior "
            "predictive (shape `(num_samples, *site shape)`), or leave them out."
        )
    return list(dict.fromkeys(return_sites))


def _event_ndim(info: ModelInfo, name: str, value: Tensor, msg: Any, k: int) -> int:
    if name in info.latent:
        return len(info.latent[name].event_shape)
    if msg is not None and msg.type == "sample":
        return len(msg.fn.event_shape)
    return max(value.dim() - (k + 1), 0)


def posterior_samples(
    svi: SVI,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    sites: Sequence[str],
    *,
    obs_plate: str | None,
    batch_size: int | None,
    return_observed: bool,
) -> dict[str, Tensor]:
    """Draws of ``sites`` in their plain shapes, ``{site: [num_samples, *shape]}``."""
    return posterior_samples_and_log_weights(
        svi,
        args,
        kwargs,
        num_samples,
        sites,
        obs_plate=obs_plate,
        batch_size=batch_size,
        return_observed=return_observed,
        log_weights=False,
    )[0]


def posterior_samples_and_log_weights(
    svi: SVI,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    sites: Sequence[str],
    *,
    obs_plate: str | None,
    batch_size: int | None,
    return_observed: bool,
    log_weights: bool = True,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """:func:`posterior_samples` and the full-data log weights of the same draws.

    The log weights ``log p(x, θ) - log q(θ)`` ``[num_samples]`` (every plate at full
    size) exist only when the draws are joint draws of the whole data: with ``batch_size``
    splitting the observation plate, the local sites of each chunk are separate draws and
    the weights are ``None``, as they are without ``log_weights`` or for a point mass.
    """
    info = svi.objective.info
    assert info is not None
    k = svi.objective.max_plate_nesting
    others = {n: info.plates[n].full_indices() for n in info.subsampled_plates if n != obs_plate}
    chunks: list[Tensor | None] = [None]
    if obs_plate is not None:
        full = info.plates[obs_plate].full_indices()
        chunks = list(full.split(batch_size)) if batch_size else [full]
    weighted = log_weights and len(chunks) == 1 and not getattr(svi.guide, "is_point_mass", False)
    log_w: Tensor | None = None
    need_model = any(s not in info.latent for s in sites)
    in_plate = {s: obs_plate in {f.name for f in info.site_frames.get(s, ())} for s in sites}
    pieces: dict[str, list[Tensor]] = {s: [] for s in sites}
    events: dict[str, int] = {}
    fixed: dict[str, Tensor] | None = None
    for i, chunk in enumerate(chunks):
        indices = dict(others)
        if chunk is not None:
            indices[obs_plate] = chunk  # type: ignore[index]
        values, log_q = guide_values(svi, args, kwargs, num_samples, indices, fixed)
        if chunk is not None:
            _take_chunk(info, values, obs_plate, chunk)  # type: ignore[arg-type]
        if weighted:
            full_indices = info.full_indices()
            log_p = svi.objective.run_model(values, num_samples, args, kwargs, full_indices)
            log_w = (log_p - log_q).detach()
        if fixed is None:
            fixed = {
                n: v
                for n, v in values.items()
                if obs_plate not in {f.name for f in info.site_frames.get(n, ())}
            }
        tr = None
        if need_model:
            tr = model_trace(
                svi, args, kwargs, values, num_samples, indices, uncondition=return_observed
            )
        for s in sites:
            if i and not in_plate[s]:
                continue
            msg = None if tr is None else tr.get(s)
            value = values[s] if s in info.latent else msg.value  # type: ignore[union-attr]
            if s not in events:
                events[s] = _event_ndim(info, s, value, msg, k)
            pieces[s].append(value)
    out: dict[str, Tensor] = {}
    for s in sites:
        frames = info.site_frames.get(s, ())
        parts = pieces[s]
        if len(parts) > 1:
            dim = next(f.dim for f in frames if f.name == obs_plate) - events[s]
            value = torch.cat(parts, dim)
        else:
            value = parts[0]
        if value.dim() >= k + 1:
            shape = natural_shape(tuple(value.shape[1:]), frames, k)
            if math.prod(shape) * value.shape[0] == value.numel():
                value = value.reshape(value.shape[0], *shape)
        out[s] = value.detach()
    return out, log_w


def _take_chunk(info: ModelInfo, values: dict[str, Tensor], plate: str, chunk: Tensor) -> None:
    """Index the sites of ``plate`` that the guide drew whole (a plate it does not subsample)."""
    size = info.plates[plate].size
    if chunk.shape[0] == size:
        return
    for name, value in values.items():
        site = info.latent.get(name)
        frame = next((f for f in site.frames if f.name == plate), None) if site else None
        if frame is None:
            continue
        dim = frame.dim - len(site.event_shape)  # type: ignore[union-attr]
        if value.dim() >= -dim and value.shape[dim] == size:
            values[name] = value.index_select(dim, chunk.to(value.device))
