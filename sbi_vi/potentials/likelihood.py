"""Likelihood-based potentials: log p(x_o | θ) + log p(θ)."""

from __future__ import annotations

from torch import Tensor
from torch.distributions.transforms import Transform, identity_transform

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


def _is_sbi_estimator(likelihood: object) -> bool:
    """sbi's ``ConditionalDensityEstimator``: ``log_prob(input [S, B, L], condition [B, D])``."""
    return hasattr(likelihood, "condition_shape") and hasattr(likelihood, "input_shape")


def _log_likelihood(likelihood: object, x: Tensor, theta: Tensor) -> Tensor:
    if _is_sbi_estimator(likelihood):  # one sample dim over the flattened pairs
        batch = x.shape[:-1]
        flat_x = x.reshape(1, -1, x.shape[-1])
        flat_theta = theta.reshape(-1, theta.shape[-1])
        log_prob = likelihood.log_prob  # type: ignore[attr-defined]
        return log_prob(flat_x, condition=flat_theta).reshape(batch)
    log_prob = getattr(likelihood, "log_prob", None)
    if callable(log_prob):
        return log_prob(x, theta)
    return likelihood(theta, x)  # type: ignore[operator]


class LikelihoodBasedPotential(EstimatorPotential):
    r"""log p̃(θ | x_o) = Σᵢ log p(x_i | θ) + log p(θ).

    Args:
        likelihood: An object with ``log_prob(x, theta)`` (a trained NLE estimator or any
            conditional density) or a callable ``(theta, x) -> log p(x | θ)``, evaluated
            element-wise: x ``[*, L]`` and θ ``[*, D]`` with equal leading shapes; or an
            sbi ``ConditionalDensityEstimator`` (``log_prob(input, condition)``).
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

    @property
    def likelihood_estimator(self) -> object:
        """The likelihood (estimator), under the attribute name sbi's potential uses."""
        return self.likelihood

    def log_term(self, x: Tensor, theta: Tensor) -> Tensor:
        return _log_likelihood(self.likelihood, x, theta)


def likelihood_estimator_based_potential(
    likelihood_estimator: object,
    prior: object,
    x_o: Tensor | None = None,
    enable_transform: bool = True,
) -> tuple[LikelihoodBasedPotential, Transform]:
    """Return ``(potential, theta_transform)`` for a likelihood (estimator), as in sbi.

    The potential is an object as sbi's: ``set_x(x_o, x_is_iid=...)``, ``prior``,
    ``likelihood_estimator`` and ``__call__(theta, track_gradients=True)``; with
    ``x_o=None`` it serves ``VIPosterior.train_amortized`` (which sets x itself).

    Args:
        likelihood_estimator: See :class:`LikelihoodBasedPotential` (an NLE network, a
            conditional density, a function, or an sbi density estimator).
        prior: The prior.
        x_o: Observation(s), ``[L]`` or ``[N, L]`` (default: none yet).
        enable_transform: As in sbi: ``False`` returns the identity as ``theta_transform``.

    Returns:
        The potential and the map from the prior's support to unconstrained space.
    """
    potential = LikelihoodBasedPotential(likelihood_estimator, prior, x_o)
    if not enable_transform:
        return potential, identity_transform
    return potential, theta_transform(potential.prior)
