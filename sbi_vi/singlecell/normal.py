r"""The Gaussian likelihood of ``gene_likelihood="normal"`` (log-normalised, non-count data).

As scvi-tools' VAE: ``x_g ~ N(ℓ ρ_g, σ_g²)`` with ``ρ = softmax(f(z, s))`` the normalised
expression (``px_scale``), ``ℓ`` the library size (observed ``Σ_g x_g``, latent, or the size
factor) and ``σ = exp(px_r)`` from the dispersion parameters (``"gene"``, ``"gene-batch"``,
``"gene-label"``, ``"gene-cell"``).
"""

from __future__ import annotations

import math

import torch
from torch import Size, Tensor
from torch.distributions import Distribution, constraints

__all__ = ["NormalLikelihood"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class NormalLikelihood(Distribution):
    """Independent Gaussians over the genes, with the names of the count likelihoods.

    ``mu`` is the mean (scVI's ``px_rate``), ``scale`` the normalised expression
    (``px_scale``, scvi-tools' ``normal_mu``) — not the standard deviation, which is ``std``.

    Args:
        mu: Mean ``ℓ ρ``, shape ``[*, G]``.
        std: Standard deviation, broadcastable to ``mu``, positive.
        scale: Normalised expression ``ρ``, shape of ``mu``.

    Example:
        >>> d = NormalLikelihood(torch.zeros(2, 3), torch.ones(3), torch.full((2, 3), 1 / 3))
        >>> round(float(d.log_prob_sum(torch.zeros(2, 3))[0]), 4)
        -2.7568
    """

    arg_constraints = {"mu": constraints.real, "std": constraints.positive}  # noqa: RUF012
    support = constraints.real
    has_rsample = True

    def __init__(self, mu: Tensor, std: Tensor, scale: Tensor):
        self._mu, self._std, self.scale = mu, std, scale
        super().__init__(torch.broadcast_shapes(mu.shape, std.shape), validate_args=False)

    @property
    def mu(self) -> Tensor:
        return self._mu.expand(self.batch_shape)

    @property
    def loc(self) -> Tensor:
        return self.mu

    @property
    def std(self) -> Tensor:
        return self._std.expand(self.batch_shape)

    @property
    def normal_mu(self) -> Tensor:
        """scvi-tools' name of the normalised expression."""
        return self.scale

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def variance(self) -> Tensor:
        return self.std.square()

    def log_prob(self, value: Tensor) -> Tensor:
        return -0.5 * ((value - self._mu) / self._std).square() - self._std.log() - _HALF_LOG_2PI

    def gamma_terms(self, value: Tensor) -> Tensor:
        """The part of :meth:`log_prob_sum` free of every parameter, ``[*]``."""
        constant = -_HALF_LOG_2PI * value.shape[-1]
        return torch.full(value.shape[:-1], constant, dtype=value.dtype, device=value.device)

    def log_prob_sum(self, value: Tensor, *, gamma_terms: Tensor | None = None) -> Tensor:
        """``log_prob(value).sum(-1)`` (``gamma_terms``: from :meth:`gamma_terms`)."""
        z = (value - self._mu) / self._std
        out = -0.5 * z.square().sum(-1) - self._std.log().expand(self.batch_shape).sum(-1)
        if gamma_terms is None:
            gamma_terms = self.gamma_terms(value)
        return out + gamma_terms

    def rsample(self, sample_shape: Size | tuple = ()) -> Tensor:
        shape = Size(sample_shape) + self.batch_shape
        eps = torch.randn(shape, dtype=self._mu.dtype, device=self._mu.device)
        return self._mu + self._std * eps

    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)
