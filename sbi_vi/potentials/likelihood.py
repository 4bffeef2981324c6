"""Likelihood-based potentials: log p(x_o | θ) + log p(θ)."""

from __future__ import annotations

from torch import Tensor
from torch.distributions.transforms import Transform

from sbi_vi.potentials.base import EstimatorPotential
from sbi_vi.priors import process_prior, theta_transform

__all__ = ["LikelihoodBasedPotential", "likelihood_estimator_based_potential"]


def _check_likelihood(likelihood: object) -> None:
    if callable(getattr(likelihood, "log_prob", None)) or callable(likelihood):
        return
    raise TypeError(
        "`likelihood_estimator` must have `log_prob(x, theta)` or be a callable "
        f"`(theta, x) -> log p(x | theta)`; got {type(likelihood).__name__}."
    )


def _log_likelihood(likelihood: object, x: Tensor, theta: Tensor) -> Tensor:
    log_prob = getattr(likelihood, "log_prob", None)
    if callable(log_prob):
        return log_prob(x, theta)
    return likelihood(theta, x)  # type: ignore[operator]


class LikelihoodBasedPotential(EstimatorPotential):
    r"""log p̃(θ | x_o) = Σᵢ log p(x_i | θ) + log p(θ).

    Args:
        likelihood: An object with ``log_prob(x, theta)`` (a trained NLE estimator or any
            conditional density) or a callable ``(theta, x) -> log p(x | θ)``, evaluated
            element-wise: x ``[*, L]`` and θ ``[*, D]`` with equal leading shapes.
        prior: The prior.
        x_o: Observation(s), ``[L]`` or ``[N, L]`` (iid rows sum).

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from sbi_vi.priors import BoxUniform
        >>> lik = lambda theta, x: Normal(theta, 1.0).log_prob(x).sum(-1)
        >>> pot = LikelihoodBasedPotential(lik, BoxUniform(-torch.ones(2), torch.ones(2)),
        ...                                torch.zeros(2))
        >>> pot(torch.zeros(4, 2)).shape
        torch.Size([4])
    """

    def __init__(
        self, likelihood: object, prior: object, x_o: Tensor | None = None, device: str = "cpu"
    ):
        _check_likelihood(likelihood)
        self.likelihood = likelihood
        super().__init__(process_prior(prior), x_o, device)

    def log_term(self, x: Tensor, theta: Tensor) -> Tensor:
        return _log_likelihood(self.likelihood, x, theta)


def likelihood_estimator_based_potential(
    likelihood_estimator: object, prior: object, x_o: Tensor | None = None
) -> tuple[LikelihoodBasedPotential, Transform]:
    """Return ``(potential, theta_transform)`` for a likelihood (estimator), as in sbi.

    Args:
        likelihood_estimator: See :class:`LikelihoodBasedPotential`.
        prior: The prior.
        x_o: Observation(s), ``[L]`` or ``[N, L]``.

    Returns:
        The potential and the map from the prior's support to unconstrained space.
    """
    potential = LikelihoodBasedPotential(likelihood_estimator, prior, x_o)
    return potential, theta_transform(potential.prior)
