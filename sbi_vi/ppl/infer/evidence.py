"""Diagnostics of a fitted guide on the full data: PSIS k-hat, evidence, ArviZ export."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sbi_vi._checks import check_positive_int
from sbi_vi.diagnostics.evidence import LogEvidence, log_evidence_from_log_weights
from sbi_vi.diagnostics.psis import PSISResult, psis
from sbi_vi.ppl.handlers import trace
from sbi_vi.ppl.infer.draws import guide_values, posterior_samples, seeded, select_sites
from sbi_vi.ppl.infer.runner import ModelRunner

if TYPE_CHECKING:
    from sbi_vi.ppl.infer.svi import SVI

__all__ = ["LogEvidence", "evaluate", "full_data_log_weights", "log_evidence", "to_inference_data"]


def full_data_log_weights(
    svi: SVI, args: tuple, kwargs: dict, num_samples: int, *, max_elements: int = 2**22
) -> Tensor:
    """``log p(x, θ) - log q(θ)`` ``[num_samples]`` with every plate at full size.

    Particles are processed in chunks so that about ``max_elements`` values per site are
    in memory at once.

    Raises:
        ValueError: If the guide is a point mass (``AutoDelta``): it has no density.
    """
    if getattr(svi.guide, "is_point_mass", False):
        raise ValueError(
            f"{type(svi.guide).__name__} is a point mass: it has no density, so importance "
            "weights, PSIS and the evidence estimate do not apply to it."
        )
    svi.objective.setup(args, kwargs)
    info = svi.objective.info
    assert info is not None
    full = info.full_indices()
    per_particle = max(1, math.prod(p.size for p in info.plates.values()))
    chunk = max(1, min(num_samples, max_elements // per_particle))
    out = []
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        values, log_q = guide_values(svi, args, kwargs, n, full)
        log_p = svi.objective.run_model(values, n, args, kwargs, full)
        out.append((log_p - log_q).detach())
    return torch.cat(out)


def evaluate(
    svi: SVI, args: tuple, kwargs: dict, *, num_samples: int = 1000, seed: int | None = None
) -> PSISResult:
    """PSIS k-hat, ESS and evidence of the guide on the full-data log weights."""
    num_samples = check_positive_int("num_samples", num_samples)
    with seeded(seed), torch.no_grad():
        log_w = full_data_log_weights(svi, args, kwargs, num_samples)
    return psis(log_w)


def log_evidence(
    svi: SVI, args: tuple, kwargs: dict, *, num_samples: int = 1000, seed: int | None = None
) -> LogEvidence:
    """Importance-sampling estimate of log p(x) with the guide as proposal."""
    num_samples = check_positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError(f"`num_samples` must be at least 2, got {num_samples}.")
    with seeded(seed), torch.no_grad():
        log_w = full_data_log_weights(svi, args, kwargs, num_samples).double()
    return log_evidence_from_log_weights(log_w)


def to_inference_data(
    svi: SVI, args: tuple, kwargs: dict, *, num_samples: int = 1000, seed: int | None = None
) -> Any:
    """Posterior draws of every latent and deterministic site (one chain) and the data.

    Returns:
        An ``arviz.InferenceData`` with groups ``posterior`` (``(1, num_samples, *shape)``
        per site) and ``observed_data``.
    """
    from sbi_vi.diagnostics.psis import _import_arviz

    arviz = _import_arviz()
    num_samples = check_positive_int("num_samples", num_samples)
    with seeded(seed), torch.no_grad():
        svi.objective.setup(args, kwargs)
        info = svi.objective.info
        assert info is not None
        sites = select_sites(info, None, False)
        draws = posterior_samples(
            svi,
            args,
            kwargs,
            num_samples,
            sites,
            obs_plate=None,
            batch_size=None,
            return_observed=False,
        )
        runner = ModelRunner(indices=info.full_indices(), store=svi.store, log_joint=False)
        with trace() as tr, runner:
            svi.model(*args, **kwargs)
    observed = {
        n: m.value.detach().cpu().numpy()
        for n, m in tr.items()
        if m.type == "sample" and m.is_observed and not m.infer.get("is_auxiliary", False)
    }
    posterior = {s: v.cpu().numpy()[None] for s, v in draws.items()}
    return arviz.from_dict(posterior=posterior, observed_data=observed or None)
