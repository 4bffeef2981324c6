"""Running a model on given latent values and plate indices, vectorised over particles.

Every inference routine of :mod:`sbi_vi.ppl.infer` evaluates the model the same way: a
single :class:`ModelRunner` handler outside the particle plate supplies the latent values
(drawn by a guide), the plate indices (a minibatch, a chunk, or the whole plate) and the
parameter store, and sums the log densities of the sample sites per particle as they pass.
No trace is built on this path, so the cost per site is one ``log_prob`` and one sum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from sbi_vi.ppl.log_density import observed_shape_error, site_log_prob
from sbi_vi.ppl.params import ParamStore
from sbi_vi.ppl.particles import PARTICLE_PLATE
from sbi_vi.ppl.plate import Plate
from sbi_vi.ppl.runtime import _STATE, Message, Messenger

__all__ = ["Delta", "ModelRunner", "ParticlePlate", "active_batch_shape", "particle_plate"]


class ModelRunner(Messenger):
    """Supplies latent values, plate indices and parameters; sums log densities per particle.

    Put it inside the particle plate (``with particle_plate(P, K), runner: model()``):
    supplied values then reach the particle plate, which leaves those sites' distributions
    unexpanded. (With ``init_fn``, put it outside, so that it sees broadcast sites.)

    Args:
        values: Values of latent sample sites by name, each ``[P, *batch, *event]`` in the
            layout of the vectorised model (observed sites keep their data).
        indices: Index tensors of plates by name (any number of indices; the plate's
            subsample size and scale follow).
        store: The parameter store of the model's ``param`` sites (``None``: none).
        max_plate_nesting: ``K``; the particle dim is batch dim ``-(K + 1)``.
        log_joint: Whether to accumulate :attr:`log_p` (``[P]``).
        uncondition: Whether observed sites are drawn instead (posterior predictive).
        init_fn: ``init_fn(msg) -> value`` for latent sites missing from ``values``.
        strict: Whether a latent site missing from ``values`` (without ``init_fn``) is an
            error rather than a draw from its prior (inference: the guide must supply
            every latent site).
    """

    def __init__(
        self,
        *,
        values: Mapping[str, Tensor] | None = None,
        indices: Mapping[str, Tensor] | None = None,
        store: ParamStore | None = None,
        max_plate_nesting: int = 0,
        log_joint: bool = True,
        uncondition: bool = False,
        init_fn: Callable[[Message], Tensor] | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.values = {} if values is None else values
        self.indices = {} if indices is None else indices
        self.supplied_store = store
        self.max_plate_nesting = max_plate_nesting
        self.log_joint = log_joint
        self.uncondition = uncondition
        self.init_fn = init_fn
        self.strict = strict
        self._sum_dims = tuple(range(1, max_plate_nesting + 1))
        self.log_p: Tensor | None = None

    def __enter__(self) -> ModelRunner:
        self.log_p = None
        return super().__enter__()

    def process_message(self, msg: Message) -> None:
        kind = msg.type
        if kind == "sample":
            if msg.is_observed:
                if self.uncondition and not msg.infer.get("is_auxiliary", False):
                    msg.value, msg.is_observed = None, False
                return
            value = self.values.get(msg.name)
            if value is not None:
                msg.value = value
            elif self.init_fn is not None:
                msg.value = self.init_fn(msg)
            elif self.strict:
                raise ValueError(
                    f"the model's latent site {msg.name!r} has no value from the guide (the "
                    f"guide supplies {sorted(self.values)}): the model gained a latent site "
                    "after the guide was built, e.g. through other arguments. Build a new "
                    "guide for this model and these arguments."
                )
        elif kind == "plate":
            index = self.indices.get(msg.name)
            if index is not None:
                msg.value = index
                msg.args = (msg.args[0], int(index.shape[0]))

    def postprocess_message(self, msg: Message) -> None:
        if not self.log_joint or msg.type != "sample":
            return
        lp = site_log_prob(msg)
        if msg.is_observed and lp.shape != msg.fn.batch_shape:
            raise observed_shape_error(msg, lp)
        scale = msg.scale
        # A number scales the site's sum (fused with the accumulation); a tensor each entry.
        number = type(scale) is float or type(scale) is int
        if not number:
            lp = lp * scale
        if lp.dim() != self.max_plate_nesting + 1:
            raise ValueError(
                f"sample site {msg.name!r}: its log density has batch shape {tuple(lp.shape)}, "
                f"but with {self.max_plate_nesting} plate dims and the particle dim it should "
                f"have {self.max_plate_nesting + 1} dims. Declare every batch dim with a "
                "plate, or move it into the event with `Independent(fn, k)`."
            )
        if self._sum_dims:
            n = lp.shape[0]
            # Summing dims of size 1 only drops them: a view, without a kernel.
            lp = lp.reshape(n) if lp.numel() == n else lp.sum(self._sum_dims)
        if not number or scale == 1:
            self.log_p = lp if self.log_p is None else self.log_p + lp
        elif self.log_p is None:
            self.log_p = lp * scale
        else:
            self.log_p = torch.add(self.log_p, lp, alpha=scale)


class ParticlePlate(Plate):
    """The outer particle plate of :class:`ModelRunner` runs.

    Sites whose latent value a handler inside it already supplied (in the full layout
    ``[P, *batch, *event]``) keep their distribution as it is: their log density
    broadcasts to the full batch shape, so expanding the distribution would only cost
    time.
    """

    def _broadcast(self, msg: Message, frames: tuple) -> None:
        if msg.value is not None and not msg.is_observed:
            return
        super()._broadcast(msg, frames)


_PLATES: dict[tuple[int, int], ParticlePlate] = {}


def particle_plate(n_particles: int, max_plate_nesting: int) -> ParticlePlate:
    """The (cached) outer plate of ``n_particles`` at dim ``-(max_plate_nesting + 1)``.

    A plate object keeps its indices, so one object serves every run; created with no
    handler active it emits no message. Enter it *outside* a :class:`ModelRunner` that
    supplies values (``with particle_plate(P, K), runner: model()``) so that it sees
    them.
    """
    key = (n_particles, max_plate_nesting)
    plate = _PLATES.get(key)
    if plate is None:
        stack, _STATE.stack = _STATE.stack, []
        try:
            plate = ParticlePlate(PARTICLE_PLATE, n_particles, dim=-(max_plate_nesting + 1))
        finally:
            _STATE.stack = stack
        if len(_PLATES) > 64:
            _PLATES.clear()
        _PLATES[key] = plate
    return plate


def active_batch_shape() -> tuple[int, ...]:
    """The batch shape that the plates active now give a site (``()`` outside plates)."""
    plates = [h for h in _STATE.stack if isinstance(h, Plate)]
    if not plates:
        return ()
    shape = [1] * max(-p.dim for p in plates)
    for p in plates:
        shape[p.dim] = p.subsample_size
    return tuple(shape)


class Delta(Distribution):
    """A point mass at ``v`` that reports a given log density (as Pyro's ``Delta``).

    Autoguides sample their sites with it: the value is drawn elsewhere (jointly, in
    unconstrained space) and the site carries its share of log q.

    Args:
        v: The value, shape ``[*batch, *event]``.
        log_density: Log density reported at ``v``, shape broadcastable to ``[*batch]``.
        event_dim: Number of rightmost dims of ``v`` that form the event.
    """

    arg_constraints: dict = {}  # noqa: RUF012
    has_rsample = True
    support = constraints.real

    def __init__(self, v: Tensor, log_density: Tensor | float = 0.0, event_dim: int = 0) -> None:
        self.v = v
        batch = v.shape[: v.dim() - event_dim]
        self.log_density = torch.as_tensor(log_density, dtype=v.dtype).expand(batch)
        super().__init__(batch, v.shape[v.dim() - event_dim :], validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Delta:
        batch_shape = torch.Size(batch_shape)
        v = self.v.expand(batch_shape + self.event_shape)
        return Delta(v, self.log_density.expand(batch_shape), len(self.event_shape))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        return self.v.expand(torch.Size(sample_shape) + self.v.shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if value is self.v:
            return self.log_density
        same = value == self.v
        for _ in range(len(self.event_shape)):
            same = same.all(-1)
        return torch.where(same, self.log_density, float("-inf"))
