"""Quality control of a trained q against its potential (PSIS k-hat or proportionality)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from sbi_vi.diagnostics import prop_metric, psis
from sbi_vi.errors import QualityWarning
from sbi_vi.vi.families.base import rsample_and_log_prob

__all__ = [
    "evaluate_quality",
    "importance_log_weights",
    "is_reliable",
    "summarise",
    "warn_if_unreliable",
]

logger = logging.getLogger("sbi_vi.posteriors.vi_posterior")  # where users look for it


def importance_log_weights(
    family: nn.Module,
    log_p: Callable[[Tensor], Tensor],
    num_samples: int,
    context: Tensor | None = None,
    chunk_size: int = 10_000,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``num_samples`` θ ~ q and return ``(theta, log_p, log_q)``, without gradients."""
    thetas, lps, lqs = [], [], []
    with torch.no_grad():
        q = family(context)
        remaining = num_samples
        while remaining > 0:
            n = min(chunk_size, remaining)
            theta, lq = rsample_and_log_prob(q, (n,))
            thetas.append(theta)
            lqs.append(lq)
            lps.append(log_p(theta))
            remaining -= n
    return torch.cat(thetas), torch.cat(lps), torch.cat(lqs)


def evaluate_quality(
    family: nn.Module, log_p: Callable[[Tensor], Tensor], metric: str, num_samples: int
):
    """PSIS (``psis``) or proportionality (``prop``) diagnostic of ``family()`` vs ``log_p``."""
    _, lp, lq = importance_log_weights(family, log_p, num_samples)
    if metric == "psis":
        return psis(lp - lq)
    return prop_metric(lp, lq)


MIN_ESS_FRACTION = 0.01
"""Smallest relative effective sample size of the importance weights that passes QC."""


def is_reliable(result: object) -> bool:
    """Whether a PSIS or prop result says q can be trusted (every batch element).

    For PSIS both k-hat ≤ 0.7 and ESS ≥ 1 % of the draws are required: a k-hat near the
    threshold with a handful of effective samples still means q missed mass.
    """
    if hasattr(result, "unreliable"):  # per observation: the verdict includes the ESS
        flag = result.reliable
    elif hasattr(result, "reliable"):
        flag = result.reliable
        ess = torch.as_tensor(result.ess) / result.n_particles
        flag = torch.as_tensor(flag) & (ess >= MIN_ESS_FRACTION)
    else:
        flag = result.good
    return bool(torch.as_tensor(flag).all())


def summarise(result: object) -> str:
    """One line describing a PSIS or prop result."""
    if hasattr(result, "unreliable"):  # per observation
        bad = result.unreliable.tolist()
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        return (
            f"PSIS k-hat per observation: max {float(result.khat.max()):.3f}; "
            f"{len(bad)} of {result.khat.numel()} unreliable (observations {shown})."
        )
    if hasattr(result, "khat"):
        return f"PSIS k-hat = {float(result.khat):.3f}, ESS = {float(result.ess):.0f}."
    return f"prop = {float(result.value):.3f} ({result.interpretation})."


def warn_if_unreliable(result: object, metric: str) -> None:
    """Quality control after ``train``: a :class:`QualityWarning` if q should not be trusted
    (else the verdict is logged at INFO)."""
    if not is_reliable(result):
        warnings.warn(
            f"Quality control ({metric}): {summarise(result)} The variational posterior "
            "may be inaccurate: train longer, use a more flexible q (e.g. 'nsf'), more "
            "particles, or vi_method='fKL'/'IW' for a mass-covering fit.",
            QualityWarning,
            stacklevel=3,
        )
    else:
        logger.info("Quality control (%s): %s", metric, summarise(result))
