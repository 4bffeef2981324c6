"""Pareto-smoothed importance sampling (PSIS): k-hat, effective sample size, evidence.

Given particles θ_s ~ q and log importance weights

.. math::

    \\log w_s = \\log \\tilde p(\\theta_s) - \\log q(\\theta_s),

PSIS fits a generalised Pareto distribution to the largest weights. Its shape k̂ tells how
heavy the right tail of the weights is, hence how far q can be trusted as an
importance-sampling proposal for the (unnormalised) target p̃ [1, 2]:

- k̂ ≤ 0.5: the weights have finite variance; q is close to the target.
- 0.5 < k̂ ≤ 0.7: PSIS estimates are still reliable.
- k̂ > 0.7: the tail is too heavy; estimates (and q itself) should not be trusted.
  With few particles S the bound tightens to min(1 − 1/log10(S), 0.7) [2].

The smoothing itself is ArviZ's :func:`arviz.psislw`; this module arranges the axes
(``[particles, *batch]`` here, samples on the last axis there), handles zero weights and
returns a small result object.

References:
    [1] Yao, Vehtari, Simpson, Gelman. *Yes, but did it work?: Evaluating variational
    inference*. ICML 2018. https://arxiv.org/abs/1802.02538

    [2] Vehtari, Simpson, Gelman, Yao, Gabry. *Pareto smoothed importance sampling*.
    JMLR 25(72), 2024. https://arxiv.org/abs/1507.02646
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GOOD_KHAT",
    "MAX_KHAT",
    "PSISResult",
    "khat_threshold",
    "khat_verdict",
    "log_mean_weight",
    "psis",
]

GOOD_KHAT = 0.5
"""k̂ at or below this: importance weights have finite variance."""

MAX_KHAT = 0.7
"""k̂ above this: PSIS estimates are unreliable whatever the number of particles."""


def khat_reliable(khat: float | Tensor) -> bool | Tensor:
    """Whether k̂ ≤ :data:`MAX_KHAT` (a bool, or a bool tensor for a tensor of k̂'s)."""
    if isinstance(khat, Tensor):
        return khat <= MAX_KHAT
    return bool(khat <= MAX_KHAT)


@dataclass(frozen=True, eq=False)
class PSISResult:
    """Result of :func:`psis`.

    For a single observation (``log_w`` of shape ``[S]``) the scalar fields are Python
    floats; for a batch (``log_w`` of shape ``[S, *B]``) they are float64 tensors of shape
    ``[*B]`` on the device of ``log_w``. ``log_weights`` keeps the dtype of ``log_w``.

    Attributes:
        khat: Pareto shape estimate k̂ per batch element; ``inf`` where too few weights are
            non-zero to fit the tail (e.g. every weight is zero).
        ess: Effective sample size ``1 / Σ_s w̄_s²`` of the smoothed, normalised weights
            w̄, between 1 and S (0 where every weight is zero).
        log_weights: Smoothed log weights normalised to sum to one over particles, shape
            ``[S, *B]`` like the input (``-inf`` where every weight is zero).
        log_evidence: Importance-sampling estimate of the log normaliser of the target,
            ``log (1/S) Σ_s w_s``, from the *raw* weights (``-inf`` where all are zero).
        n_particles: The number of particles S.
    """

    khat: float | Tensor
    ess: float | Tensor
    log_weights: Tensor
    log_evidence: float | Tensor
    n_particles: int

    @property
    def reliable(self) -> bool | Tensor:
        """Whether k̂ ≤ 0.7 (bool, or a bool tensor of shape ``[*B]`` for a batch)."""
        return khat_reliable(self.khat)

    @property
    def threshold(self) -> float:
        """The sample-size dependent k̂ threshold ``min(1 − 1/log10(S), 0.7)``."""
        return khat_threshold(self.n_particles)


def khat_threshold(n_particles: int) -> float:
    """Largest k̂ for which PSIS with ``n_particles`` draws is reliable.

    Vehtari et al. (2024) show that the Pareto-smoothed estimate needs
    ``S ≥ 10^(1 / (1 − k))`` draws, i.e. ``k̂ ≤ 1 − 1/log10(S)``; above 0.7 no practical
    number of draws suffices, so the threshold is ``min(1 − 1/log10(S), 0.7)``.

    Args:
        n_particles: Number of importance-sampling draws S (a positive integer).

    Returns:
        The threshold; negative for S < 10 (no k̂ is then trustworthy) and ``-inf`` for S = 1.

    Raises:
        ValueError: If ``n_particles`` is not a positive integer.

    Example:
        >>> khat_threshold(100)
        0.5
        >>> khat_threshold(10_000)
        0.7
    """
    if isinstance(n_particles, bool) or not isinstance(n_particles, int | np.integer):
        raise ValueError(
            f"`n_particles` must be a positive integer, got {type(n_particles).__name__} "
            f"{n_particles!r}."
        )
    if n_particles < 1:
        raise ValueError(f"`n_particles` must be a positive integer, got {n_particles}.")
    if n_particles == 1:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(n_particles), MAX_KHAT)


def khat_verdict(khat: float | Tensor, n_particles: int | None = None) -> str:
    """Describe a Pareto k̂ in words, with the thresholds of Vehtari et al. (2024).

    ``good`` for k̂ ≤ 0.5, ``ok`` for 0.5 < k̂ ≤ threshold, ``unreliable`` above, where the
    threshold is 0.7, or ``min(1 − 1/log10(S), 0.7)`` when the number of particles S is
    given (a k̂ that passes 0.5 can still fail that bound when S < 100).

    Args:
        khat: One k̂ value (a float or a one-element tensor / array).
        n_particles: Number of particles k̂ was estimated from, if known.

    Returns:
        A one-line verdict starting with ``"good"``, ``"ok"`` or ``"unreliable"``.

    Raises:
        ValueError: If ``khat`` is NaN or holds more than one value, or ``n_particles`` is
            not a positive integer.

    Example:
        >>> khat_verdict(0.3)
        'good: k-hat = 0.30 <= 0.5, q is close to the target'
        >>> khat_verdict(0.6, n_particles=100)
        'unreliable: k-hat = 0.60 > 0.50 (the bound for 100 particles); draw more particles'
    """
    if isinstance(khat, Tensor | np.ndarray):
        size = khat.numel() if isinstance(khat, Tensor) else khat.size
        if size != 1:
            raise ValueError(
                f"`khat` must be a single value, got shape {tuple(khat.shape)}; "
                "call khat_verdict on each element of a batch."
            )
        khat = float(khat.reshape(-1)[0])
    khat = float(khat)
    if math.isnan(khat):
        raise ValueError("`khat` must not be NaN.")
    threshold = MAX_KHAT if n_particles is None else khat_threshold(n_particles)
    if math.isinf(khat):
        return "unreliable: k-hat = inf, too few non-zero weights to fit the tail"
    if khat > threshold:
        if threshold < MAX_KHAT:
            return (
                f"unreliable: k-hat = {khat:.2f} > {threshold:.2f} (the bound for "
                f"{n_particles} particles); draw more particles"
            )
        return f"unreliable: k-hat = {khat:.2f} > 0.7, q should not be trusted"
    if khat <= GOOD_KHAT:
        return f"good: k-hat = {khat:.2f} <= 0.5, q is close to the target"
    return f"ok: k-hat = {khat:.2f} <= {threshold:.2f}, PSIS estimates are reliable"


def _import_arviz() -> Any:
    with warnings.catch_warnings():
        # arviz 0.2x announces its refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def log_mean_weight(log_w: Tensor) -> Tensor:
    """The importance-sampling log-evidence estimate ``log (1/S) Σ_s w_s`` over dim 0.

    The same quantity as :attr:`PSISResult.log_evidence` without the Pareto fit, for front
    ends that need only the estimate (e.g. a VAE's marginal log-likelihood per cell).

    Args:
        log_w: Log importance weights, shape ``[S, *B]``.

    Returns:
        Shape ``[*B]``.

    Example:
        >>> float(log_mean_weight(torch.log(torch.tensor([1.0, 3.0]))))
        0.6931471824645996
    """
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def psis(log_w: Tensor | np.ndarray, *, reff: float = 1.0) -> PSISResult:
    """Pareto-smooth log importance weights and diagnose them.

    Args:
        log_w: Log importance weights ``log p̃(θ) − log q(θ)``, shape ``[S, *B]``:
            S particles first, then any batch dimensions (observations, cells).
            ``-inf`` entries are zero weights; a batch element whose weights are all zero
            gets ``khat = inf``, ``ess = 0`` and ``log_evidence = -inf``.
        reff: Relative efficiency ESS/S of the draws; 1 for independent draws from q
            (the VI case), smaller for MCMC draws. Sets the size of the fitted tail.

    Returns:
        A :class:`PSISResult` with k̂, effective sample size, smoothed normalised log
        weights and the log-evidence estimate.

    Raises:
        ValueError: If ``log_w`` has no particle axis, fewer than 2 particles, or holds
            NaN or ``+inf``; if ``reff`` is not positive.
        TypeError: If ``log_w`` is not a tensor or array.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = 1.5 * torch.randn(4000, generator=g)  # particles from q = N(0, 1.5²)
        >>> log_p = torch.distributions.Normal(0.0, 1.0).log_prob(theta)
        >>> log_w = log_p - torch.distributions.Normal(0.0, 1.5).log_prob(theta)
        >>> result = psis(log_w)
        >>> result.reliable, result.log_weights.shape
        (True, torch.Size([4000]))
    """
    if isinstance(log_w, Tensor):
        device = log_w.device
        dtype = log_w.dtype if log_w.is_floating_point() else torch.float64
        values = log_w.detach().to("cpu", torch.float64).numpy()
    elif isinstance(log_w, np.ndarray | list | tuple):
        device, dtype = torch.device("cpu"), torch.float64
        try:
            values = np.asarray(log_w, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError("`log_w` must be a tensor or array of numbers.") from err
    else:
        raise TypeError(f"`log_w` must be a tensor or numpy array, got {type(log_w).__name__}.")
    if isinstance(reff, bool) or not isinstance(reff, int | float) or not reff > 0:
        raise ValueError(f"`reff` must be a positive number, got {reff!r}.")
    if values.ndim == 0:
        raise ValueError("`log_w` must have shape [particles, *batch], got a scalar.")
    n_particles = values.shape[0]
    if n_particles < 2:
        raise ValueError(f"`log_w` must hold at least 2 particles, got shape {values.shape}.")
    n_nan = int(np.isnan(values).sum())
    if n_nan:
        raise ValueError(
            f"`log_w` must not contain NaN, got {n_nan} NaN entries of {values.size}; "
            "check log_p and log_q for invalid values."
        )
    n_posinf = int(np.isposinf(values).sum())
    if n_posinf:
        raise ValueError(
            f"`log_w` must not contain +inf, got {n_posinf} entries: the target density is "
            "infinite where q has mass."
        )

    batch_shape = values.shape[1:]
    columns = values.reshape(n_particles, -1).T  # [B, S]: arviz wants samples last
    alive = np.isfinite(columns).any(axis=1)
    smoothed = np.full_like(columns, -np.inf)
    khat = np.full(columns.shape[0], np.inf)
    if alive.any():
        arviz = _import_arviz()
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            lw, k = arviz.psislw(columns[alive], reff=float(reff), normalize=True)
        smoothed[alive] = lw
        khat[alive] = k

    smoothed_t = torch.from_numpy(smoothed)  # [B, S]
    ess = torch.where(
        torch.from_numpy(alive),
        torch.exp(-torch.logsumexp(2.0 * smoothed_t, dim=1)),
        torch.zeros(()),
    )
    log_evidence = log_mean_weight(torch.from_numpy(columns).T)

    log_weights = smoothed_t.T.reshape(values.shape).to(device=device, dtype=dtype)
    if not batch_shape:
        return PSISResult(
            khat=float(khat[0]),
            ess=float(ess[0]),
            log_weights=log_weights,
            log_evidence=float(log_evidence[0]),
            n_particles=n_particles,
        )

    return PSISResult(
        khat=torch.from_numpy(khat).reshape(batch_shape).to(device),
        ess=ess.reshape(batch_shape).to(device),
        log_weights=log_weights,
        log_evidence=log_evidence.reshape(batch_shape).to(device),
        n_particles=n_particles,
    )
