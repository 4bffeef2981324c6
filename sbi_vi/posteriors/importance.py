"""What a posterior computes from the importance weights of q: the evidence and SIR draws.

Both use the draws θ_s ~ q and log weights ``log p̃(θ_s) − log q(θ_s)`` that quality
control computes (:meth:`~sbi_vi.posteriors.fitted.FittedQ.importance_draws`):

- :func:`check_normalized` — the evidence ``log (1/S) Σ w_s`` is log p(x_o) only when the
  potential is a normalised likelihood times a normalised prior; it says which potentials
  are known to be, and refuses the others unless the user vouches for theirs.
- :func:`sir_resample` — sampling/importance resampling: the draws of q resampled with
  their Pareto-smoothed weights, refused when k̂ says the weights cannot be trusted.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Size, Tensor

from sbi_vi.diagnostics.psis import MAX_KHAT, psis
from sbi_vi.errors import QualityWarning
from sbi_vi.potentials import LikelihoodBasedPotential, RatioBasedPotential, SbiStylePotential

__all__ = ["SIRResult", "check_normalized", "num_proposals_for", "sir_resample"]

logger = logging.getLogger("sbi_vi.posteriors.vi_posterior")


def _kind(potential: object) -> str:
    """``"likelihood"``, ``"ratio"``, or a description of another potential."""
    if isinstance(potential, LikelihoodBasedPotential):
        return "likelihood"
    if isinstance(potential, RatioBasedPotential):
        return "ratio"
    if isinstance(potential, SbiStylePotential):  # sbi's own potential classes, by name
        name = type(potential.potential).__name__
        if name == "LikelihoodBasedPotential":
            return "likelihood"
        if name == "RatioBasedPotential":
            return "ratio"
        return f"an sbi-style potential ({name})"
    return f"a custom potential ({type(potential).__name__})"


def check_normalized(potential: object, normalized: bool) -> None:
    """Refuse an evidence for a potential not known to be likelihood × prior.

    A likelihood-based potential (``likelihood_estimator_based_potential``, ours or sbi's)
    is a normalised density of x times the prior. A ratio-based potential is the log
    posterior up to the unknown log p(x_o) itself; a custom one may hold any constant.

    Args:
        potential: The posterior's potential.
        normalized: The user's word that the potential is log p(x_o | θ) + log p(θ) with
            both densities normalised.

    Raises:
        TypeError: If ``normalized`` is not a bool.
        ValueError: If the potential is not likelihood-based and ``normalized`` is False.
    """
    if not isinstance(normalized, bool):
        raise TypeError(f"`normalized` must be a bool, got {type(normalized).__name__}.")
    kind = _kind(potential)
    if normalized or kind == "likelihood":
        return
    if kind == "ratio":
        raise ValueError(
            "log_evidence() needs a normalised likelihood × prior, but the potential is "
            "ratio-based: log r(θ, x_o) + log p(θ) equals the log posterior up to log p(x_o) "
            "itself, so the importance-sampling normaliser is not the evidence. Use a "
            "likelihood-based potential, or pass normalized=True if your ratio is a "
            "normalised likelihood."
        )
    raise ValueError(
        f"log_evidence() needs a normalised likelihood × prior, but the potential is {kind}, "
        "which may carry any constant. If it returns log p(x_o | θ) + log p(θ) with both "
        "densities normalised, pass normalized=True."
    )


@dataclass(frozen=True, eq=False)
class SIRResult:
    """The weights behind the last ``sample(method="sir")`` (``VIPosterior.sir_diagnostics``).

    Attributes:
        khat: PSIS k̂ of the importance weights (``[B]`` tensor for a batch of x).
        ess: Effective sample size of the smoothed weights (``[B]`` for a batch of x).
        num_proposals: Draws of q that were reweighted (per observation).
        num_samples: Draws returned (per observation).
    """

    khat: float | Tensor
    ess: float | Tensor
    num_proposals: int
    num_samples: int


def num_proposals_for(n: int, num_proposals: int | None) -> int:
    """The number of draws of q to resample ``n`` from (default ``max(10 n, 10_000)``).

    Raises:
        ValueError: If ``num_proposals`` is not an integer ≥ 2.
    """
    if num_proposals is None:
        return max(10 * n, 10_000)
    if isinstance(num_proposals, bool) or not isinstance(num_proposals, int) or num_proposals < 2:
        raise ValueError(f"`num_proposals` must be an integer >= 2, got {num_proposals!r}.")
    return num_proposals


def sir_resample(theta: Tensor, log_w: Tensor, sample_shape: Size) -> tuple[Tensor, SIRResult]:
    """Resample draws of q with their Pareto-smoothed importance weights.

    Args:
        theta: Draws of q, ``[M, D]`` or ``[M, B, D]`` (one column per observation).
        log_w: Their log weights ``log p̃ − log q``, ``[M]`` or ``[M, B]``.
        sample_shape: The shape of the draws to return per observation.

    Returns:
        ``[*sample_shape, D]`` (or ``[*sample_shape, B, D]``) draws, with replacement, and
        the :class:`SIRResult` of the weights.

    Raises:
        ValueError: If k̂ > 0.7 for any observation (resampling cannot repair such a q).
    """
    result = psis(log_w)
    khat = torch.as_tensor(result.khat).reshape(-1)
    bad = torch.nonzero(~(khat <= MAX_KHAT)).flatten().tolist()
    if bad:
        where = "" if log_w.ndim == 1 else f" for observation(s) {bad}"
        raise ValueError(
            f"sample(method='sir') refused: PSIS k-hat = {float(khat.max()):.2f} > 0.7{where}, "
            "so the importance weights are too heavy-tailed for resampling to correct q. "
            "Train q longer, use a more flexible family (e.g. q='nsf') or a mass-covering "
            "divergence (vi_method='fKL' or 'IW'), or draw from q with method='direct'."
        )
    n = math.prod(sample_shape)
    weights = result.log_weights.reshape(log_w.shape[0], -1).T.exp()  # [B, M]
    index = torch.multinomial(weights, n, replacement=True) if n else None
    columns = theta.reshape(theta.shape[0], -1, theta.shape[-1])  # [M, B, D]
    if index is None:
        picked = columns[:0]
    else:
        picked = torch.stack([columns[index[b], b] for b in range(columns.shape[1])], 1)
    out = picked.reshape(*sample_shape, *theta.shape[1:])
    info = SIRResult(result.khat, result.ess, log_w.shape[0], n)
    ess_min = float(torch.as_tensor(result.ess).min())
    if ess_min < n:
        warnings.warn(
            f"sample(method='sir'): the effective sample size of the weights is {ess_min:.0f} "
            f"for {n} draws, so the draws repeat; pass a larger `num_proposals` (now "
            f"{log_w.shape[0]}) or train q further.",
            QualityWarning,
            stacklevel=4,
        )
    else:
        logger.info(
            "SIR: k-hat %.3f, ESS %.0f of %d proposals for %d draws.",
            float(khat.max()),
            ess_min,
            log_w.shape[0],
            n,
        )
    return out, info
