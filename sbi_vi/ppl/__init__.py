"""A small probabilistic-programming layer in torch, in the style of NumPyro.

Primitives (``sample``, ``param``, ``plate``, ``module``, ``deterministic``, ``factor``,
``subsample``) send :class:`Message` objects through a stack of effect handlers
(:mod:`sbi_vi.ppl.handlers`); with no handler active they return at once, so a model is a
plain torch function. Parameters live in an explicit :class:`ParamStore` that the
``param_store`` handler supplies; there is no global store.

Example:
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from sbi_vi.ppl import ParamStore, handlers, param, plate, sample
    >>> def model(x):
    ...     loc = param("loc", torch.zeros(()))
    ...     with plate("data", x.shape[0]):
    ...         sample("x", Normal(loc, 1.0), obs=x)
    >>> store = ParamStore()
    >>> tr = handlers.trace(handlers.param_store(model, store=store)).get_trace(torch.zeros(3))
    >>> list(tr), list(store)
    (['loc', 'data', 'x'], ['loc'])
"""

from sbi_vi.ppl import handlers
from sbi_vi.ppl.params import ParamStore
from sbi_vi.ppl.particles import PARTICLE_PLATE, guess_max_plate_nesting, vectorize_particles
from sbi_vi.ppl.plate import Plate, plate
from sbi_vi.ppl.primitives import (
    Unit,
    deterministic,
    factor,
    module,
    param,
    sample,
    subsample,
)
from sbi_vi.ppl.runtime import (
    Message,
    Messenger,
    PlateFrame,
    apply_stack,
    current_stack,
    default_process_message,
)

__all__ = [
    "PARTICLE_PLATE",
    "Message",
    "Messenger",
    "ParamStore",
    "Plate",
    "PlateFrame",
    "Unit",
    "apply_stack",
    "current_stack",
    "default_process_message",
    "deterministic",
    "factor",
    "guess_max_plate_nesting",
    "handlers",
    "module",
    "param",
    "plate",
    "sample",
    "subsample",
    "vectorize_particles",
]
