"""Checks run once when inference is set up: the guide fits the model, the data are finite.

Both would otherwise fail late or not at all: a guide built for another version of the
model trains silently (a new latent site is drawn from its prior at every step and never
inferred; a dropped one keeps an entropy term that grows without bound), and an observation
with inf (or NaN, with torch's argument validation off) makes every step non-finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sbi_vi.ppl.handlers import block, trace
from sbi_vi.ppl.infer.runner import ModelRunner, particle_plate
from sbi_vi.ppl.infer.sites import ModelInfo
from sbi_vi.ppl.log_density import (
    describe_site,
    observed_shape_error,
    site_log_prob,
    value_problem,
)
from sbi_vi.ppl.params import ParamStore

__all__ = ["check_guide_sites", "check_observed_values"]


def check_guide_sites(guide_name: str, guide_info: ModelInfo, model_info: ModelInfo) -> None:
    """Refuse an autoguide whose latent sites are not the model's (names and shapes).

    Args:
        guide_name: The guide's class name, for the message.
        guide_info: What the guide was built from (:attr:`AutoGuide.info`).
        model_info: The model that inference runs now.

    Raises:
        ValueError: Naming the sites in the model but not in the guide, those in the guide
            but not in the model, and those whose shape differs.
    """
    model_sites, guide_sites = model_info.latent, guide_info.latent
    only_model = [n for n in model_sites if n not in guide_sites]
    only_guide = [n for n in guide_sites if n not in model_sites]
    reshaped = [
        f"{n!r}: {guide_sites[n].natural_shape} in the guide, "
        f"{model_sites[n].natural_shape} in the model"
        for n in model_sites
        if n in guide_sites and guide_sites[n].shape != model_sites[n].shape
    ]
    if not (only_model or only_guide or reshaped):
        return
    parts = []
    if only_model:
        parts.append(f"latent site(s) in the model but not in the guide: {only_model}")
    if only_guide:
        parts.append(f"latent site(s) in the guide but not in the model: {only_guide}")
    if reshaped:
        parts.append(f"site(s) whose shape changed: {'; '.join(reshaped)}")
    raise ValueError(
        f"the {guide_name} was built for another model than the one being fitted ("
        + "; ".join(parts)
        + f"). Build a new guide for this model: `{guide_name}(model)`."
    )


def check_observed_values(
    model: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    info: ModelInfo,
    store: ParamStore,
) -> None:
    """Score every sample site once at the initial values; refuse NaN/inf observations.

    The model runs once (one particle, every plate at full size, hidden from outer
    handlers, without gradients) at the latent values the guide starts from. A site whose
    log density cannot be computed raises the error of
    :func:`~sbi_vi.ppl.log_density.site_log_prob`; an observed site with NaN or inf is
    refused even where torch would score it (inf gives a log density of -inf at every
    step; NaN passes when argument validation is off), unless a ``mask(mask=False)``
    drops the whole site.

    Raises:
        ValueError: Naming the site, its plates and what is wrong.
    """
    k = info.max_plate_nesting
    values = {name: site.init.unsqueeze(0) for name, site in info.latent.items()}
    runner = ModelRunner(
        values=values, indices=info.full_indices(), store=store, max_plate_nesting=k,
        log_joint=False,
    )  # fmt: skip
    with block(), torch.no_grad(), trace() as tr, particle_plate(1, k), runner:
        model(*args, **kwargs)
    for msg in tr.values():
        if msg.type != "sample":
            continue
        lp = site_log_prob(msg)
        if not msg.is_observed or not isinstance(msg.value, torch.Tensor):
            continue
        if lp.shape != msg.fn.batch_shape:
            raise observed_shape_error(msg, lp)
        value = msg.value
        if value.is_complex():
            raise ValueError(f"{describe_site(msg)}: {value_problem(msg)}.")
        if not value.is_floating_point() or msg.mask is False:
            continue
        if not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"{describe_site(msg)}: {value_problem(msg)}. An observation must be finite: "
                "drop or impute those entries (a `mask` does not help: the gradient through "
                "a masked NaN/inf entry is NaN)."
            )
