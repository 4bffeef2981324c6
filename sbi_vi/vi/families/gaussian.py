"""Gaussian families over unconstrained θ: full covariance and diagonal.

Unconditional families hold a location and a (Cholesky) scale as parameters; with a context
the same quantities come from a small network of the context, so amortised VI only passes
``x``. Sampling and ``log_prob`` are both one pass.
"""

from __future__ import annotations

import math

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution
from torch.distributions.transforms import Transform, identity_transform

from sbi_vi._checks import check_positive_int
from sbi_vi.vi.families.base import Family

__all__ = ["DiagonalGaussian", "Gaussian", "GaussianDistribution"]

_LOG_2PI = math.log(2 * math.pi)


class GaussianDistribution(Distribution):
    r"""N(loc, L Lᵀ) with a lower-triangular ``scale_tril`` L; one-pass sample and density.

    A lean alternative to ``MultivariateNormal`` that implements
    ``rsample_and_log_prob`` without a triangular solve (``log q`` from the noise ε).

    Args:
        loc: Mean, shape ``[*batch, D]``.
        scale_tril: Lower-triangular scale, shape ``[*batch, D, D]``, positive diagonal.
    """

    has_rsample = True
    arg_constraints: dict = {}  # noqa: RUF012

    def __init__(self, loc: Tensor, scale_tril: Tensor):
        self.loc = loc
        self.scale_tril = scale_tril
        self._half_log_det = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def _log_prob_eps(self, eps: Tensor) -> Tensor:
        d = eps.shape[-1]
        return -0.5 * (eps.square().sum(-1) + d * _LOG_2PI) - self._half_log_det

    def rsample_and_log_prob(self, sample_shape: Size | tuple = ()) -> tuple[Tensor, Tensor]:
        shape = Size(sample_shape) + self.batch_shape + self.event_shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        if self.batch_shape and len(sample_shape):
            # a batch of q's: one [D, D] @ [D, draws] product per batch element, instead of
            # one tiny product per draw (several times faster, forward and backward)
            d = shape[-1]
            cols = eps.reshape(-1, *self.batch_shape, d).movedim(0, -1)  # [*batch, D, draws]
            noise = (self.scale_tril @ cols).movedim(-1, 0).reshape(shape)
        else:
            noise = (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        return self.loc + noise, self._log_prob_eps(eps)

    def rsample(self, sample_shape: Size | tuple = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        diff = (value - self.loc).unsqueeze(-1)
        tril = self.scale_tril.expand(diff.shape[:-2] + self.scale_tril.shape[-2:])
        eps = torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)
        return self._log_prob_eps(eps)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def covariance_matrix(self) -> Tensor:
        return self.scale_tril @ self.scale_tril.mT


class DiagonalGaussianDistribution(GaussianDistribution):
    """N(loc, diag(scale²)); element-wise, no matrix products."""

    def __init__(self, loc: Tensor, scale: Tensor):
        self.loc = loc
        self.scale = scale
        self._half_log_det = scale.log().sum(-1)
        Distribution.__init__(self, loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def rsample_and_log_prob(self, sample_shape: Size | tuple = ()) -> tuple[Tensor, Tensor]:
        shape = Size(sample_shape) + self.batch_shape + self.event_shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps, self._log_prob_eps(eps)

    def log_prob(self, value: Tensor) -> Tensor:
        return self._log_prob_eps((value - self.loc) / self.scale)

    @property
    def scale_tril(self) -> Tensor:
        return torch.diag_embed(self.scale)


def _context_net(
    context_size: int, hidden_features: int, out_features: int, hidden_layers: int = 2
) -> nn.Module:
    """An MLP of the context with ``hidden_layers`` ReLU layers (0: a linear head), whose
    zero-initialised last layer makes the family start at its standardisation."""
    layers: list[nn.Module] = []
    width = context_size
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_features), nn.ReLU()]
        width = hidden_features
    net = nn.Sequential(*layers, nn.Linear(width, out_features))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class Gaussian(Family):
    """Full-covariance Gaussian family over unconstrained θ (``q='gaussian'``).

    The raw parameters are multiplied by :attr:`parameter_scale` (10): Adam moves every
    parameter by about one learning rate per step, so with the defaults (lr 1e-3, decay
    0.999) an unscaled location could travel at most about one prior standard deviation
    in total. A flow spreads its moves over many weights; a Gaussian has one per quantity.

    Args:
        event_size: Dimension ``D`` of θ.
        link: Bijection from ℝᴰ onto the support.
        shift: Standardisation location, shape ``[D]``; the family starts at N(shift, scale²).
        scale: Standardisation scale, shape ``[D]``.
        context_size: Size ``L`` of a context (after ``embedding_net``); if positive, a
            network of the context gives the parameters.
        hidden_features: Width of the context network.
        context_layers: Hidden layers of the context network (0: the parameters are a
            linear function of the context, e.g. of an encoder's features).
        embedding_net: Network applied to the context first (see :class:`Family`).

    Example:
        >>> q = Gaussian(3)()
        >>> q.sample((5,)).shape
        torch.Size([5, 3])
    """

    parameter_scale: float = 10.0
    batchable = True  # loc and scale broadcast over a leading dim of ``params``

    def __init__(
        self,
        event_size: int,
        link: Transform = identity_transform,
        shift: Tensor | None = None,
        scale: Tensor | None = None,
        *,
        context_size: int = 0,
        hidden_features: int = 50,
        context_layers: int = 2,
        embedding_net: nn.Module | None = None,
    ):
        super().__init__(event_size, link, shift, scale, embedding_net=embedding_net)
        d = self.event_size
        self.context_size = check_positive_int("context_size", context_size, allow_zero=True)
        context_layers = check_positive_int("context_layers", context_layers, allow_zero=True)
        self.register_buffer("_tril_index", torch.tril_indices(d, d, offset=-1), persistent=False)
        n_out = self._n_params()
        if self.context_size:
            self.net = _context_net(self.context_size, hidden_features, n_out, context_layers)
        else:
            self.params = nn.Parameter(torch.zeros(n_out))

    def _n_params(self) -> int:
        d = self.event_size
        return 2 * d + d * (d - 1) // 2

    def _raw(self, context: Tensor | None) -> Tensor:
        if context is None or not self.context_size:
            return self.params * self.parameter_scale
        return self.net(context)

    def base(self, context: Tensor | None = None) -> Distribution:
        raw = self._raw(context)
        d = self.event_size
        loc, log_diag, off = raw[..., :d], raw[..., d : 2 * d], raw[..., 2 * d :]
        tril = torch.diag_embed(torch.exp(log_diag))
        if d > 1:
            i, j = self._tril_index
            tril[..., i, j] = off
        return GaussianDistribution(loc, tril)


class DiagonalGaussian(Gaussian):
    """Diagonal Gaussian family over unconstrained θ (``q='gaussian_diag'``).

    Args: as :class:`Gaussian`.

    Example:
        >>> q = DiagonalGaussian(3)()
        >>> q.log_prob(torch.zeros(3)).shape
        torch.Size([])
    """

    def _n_params(self) -> int:
        return 2 * self.event_size

    def base(self, context: Tensor | None = None) -> Distribution:
        raw = self._raw(context)
        d = self.event_size
        return DiagonalGaussianDistribution(raw[..., :d], torch.exp(raw[..., d:]))
