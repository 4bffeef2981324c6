"""What inference needs to know about a model: its plates and latent sites, found by one run.

:func:`inspect_model` runs the model once, vectorised over one particle, with every
subsampled plate at its full size and each latent site set to an initial value; the result
(:class:`ModelInfo`) fixes the shapes, supports and plates that autoguides, ``SVI`` and the
summaries rely on (like the prototype trace of Pyro's autoguides).

Neither run draws a latent site whose prior cannot be sampled (an improper flat prior, see
:class:`~sbi_vi.ppl.distributions.ImproperUniform`): such a site starts at
:func:`~sbi_vi.ppl.infer.init.init_to_feasible` unless the init strategy gives it a value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor
from torch.distributions import biject_to, constraints
from torch.distributions.constraints import Constraint
from torch.distributions.transforms import ExpTransform, IndependentTransform, Transform

from sbi_vi.ppl.constraints import StableCorrCholeskyTransform
from sbi_vi.ppl.handlers import block, seed, trace
from sbi_vi.ppl.infer.init import init_to_feasible, no_bijection_error
from sbi_vi.ppl.infer.runner import ModelRunner, particle_plate
from sbi_vi.ppl.params import ParamStore
from sbi_vi.ppl.particles import PARTICLE_PLATE
from sbi_vi.ppl.plate import _subsample_indices
from sbi_vi.ppl.runtime import Message, PlateFrame, _draw

__all__ = [
    "LatentSite",
    "ModelInfo",
    "PlateInfo",
    "bijector",
    "inspect_model",
    "natural_shape",
]


@dataclass(frozen=True)
class PlateInfo:
    """A plate of the model: name, full size, declared subsample size, batch dim."""

    name: str
    size: int
    subsample_size: int
    dim: int

    @property
    def subsampled(self) -> bool:
        """Whether the model draws a minibatch of this plate."""
        return self.subsample_size < self.size

    def full_indices(self) -> Tensor:
        """All indices of the plate, ``[size]``."""
        return torch.arange(self.size)


@dataclass(frozen=True, eq=False)
class LatentSite:
    """A latent sample site of the model, in the layout of the vectorised model.

    Attributes:
        name: Site name.
        shape: Value shape without the particle dim, ``[*batch(K), *event]``, with every
            subsampled plate at its full size.
        event_shape: The site's event shape.
        support: The support of its distribution.
        transform: ``biject_to(support)`` from unconstrained space; ``None`` for ℝ.
        unconstrained_shape: ``transform.inverse_shape(shape)``.
        frames: The model plates enclosing the site, innermost first.
        init: Initial constrained value, shape ``shape``.
        natural_shape: The value's shape in a plain (not vectorised) run of the model.
    """

    name: str
    shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    support: Constraint
    transform: Transform | None
    unconstrained_shape: tuple[int, ...]
    frames: tuple[PlateFrame, ...]
    init: Tensor
    natural_shape: tuple[int, ...]
    max_plate_nesting: int

    @property
    def numel(self) -> int:
        """Number of unconstrained coordinates."""
        return math.prod(self.unconstrained_shape)

    @property
    def unconstrained_event_ndim(self) -> int:
        """Number of event dims of the unconstrained value."""
        return len(self.unconstrained_shape) - self.max_plate_nesting

    def local_frames(self, plates: dict[str, PlateInfo]) -> tuple[PlateFrame, ...]:
        """The enclosing frames whose plates the model subsamples."""
        return tuple(f for f in self.frames if plates[f.name].subsampled)


@dataclass(eq=False)
class ModelInfo:
    """The plates and sites of a model (see :func:`inspect_model`).

    Attributes:
        max_plate_nesting: ``K``, the number of plate dims.
        plates: The model's plates by name (not the particle plate).
        latent: Latent sample sites by name, in execution order.
        observed: Names of the observed sample sites.
        deterministic: Names of the deterministic sites.
        site_frames: The enclosing plates of every sample and deterministic site.
    """

    max_plate_nesting: int
    plates: dict[str, PlateInfo]
    latent: dict[str, LatentSite]
    observed: list[str]
    deterministic: list[str]
    site_frames: dict[str, tuple[PlateFrame, ...]] = field(default_factory=dict)

    @cached_property
    def subsampled_plates(self) -> list[str]:
        """Names of the plates the model subsamples."""
        return [name for name, p in self.plates.items() if p.subsampled]

    def local_sites(self) -> list[str]:
        """Latent sites inside a subsampled plate (one value per data point)."""
        return [n for n, s in self.latent.items() if s.local_frames(self.plates)]

    def full_indices(self) -> dict[str, Tensor]:
        """The full index set of every subsampled plate."""
        return {name: self.plates[name].full_indices() for name in self.subsampled_plates}

    def draw_indices(self) -> dict[str, Tensor]:
        """A fresh minibatch of every subsampled plate (global torch RNG)."""
        return {
            name: _subsample_indices(self.plates[name].size, self.plates[name].subsample_size)
            for name in self.subsampled_plates
        }


def _frames(msg: Message) -> tuple[PlateFrame, ...]:
    return tuple(f for f in msg.cond_indep_stack if f.name != PARTICLE_PLATE)


def natural_shape(shape: tuple[int, ...], frames: tuple[PlateFrame, ...], k: int) -> tuple:
    """The shape ``[*batch(K), *rest]`` of the vectorised layout, as a plain run has it.

    A plain run pads a site's batch shape only as far as its own plates reach, so the
    leading batch dims beyond them (all of size 1) are dropped.
    """
    reach = max((-f.dim for f in frames), default=0)
    return tuple(shape[k - reach :])


def inspect_model(
    model: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    *,
    store: ParamStore | None = None,
    init_loc_fn: Callable[[Message], Tensor] | None = None,
    rng_seed: int = 0,
) -> ModelInfo:
    """Run ``model`` twice (seeded, hidden from outer handlers) and describe it.

    The first run finds the plates and ``K``; the second, vectorised over one particle with
    every subsampled plate at its full size, records each latent site's shape and support
    and sets it to ``init_loc_fn(msg)`` (a draw from its prior if ``None``), so later sites
    see initialised upstream values. A site whose prior cannot be sampled is set to
    :func:`~sbi_vi.ppl.infer.init.init_to_feasible` in the first run, and in the second
    when ``init_loc_fn`` is ``None``.

    Args:
        model: The model.
        args: Its positional arguments.
        kwargs: Its keyword arguments.
        store: Parameter store of the model's ``param`` sites (created there if new).
        init_loc_fn: Initial values of latent sites (see :mod:`~sbi_vi.ppl.infer.init`).
        rng_seed: Seed of the two runs (the caller's RNG is left alone).

    Returns:
        The :class:`ModelInfo`.

    Raises:
        ValueError: If a latent site has a discrete support or a support that no bijection
            from unconstrained space reaches, if ``init_loc_fn`` tries to sample a prior that
            cannot be sampled, or if an initial value is not strictly inside its support or
            has the wrong shape.
    """
    store = ParamStore() if store is None else store
    discover = ModelRunner(store=store, log_joint=False, init_fn=_draw_or_feasible)
    with block(), seed(rng_seed=rng_seed):
        first = trace(discover(model)).get_trace(*args, **kwargs)
    k = max((-f.dim for msg in first.values() for f in _frames(msg)), default=0)
    plates = {
        name: PlateInfo(name, int(msg.args[0]), int(msg.value.shape[0]), _plate_dim(first, name))
        for name, msg in first.items()
        if msg.type == "plate"
    }
    runner = ModelRunner(
        indices={n: p.full_indices() for n, p in plates.items() if p.subsampled},
        store=store,
        max_plate_nesting=k,
        log_joint=False,
        # Prior draws are not checked (a float32 draw of Gamma(0.01) may underflow to 0, which
        # only matters where the value starts a guide).
        init_fn=_draw_or_feasible if init_loc_fn is None else _checked(_guarded(init_loc_fn)),
    )
    with block(), seed(rng_seed=rng_seed), torch.no_grad():
        with trace() as tr, runner, particle_plate(1, k):
            model(*args, **kwargs)
    latent: dict[str, LatentSite] = {}
    for name, msg in tr.items():
        if msg.type != "sample" or msg.is_observed:
            continue
        fn = msg.fn
        if fn.support.is_discrete:
            raise ValueError(
                f"latent site {name!r} is discrete ({type(fn).__name__}); autoguides and SVI "
                "here need continuous latent variables. Marginalise it out by hand, or "
                "observe it."
            )
        value = msg.value.detach()
        shape = tuple(value.shape[1:])
        support = fn.support
        transform = _site_bijector(name, fn)
        # With the particle dim, so that support parameters of batch shape [1, *batch]
        # (an expanded Uniform's bounds) do not add a leading dim to the event's shape.
        ushape = shape if transform is None else tuple(transform.inverse_shape(value.shape))[1:]
        frames = _frames(msg)
        latent[name] = LatentSite(
            name=name,
            shape=shape,
            event_shape=tuple(fn.event_shape),
            support=support,
            transform=transform,
            unconstrained_shape=ushape,
            frames=frames,
            init=value[0],
            natural_shape=natural_shape(shape, frames, k),
            max_plate_nesting=k,
        )
    return ModelInfo(
        max_plate_nesting=k,
        plates=plates,
        latent=latent,
        observed=[n for n, m in tr.items() if m.type == "sample" and m.is_observed],
        deterministic=[n for n, m in tr.items() if m.type == "deterministic"],
        site_frames={
            n: _frames(m) for n, m in tr.items() if m.type in ("sample", "deterministic")
        },
    )


def _draw_or_feasible(msg: Message) -> Tensor:
    """A draw from the site's prior, or :func:`init_to_feasible` where it cannot be drawn."""
    try:
        return _draw(msg.fn, msg.kwargs.get("sample_shape", ()))
    except NotImplementedError:
        return init_to_feasible(msg)


def _guarded(init_loc_fn: Callable[[Message], Tensor]) -> Callable[[Message], Tensor]:
    """``init_loc_fn`` with its sampling failures turned into an error giving the remedy."""

    def init(msg: Message) -> Tensor:
        try:
            return init_loc_fn(msg)
        except NotImplementedError as err:
            name = getattr(init_loc_fn, "__name__", type(init_loc_fn).__name__)
            raise ValueError(
                f"latent site {msg.name!r}: the init strategy {name} failed on "
                f"{type(msg.fn).__name__}, which cannot be sampled ({err}). Use "
                "`init_loc_fn=init_to_feasible`, or `init_to_value(values={...})` with a value "
                "for this site."
            ) from err

    return init


def _site_bijector(name: str, fn: Any) -> Transform | None:
    try:
        return bijector(fn.support)
    except NotImplementedError:
        raise no_bijection_error(name, fn) from None


def _checked(init_fn: Callable[[Message], Tensor]) -> Callable[[Message], Tensor]:
    """``init_fn`` whose values are checked as they are made, before later sites use them."""

    def init(msg: Message) -> Tensor:
        value = init_fn(msg)
        if not msg.fn.support.is_discrete:  # discrete sites are refused after the run
            _check_init(msg.name, msg.fn, value, _site_bijector(msg.name, msg.fn))
        return value

    return init


def _check_init(name: str, fn: Any, value: Tensor, transform: Transform | None) -> None:
    """An initial value ``[1, *shape]`` must have the draw's shape and map to finite ``u``."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"latent site {name!r}: the init strategy must return a Tensor, got "
            f"{type(value).__name__}."
        )
    expected = tuple(fn.batch_shape + fn.event_shape)
    if tuple(value.shape) != expected:
        raise ValueError(
            f"latent site {name!r}: its initial value has shape {tuple(value.shape)}, but a "
            f"draw of {type(fn).__name__} there has shape {expected} (with the particle "
            "dim first). Check the value given to init_to_value or the init strategy."
        )
    u = value if transform is None else transform.inv(value)
    if not bool(torch.isfinite(u).all()):
        raise ValueError(
            f"latent site {name!r}: its initial value is not strictly inside the support "
            f"{fn.support} of {type(fn).__name__} (or is not finite). Give a value inside it "
            "to init_to_value, or use `init_loc_fn=init_to_feasible`."
        )


def _plate_dim(tr: Any, name: str) -> int:
    for msg in tr.values():
        for f in msg.cond_indep_stack:
            if f.name == name:
                return f.dim
    return -1  # a plate without sites


_CORR = StableCorrCholeskyTransform()


def bijector(support: Constraint) -> Transform | None:
    """``biject_to(support)``: ``None`` for ℝ, a plain ``exp`` for the positive reals, and
    :class:`~sbi_vi.ppl.constraints.StableCorrCholeskyTransform` for ``corr_cholesky``.

    torch registers bijections by constraint *type*, so ``positive`` gets the general
    ``greater_than`` map (``exp`` followed by a shift by 0); the plain ``exp`` is the same
    map at half the cost.
    """
    base, ndims = support, 0
    while isinstance(base, constraints.independent):
        ndims += base.reinterpreted_batch_ndims
        base = base.base_constraint
    if base is constraints.real:
        return None
    if base is constraints.corr_cholesky:  # torch's log-det is not finite in float32
        return IndependentTransform(_CORR, ndims) if ndims else _CORR
    bound = getattr(base, "lower_bound", None)
    if (
        type(base) in (constraints.greater_than, constraints.greater_than_eq)
        and isinstance(bound, int | float)
        and bound == 0
    ):
        exp = ExpTransform()
        return IndependentTransform(exp, ndims) if ndims else exp
    return biject_to(support)
