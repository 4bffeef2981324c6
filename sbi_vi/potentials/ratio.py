"""Ratio-based potentials: log r(θ, x_o) + log p(θ), r ∝ p(x | θ) / p(x)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions.transforms import Transform, identity_transform

from sbi_vi.potentials.base import EstimatorPotential
from sbi_vi.priors import process_prior, theta_transform

__all__ = ["RatioBasedPotential", "ratio_estimator_based_potential"]


def _check_ratio(ratio: object) -> None:
    if callable(getattr(ratio, "log_ratio", None)) or callable(ratio):
        return
    raise TypeError(
        "`ratio_estimator` must have `log_ratio(theta, x)` or be a callable "
        f"`(theta, x) -> log r(theta, x)`; got {type(ratio).__name__}."
    )


def _log_ratio(ratio: object, theta: Tensor, x: Tensor) -> Tensor:
    fn = getattr(ratio, "log_ratio", None)
    if callable(fn):
        return fn(theta, x)
    # a classifier as sbi's: logits ``[N]`` or ``[N, 1]`` of flat pairs θ [N, D], x [N, L]
    batch = torch.broadcast_shapes(theta.shape[:-1], x.shape[:-1])
    flat_theta = theta.expand(*batch, theta.shape[-1]).reshape(-1, theta.shape[-1])
    flat_x = x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1])
    return ratio(flat_theta, flat_x).reshape(batch)  # type: ignore[operator]


class RatioBasedPotential(EstimatorPotential):
    r"""log p̃(θ | x_o) = Σᵢ log r(θ, x_i) + log p(θ).

    Args:
        ratio_estimator: An object with ``log_ratio(theta, x)`` or a callable
            ``(theta, x) -> log r``; θ ``[*, D]`` and x ``[*, L]`` broadcast.
        prior: The prior.
        x_o: Observation(s), ``[L]`` or ``[N, L]`` (iid rows sum).

    Example:
        >>> import torch
        >>> from sbi_vi.priors import BoxUniform
        >>> pot = RatioBasedPotential(lambda t, x: -(t - x).square().sum(-1),
        ...                           BoxUniform(-torch.ones(2), torch.ones(2)), torch.zeros(2))
        >>> pot(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        ratio_estimator: object,
        prior: object,
        x_o: Tensor | None = None,
        device: str = "cpu",
    ):
        _check_ratio(ratio_estimator)
        self.ratio_estimator = ratio_estimator
        super().__init__(process_prior(prior), x_o, device)

    def log_term(self, x: Tensor, theta: Tensor) -> Tensor:
        return _log_ratio(self.ratio_estimator, theta, x)


def ratio_estimator_based_potential(
    ratio_estimator: object,
    prior: object,
    x_o: Tensor | None = None,
    enable_transform: bool = True,
) -> tuple[RatioBasedPotential, Transform]:
    """Return ``(potential, theta_transform)`` for a ratio estimator, as in sbi.

    The potential is an object as sbi's (``set_x``, ``prior``, ``ratio_estimator``,
    ``__call__(theta, track_gradients=True)``); with ``x_o=None`` it serves
    ``VIPosterior.train_amortized``.

    Args:
        ratio_estimator: See :class:`RatioBasedPotential` (an NRE network, a function, or
            an sbi classifier ``net(theta, x) -> logits``).
        prior: The prior.
        x_o: Observation(s), ``[L]`` or ``[N, L]`` (default: none yet).
        enable_transform: As in sbi: ``False`` returns the identity as ``theta_transform``.

    Returns:
        The potential and the map from the prior's support to unconstrained space.
    """
    potential = RatioBasedPotential(ratio_estimator, prior, x_o)
    if not enable_transform:
        return potential, identity_transform
    return potential, theta_transform(potential.prior)
