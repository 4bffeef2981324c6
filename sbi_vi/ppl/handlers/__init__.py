"""Effect handlers, one small class each, with NumPyro-style lowercase constructors.

Each handler is a CamelCase :class:`~sbi_vi.ppl.Messenger` subclass (``SeedMessenger``,
``TraceMessenger``, ...); the lowercase functions (``seed``, ``trace``, ...) build them with
NumPyro's arguments, so ``handlers.seed(model, rng_seed=0)`` reads as in NumPyro. Every
handler is a context manager, a wrapper (``handler(model)(*args)``) and a decorator.

Handlers see a message innermost first, so where several set a site's value
(``substitute``, ``condition``, ``replay``) the outermost one wins; ``replay`` leaves
observed sites alone. ``block`` stops messages from reaching the handlers outside it (but
not the ``param_store``, which is looked up). Typical inference use::

    with param_store(store=store):
        guide_trace = trace(guide).get_trace(*args)
        model_trace = trace(replay(model, trace=guide_trace)).get_trace(*args)
    elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
"""

from sbi_vi.ppl.handlers.block import BlockMessenger, block
from sbi_vi.ppl.handlers.params import ParamStoreMessenger, param_store
from sbi_vi.ppl.handlers.replay import ReplayMessenger, replay
from sbi_vi.ppl.handlers.scale_mask import MaskMessenger, ScaleMessenger, mask, scale
from sbi_vi.ppl.handlers.seed import SeedMessenger, seed
from sbi_vi.ppl.handlers.substitute import (
    ConditionMessenger,
    SubstituteMessenger,
    condition,
    substitute,
)
from sbi_vi.ppl.handlers.trace import SiteFilter, Trace, TraceMessenger, trace

__all__ = [
    "BlockMessenger",
    "ConditionMessenger",
    "MaskMessenger",
    "ParamStoreMessenger",
    "ReplayMessenger",
    "ScaleMessenger",
    "SeedMessenger",
    "SiteFilter",
    "SubstituteMessenger",
    "Trace",
    "TraceMessenger",
    "block",
    "condition",
    "mask",
    "param_store",
    "replay",
    "scale",
    "seed",
    "substitute",
    "trace",
]
