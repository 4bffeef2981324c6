"""Vectorised particles: run a model or guide for ``n_particles`` draws in one pass.

Inference wraps both model and guide in one outer plate named :data:`PARTICLE_PLATE` at
dim ``-(max_plate_nesting + 1)``, left of every plate of the program. Every sample site is
then broadcast to carry the particle dim: a global latent of event shape ``[D]`` comes out
as ``[n_particles, 1, ..., 1, D]`` (one 1 per model plate dim), a site inside plate
``"data"`` (dim -1) as ``[n_particles, n, *event]``. Site log densities
(``Trace.compute_log_prob``) have the sites' batch shapes, ``[n_particles, ...]``, and

- ``trace.batch_log_prob([PARTICLE_PLATE])`` is ``log p`` (or ``log q``) per particle,
  shape ``[n_particles]``;
- ``trace.batch_log_prob([PARTICLE_PLATE, "data"], site_filter=...)`` keeps the
  observations apart, shape ``[n_particles, n]`` (for sites inside ``"data"``).

Model code must then be written for batched parameters (e.g. ``(x * w).sum(-1)`` rather
than ``x @ w``), as with NumPyro's and Pyro's vectorised particles, and every batch dim of
a site must belong to a plate or be moved into the event with
``torch.distributions.Independent``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

from sbi_vi._checks import check_positive_int
from sbi_vi.ppl.handlers import block, seed, trace
from sbi_vi.ppl.plate import plate

__all__ = ["PARTICLE_PLATE", "guess_max_plate_nesting", "vectorize_particles"]

PARTICLE_PLATE: Final = "_particles"
"""Name of the outer plate that holds the particles."""


def vectorize_particles(
    fn: Callable[..., Any], n_particles: int, *, max_plate_nesting: int
) -> Callable[..., Any]:
    """``fn`` run inside ``plate(PARTICLE_PLATE, n_particles, dim=-(max_plate_nesting + 1))``.

    Args:
        fn: The model or guide.
        n_particles: Number of particles.
        max_plate_nesting: The number of plate dims that ``fn`` (and, for inference, the
            model and the guide alike) uses; see :func:`guess_max_plate_nesting`.

    Returns:
        A function with ``fn``'s arguments.

    Example:
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import plate, sample
        >>> def model():
        ...     w = sample("w", Normal(0.0, 1.0))
        ...     with plate("data", 5):
        ...         sample("y", Normal(w, 1.0))
        >>> tr = trace(vectorize_particles(model, 4, max_plate_nesting=1)).get_trace()
        >>> tuple(tr["w"].value.shape), tuple(tr["y"].value.shape)
        ((4, 1), (4, 5))
        >>> tuple(tr.batch_log_prob([PARTICLE_PLATE]).shape)
        (4,)
    """
    n_particles = check_positive_int("n_particles", n_particles)
    nesting = check_positive_int("max_plate_nesting", max_plate_nesting, allow_zero=True)

    @functools.wraps(fn)
    def vectorized(*args: Any, **kwargs: Any) -> Any:
        with plate(PARTICLE_PLATE, n_particles, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return vectorized


def guess_max_plate_nesting(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The number of plate dims ``fn`` uses, found by running it once.

    The run is seeded (the caller's RNG is untouched) and hidden from outer handlers;
    param sites still reach an outer ``param_store``.

    Args:
        fn: The model or guide.
        *args: Its arguments.
        **kwargs: Its keyword arguments.

    Returns:
        ``max(-dim)`` over the plates enclosing any site; 0 without plates.
    """
    with block():
        tr = trace(seed(fn, rng_seed=0)).get_trace(*args, **kwargs)
    return max((-f.dim for msg in tr.values() for f in msg.cond_indep_stack), default=0)
