"""The importance-sampling estimate of the evidence, with its standard error and PSIS k-hat.

Given draws θ_s ~ q and log weights ``log w_s = log p(x, θ_s) − log q(θ_s)`` of a
*normalised* joint density (likelihood × prior), the mean weight is an unbiased estimate of
the evidence p(x), and

.. math::

    \\widehat{\\log p(x)} = \\log \\frac1S \\sum_s w_s, \\qquad
    \\mathrm{se} \\approx \\frac{\\mathrm{sd}(w)}{\\sqrt S\\, \\bar w}

(the delta method: the standard error of the mean weight over the mean weight). The error
bar is only as good as the weights: the PSIS k̂ of the same weights says whether to trust
it (k̂ ≤ 0.7; above, the variance of the weights may be infinite and the standard error
understates the error). Every front end that reports an evidence — ``VIPosterior``, the
PPL's ``log_evidence``, the Pyro interop — calls :func:`log_evidence_from_log_weights`; the
VAE's marginal log-likelihood is its ``value`` (:func:`~sbi_vi.diagnostics.log_mean_weight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from sbi_vi.diagnostics.psis import khat_reliable, log_mean_weight, psis

__all__ = ["LogEvidence", "log_evidence_from_log_weights"]


@dataclass(frozen=True, eq=False)
class LogEvidence:
    """An importance-sampling estimate of the log marginal likelihood log p(x).

    For one target (log weights ``[S]``) the fields are Python floats; for a batch
    (``[S, *B]``, e.g. one per observation) ``value``, ``stderr`` and ``khat`` are float64
    tensors of shape ``[*B]``.

    Attributes:
        value: ``log (1/S) Σ_s w_s`` with ``w_s = p(x, θ_s) / q(θ_s)``, θ_s drawn from q.
        stderr: Its standard error (delta method: the standard error of the mean weight
            over the mean weight; ``inf`` where every weight is zero). Trust it only when
            ``khat`` is small.
        khat: PSIS k̂ of the weights (> 0.7: the estimate and its error are unreliable).
        n_particles: The number of draws S.
    """

    value: float | Tensor
    stderr: float | Tensor
    khat: float | Tensor
    n_particles: int

    @property
    def reliable(self) -> bool | Tensor:
        """Whether k̂ ≤ 0.7 (bool, or a bool tensor of shape ``[*B]`` for a batch)."""
        return khat_reliable(self.khat)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogEvidence):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                if not torch.equal(torch.as_tensor(a), torch.as_tensor(b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def log_evidence_from_log_weights(log_w: Tensor) -> LogEvidence:
    """The evidence estimate, its standard error and PSIS k̂ from log importance weights.

    Args:
        log_w: ``log p(x, θ_s) − log q(θ_s)`` of S ≥ 2 draws of q, shape ``[S, *B]`` (S
            first, then any batch dims). ``-inf`` entries are zero weights. The joint density
            must be normalised (likelihood × prior) for the result to be log p(x).

    Returns:
        A :class:`LogEvidence` (floats for ``[S]``, tensors ``[*B]`` for a batch).

    Raises:
        TypeError: If ``log_w`` is not a tensor.
        ValueError: If ``log_w`` has fewer than 2 particles, or holds NaN or +inf.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = 1.2 * torch.randn(4000, generator=g)   # q = N(0, 1.2²)
        >>> joint = torch.distributions.Normal(0.0, 1.0).log_prob(theta) + 2.0  # p(x) = e²
        >>> log_w = joint - torch.distributions.Normal(0.0, 1.2).log_prob(theta)
        >>> est = log_evidence_from_log_weights(log_w)
        >>> abs(est.value - 2.0) < 3 * est.stderr, est.reliable
        (True, True)
    """
    if not isinstance(log_w, Tensor):
        raise TypeError(f"`log_w` must be a tensor [S, *B], got {type(log_w).__name__}.")
    result = psis(log_w)  # checks the shape and the values
    log_w = log_w.detach().double()
    top = log_w.max(dim=0, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(log_w - top)
    mean = w.mean(0)
    stderr = torch.where(
        mean > 0,
        w.std(0) / math.sqrt(log_w.shape[0]) / mean,
        torch.full_like(mean, math.inf),
    )
    value = log_mean_weight(log_w)
    if log_w.ndim == 1:
        return LogEvidence(float(value), float(stderr), float(result.khat), log_w.shape[0])
    khat = torch.as_tensor(result.khat, dtype=torch.float64, device=log_w.device)
    return LogEvidence(value, stderr, khat, log_w.shape[0])
