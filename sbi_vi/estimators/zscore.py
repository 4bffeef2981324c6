"""Z-scoring of θ and x from training data, as a module with frozen statistics.

``independent`` standardises every dimension with its own mean and standard deviation;
``structured`` uses one mean and one standard deviation for all dimensions (for time series
or images, whose dimensions share a scale); ``none`` is the identity. The statistics are
computed once, from the training split, and stored as buffers, so they move with
``.to(device)`` and are saved with the estimator.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from sbi_vi._checks import check_choice

__all__ = ["Standardize", "ZScore", "standardizers"]

ZScore = Literal["none", "independent", "structured"]
_CHOICES = ("none", "independent", "structured")
_MIN_STD = 1e-7


class Standardize(nn.Module):
    r"""The affine map :math:`t \mapsto (t - \mu) / \sigma` with statistics from a batch.

    Args:
        batch: Training values, shape ``[N, F]``; only finite rows are used.
        mode: ``independent``, ``structured`` or ``none``.

    Example:
        >>> z = Standardize(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
        >>> z(torch.tensor([[1.0, 20.0]]))
        tensor([[0., 0.]])
    """

    def __init__(self, batch: Tensor, mode: ZScore = "independent"):
        super().__init__()
        check_choice("z_score", mode, _CHOICES)
        if batch.ndim != 2:
            raise ValueError(f"`batch` must have shape [N, F]; got {tuple(batch.shape)}.")
        self.mode = mode
        features = batch.shape[-1]
        mean = torch.zeros(features, dtype=batch.dtype, device=batch.device)
        std = torch.ones_like(mean)
        finite = batch[torch.isfinite(batch).all(-1)]
        if mode != "none" and finite.shape[0] > 0:
            if mode == "independent":
                mean = finite.mean(0)
                if finite.shape[0] > 1:
                    std = finite.std(0)
            else:
                mean = finite.mean().expand(features).clone()
                if finite.shape[0] > 1:
                    std = finite.std(-1).mean().expand(features).clone()
                    if features == 1:
                        std = finite.std().expand(features).clone()
        std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, t: Tensor) -> Tensor:
        """Standardise ``t`` of shape ``[*, F]``."""
        if self.mode == "none":
            return t
        return (t - self.mean) / self.std

    def inverse(self, u: Tensor) -> Tensor:
        """Undo :meth:`forward` for ``u`` of shape ``[*, F]``."""
        if self.mode == "none":
            return u
        return u * self.std + self.mean

    def log_abs_det(self) -> Tensor:
        """log |det ∂forward/∂t| = −Σ log σ (a scalar tensor)."""
        return -self.std.log().sum()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, features={self.mean.shape[0]}"


def standardizers(
    batch_theta: Tensor, batch_x: Tensor, z_score_theta: ZScore, z_score_x: ZScore
) -> tuple[Standardize, Standardize]:
    """The z-scoring layers of θ and x fitted to a training batch.

    Args:
        batch_theta: Parameters, shape ``[N, D]``.
        batch_x: Simulations, shape ``[N, L]``.
        z_score_theta: How to z-score θ.
        z_score_x: How to z-score x.

    Raises:
        ValueError: If either batch is not two-dimensional.
    """
    if batch_theta.ndim != 2 or batch_x.ndim != 2:
        raise ValueError(
            "`batch_theta` and `batch_x` must have shapes [N, D] and [N, L]; got "
            f"{tuple(batch_theta.shape)} and {tuple(batch_x.shape)}."
        )
    return Standardize(batch_theta, z_score_theta), Standardize(batch_x, z_score_x)
