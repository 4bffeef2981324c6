"""The log density of one sample site, and the error that names the site when it fails.

Every place that scores a site — traces (:meth:`~sbi_vi.ppl.handlers.Trace.compute_log_prob`,
for guides and user traces) and the inference runner (the model's log joint in ``SVI``,
the evidence, the diagnostics) — goes through :func:`site_log_prob`. When torch fails
inside ``fn.log_prob`` (a value of the wrong shape, an observation longer than its plate,
NaN, a value outside the support), the error is re-raised as a ``ValueError`` that names
the site, its plates and the shapes involved, says which of these it is (and "NaN" when
it is one), and gives the remedy; torch's own error is chained as ``__cause__``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_vi.ppl.fast_log_prob import log_prob
from sbi_vi.ppl.runtime import Message, PlateFrame

__all__ = [
    "SiteLogProbError",
    "describe_site",
    "observed_shape_error",
    "site_log_prob",
    "value_problem",
]


class SiteLogProbError(ValueError):
    """``fn.log_prob(value)`` of a sample site failed; the message names the site.

    Attributes:
        site: Name of the site.
    """

    def __init__(self, message: str, site: str) -> None:
        super().__init__(message)
        self.site = site


def site_log_prob(msg: Message) -> Tensor:
    """``msg.fn.log_prob(msg.value)`` with the entries masked out by ``msg.mask`` set to 0.

    Args:
        msg: A sample message with its value filled.

    Returns:
        The unscaled log density, shape the site's batch shape.

    Raises:
        SiteLogProbError: (a ``ValueError``) if torch fails to score the value; the message
            names the site, its plates, the shapes, and NaN/inf or support violations.
    """
    try:
        lp = log_prob(msg.fn, msg.value)
    except (ValueError, RuntimeError, TypeError, IndexError) as err:
        raise SiteLogProbError(_message(msg, err), msg.name) from err
    mask = msg.mask
    if mask is not None and mask is not True:
        lp = torch.zeros_like(lp) if mask is False else torch.where(mask, lp, 0.0)
    return lp


def _plate_text(frame: PlateFrame) -> str:
    sub = "" if frame.subsample_size == frame.size else f", subsample {frame.subsample_size}"
    return f"{frame.name!r} (size {frame.size}{sub}, dim {frame.dim})"


def _model_frames(msg: Message) -> tuple[PlateFrame, ...]:
    from sbi_vi.ppl.particles import PARTICLE_PLATE  # a cycle at import time

    return tuple(f for f in msg.cond_indep_stack if f.name != PARTICLE_PLATE)


def describe_site(msg: Message) -> str:
    """``"observed site 'y' (Normal, inside plate 'data' (size 5, dim -1))"``.

    The particle plate of vectorised inference is left out (it is not the model's).
    """
    kind = "observed site" if msg.is_observed else "latent site"
    plates = [_plate_text(f) for f in reversed(_model_frames(msg))]  # outermost first
    where = f"inside plate {', '.join(plates)}" if plates else "outside any plate"
    return f"{kind} {msg.name!r} ({type(msg.fn).__name__}, {where})"


def _count(flags: Tensor) -> str:
    return f"{int(flags.sum())} of {flags.numel()} entries"


def value_problem(msg: Message) -> str | None:
    """What is wrong with a site's value for its distribution, in words; ``None`` if nothing.

    Checked in this order: NaN, inf, shape (against the distribution and every enclosing
    plate), support.
    """
    value, fn = msg.value, msg.fn
    if not isinstance(value, Tensor):
        return f"its value is a {type(value).__name__}, not a tensor"
    what = "the observation" if msg.is_observed else "the value"
    if value.dtype == torch.bool or value.is_complex():
        return (
            f"{what} has dtype {value.dtype}, which torch distributions do not score as data: "
            "pass a real tensor (e.g. `obs.float()`)"
        )
    if value.is_floating_point():
        nan = torch.isnan(value)
        if bool(nan.any()):
            fix = (
                "drop or impute the missing entries (NaN cannot be masked: its gradient is "
                "NaN too)"
                if msg.is_observed
                else "the guide or the handler that supplied it is not finite (a diverged fit?)"
            )
            return f"{what} contains NaN ({_count(nan)}); {fix}"
        inf = torch.isinf(value)
        if bool(inf.any()):
            return f"{what} contains inf ({_count(inf)})"
    shape = _shape_problem(msg)
    if shape is not None:
        return shape
    try:
        inside = fn.support.check(value)
    except (ValueError, RuntimeError, TypeError, NotImplementedError):
        return None
    if isinstance(inside, Tensor) and not bool(inside.all()):
        bad = (~inside).nonzero()[0].tolist()
        entry = value[tuple(bad[: value.dim()])] if value.dim() else value
        fix = (
            ""
            if msg.is_observed
            else "; a guide must draw each site inside the model's support (e.g. LogNormal "
            "for a positive site)"
        )
        return (
            f"{what} lies outside the support {fn.support} of {type(fn).__name__} "
            f"({_count(~inside)}; e.g. {entry.tolist()} at index {tuple(bad)}){fix}"
        )
    return None


def _shape_problem(msg: Message) -> str | None:
    value, fn = msg.value, msg.fn
    event = tuple(fn.event_shape)
    batch = tuple(fn.batch_shape)
    shape = tuple(value.shape)
    what = "the observation" if msg.is_observed else "the value"
    n_event = len(event)
    for frame in _model_frames(msg):
        dim = frame.dim - n_event
        if len(shape) < -dim:
            continue
        have = shape[dim]
        if have in (1, frame.subsample_size):
            continue
        text = (
            f"{what} has shape {shape}, with {have} entries at dim {dim} where plate "
            f"{_plate_text(frame)} has {frame.subsample_size}"
            + (f" (the plate's dim {frame.dim} left of {n_event} event dim(s))" if n_event else "")
        )
        if frame.subsample_size < frame.size and have == frame.size:
            text += (
                "; the plate subsamples, so index the data with its indices "
                f"(`with plate({frame.name!r}, ..., subsample_size=...) as idx: "
                "sample(..., obs=x[idx])`)"
            )
        return text
    try:
        torch.broadcast_shapes(shape, batch + event)
    except RuntimeError:
        return (
            f"{what} has shape {shape}, which does not broadcast with the distribution's "
            f"batch shape {batch} + event shape {event}"
        )
    return None


def _message(msg: Message, err: BaseException) -> str:
    problem = value_problem(msg)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    head = f"Error while computing log_prob at {describe_site(msg)}"
    value = msg.value
    if isinstance(value, Tensor):
        shapes = (
            f"value shape {tuple(value.shape)}, distribution batch shape "
            f"{tuple(msg.fn.batch_shape)}, event shape {tuple(msg.fn.event_shape)}"
        )
        if len(_model_frames(msg)) < len(msg.cond_indep_stack):
            shapes += "; inference runs vectorised: the leftmost batch dim holds the particles"
    else:
        shapes = f"value {value!r:.60}"
    reason = problem if problem is not None else "torch could not score the value"
    return f"{head}: {reason} [{shapes}]. (torch: {type(err).__name__}: {first})"


def observed_shape_error(msg: Message, log_prob: Tensor) -> SiteLogProbError:
    """The error for an observation whose shape added batch dims to its site.

    An observation must have the site's batch shape (the enclosing plates) and event shape,
    or broadcast to them; one with more batch dims (or a mask with more) would make torch
    return a larger log density, whose extra dims inference would read as particles.
    """
    value, fn = msg.value, msg.fn
    event = tuple(fn.event_shape)
    frames = _model_frames(msg)
    reach = max((-f.dim for f in frames), default=0)
    plain = tuple(fn.batch_shape)[len(fn.batch_shape) - reach :] + event
    mask = "" if not isinstance(msg.mask, Tensor) else f" and mask shape {tuple(msg.mask.shape)}"
    return SiteLogProbError(
        f"Error while computing log_prob at {describe_site(msg)}: the observation of shape "
        f"{tuple(value.shape)}{mask} broadcasts the site's batch shape {tuple(fn.batch_shape)} "
        f"to {tuple(log_prob.shape)}. Every batch dim of an observation must belong to a "
        f"plate: give it shape {plain} (batch dims of the plates, then the event shape "
        f"{event}), declare the extra dim with a plate, or move it into the event with "
        "`Independent(fn, k)`.",
        msg.name,
    )
