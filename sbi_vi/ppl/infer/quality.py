"""What ``SVI.run`` says about the fit it returns: diverged or not, and PSIS quality control.

Two checks, each a warning of its own category so users can filter (or escalate) them:

- :class:`~sbi_vi.errors.DivergedWarning` when more than :data:`MAX_SKIPPED_FRACTION` of a
  run's steps were skipped as non-finite, or the fitted parameters or the guide's draws
  are not finite; it names the sites whose values or log densities are not finite.
- :class:`~sbi_vi.errors.QualityWarning` when PSIS says q is unreliable, by the rule of
  ``VIPosterior.train`` (:func:`sbi_vi.posteriors.quality.is_reliable`: k̂ ≤ 0.7 and ESS ≥
  1 % of the draws), on :data:`QC_NUM_SAMPLES` full-data draws of the fitted guide.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING

import torch

from sbi_vi.diagnostics.psis import PSISResult, psis
from sbi_vi.errors import DivergedWarning, QualityWarning
from sbi_vi.posteriors.quality import is_reliable, summarise
from sbi_vi.ppl.infer.draws import guide_values, model_trace
from sbi_vi.ppl.infer.evidence import full_data_log_weights
from sbi_vi.ppl.log_density import site_log_prob

if TYPE_CHECKING:
    from sbi_vi.ppl.infer.svi import SVI

__all__ = [
    "MAX_SKIPPED_FRACTION",
    "QC_NUM_SAMPLES",
    "check_diverged",
    "nonfinite_sites",
    "quality_control",
]

logger = logging.getLogger(__name__)

MAX_SKIPPED_FRACTION = 0.1
"""Largest share of a run's steps that may be skipped as non-finite without a warning."""

QC_NUM_SAMPLES = 1000
"""Draws of the fitted guide for the PSIS quality control of ``SVI.run``."""


def nonfinite_sites(svi: SVI, args: tuple, kwargs: dict, n: int = 16) -> list[str]:
    """Sites whose value or log density is not finite at ``n`` draws of the guide (full data).

    Returns:
        Descriptions such as ``"'tau' (value)"`` or ``"'y' (log density)"``, in model
        order; empty if every site is finite (or the model cannot be run at all).
    """
    info = svi.objective.info
    if info is None:
        return []
    full = info.full_indices()
    try:
        with torch.no_grad():
            values, _ = guide_values(svi, args, kwargs, n, full)
            out = [
                f"{name!r} (value)"
                for name, value in values.items()
                if value.is_floating_point() and not bool(torch.isfinite(value).all())
            ]
            if out:  # the model would only fail on them
                return out
            tr = model_trace(svi, args, kwargs, values, n, full)
            for name, msg in tr.items():
                if msg.type != "sample":
                    continue
                value = msg.value
                if (
                    isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                    and not bool(torch.isfinite(value).all())
                ):
                    out.append(f"{name!r} (value)")
                elif not bool(torch.isfinite(site_log_prob(msg)).all()):
                    out.append(f"{name!r} (log density)")
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return [f"the model cannot be run at the guide's draws ({first})"]
    return out


def check_diverged(svi: SVI, args: tuple, kwargs: dict, num_skipped: int, num_steps: int) -> bool:
    """Warn with :class:`~sbi_vi.errors.DivergedWarning` if the run diverged.

    Args:
        svi: The fitted SVI.
        args: The model's arguments.
        kwargs: The model's keyword arguments.
        num_skipped: Steps of the run skipped as non-finite.
        num_steps: Steps of the run.

    Returns:
        Whether it warned.
    """
    params = svi._parameters()
    bad_params = not all(bool(torch.isfinite(p).all()) for p in params)
    too_many = num_skipped > MAX_SKIPPED_FRACTION * num_steps
    if not (too_many or bad_params):
        return False
    sites = nonfinite_sites(svi, args, kwargs)
    what = []
    if too_many:
        what.append(
            f"{num_skipped} of {num_steps} steps were skipped because the loss or a gradient "
            "was not finite"
        )
    if bad_params:
        what.append("the fitted parameters are not all finite")
    where = (
        f" Not finite at the guide's draws: {', '.join(sites)}."
        if sites
        else " The guide's draws are finite now."
    )
    warnings.warn(
        f"SVI diverged: {'; '.join(what)}.{where} Lower `lr`, clip gradients "
        "(`clip_value=`), start the guide narrower (`init_scale=`), or check the model's log "
        "density where the guide puts its mass; `result.num_skipped` counts the skipped steps.",
        DivergedWarning,
        stacklevel=3,
    )
    return True


def quality_control(svi: SVI, args: tuple, kwargs: dict) -> PSISResult | None:
    """PSIS of the fitted guide on :data:`QC_NUM_SAMPLES` full-data draws; warn if unreliable.

    The draws come from the global torch RNG (``SVI.run`` forks it around this call). A
    point-mass guide (``AutoDelta``) has no density and is not checked.

    Returns:
        The :class:`~sbi_vi.diagnostics.psis.PSISResult`, or ``None`` for a point mass.
    """
    if getattr(svi.guide, "is_point_mass", False):
        return None
    with torch.no_grad():
        log_w = full_data_log_weights(svi, args, kwargs, QC_NUM_SAMPLES)
    broken = torch.isnan(log_w) | (log_w == math.inf)
    if bool(broken.any()):  # psis refuses these: q has no usable weights at all
        result = PSISResult(math.inf, 0.0, log_w, math.nan, QC_NUM_SAMPLES)
    else:
        result = psis(log_w)
    if not is_reliable(result):
        warnings.warn(
            f"Quality control (psis): {summarise(result)} The guide may be inaccurate: train "
            "longer, use a more flexible guide (AutoMultivariateNormal, AutoFlow), more "
            "particles, or divergence='IW'/'fKL' for a mass-covering fit. "
            "`SVI.run(..., quality_control=False)` skips this check.",
            QualityWarning,
            stacklevel=3,
        )
    else:
        logger.info("Quality control (psis): %s", summarise(result))
    return result
