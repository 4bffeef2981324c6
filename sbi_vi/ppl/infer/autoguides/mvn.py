"""``AutoMultivariateNormal``: a full-rank Gaussian guide over the global latents."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_vi.ppl.infer.autoguides.base import AutoGuide
from sbi_vi.ppl.infer.autoguides.normal import inverse_softplus
from sbi_vi.vi.families import Family
from sbi_vi.vi.families.gaussian import GaussianDistribution

__all__ = ["AutoMultivariateNormal", "FullRankNormal"]


class FullRankNormal(Family):
    """N(loc, L Lᵀ) over ``u ∈ ℝᴰ`` with ``L = diag(softplus(raw_scale)) · U``.

    ``U`` is unit lower-triangular (its strictly lower part is :attr:`raw_tril`), as in
    Pyro's ``AutoMultivariateNormal``, so the initial guide is N(loc, init_scale² I).

    Args:
        init_loc: Initial location, shape ``[D]``.
        init_scale: Initial scale (positive).

    Example:
        >>> family = FullRankNormal(torch.zeros(3), 0.1)
        >>> family().covariance_matrix.diagonal()
        tensor([0.0100, 0.0100, 0.0100], grad_fn=<DiagonalBackward0>)
    """

    def __init__(self, init_loc: Tensor, init_scale: float) -> None:
        d = int(init_loc.shape[0])
        super().__init__(d)
        self.loc = nn.Parameter(init_loc.detach().clone())
        self.raw_scale = nn.Parameter(inverse_softplus(torch.full_like(init_loc, init_scale)))
        self.raw_tril = nn.Parameter(init_loc.new_zeros(d * (d - 1) // 2))
        self.register_buffer("_index", torch.tril_indices(d, d, offset=-1), persistent=False)

    @property
    def scale_tril(self) -> Tensor:
        """``L``, ``[D, D]`` lower-triangular with a positive diagonal."""
        d = self.event_size
        unit = torch.eye(d, dtype=self.loc.dtype, device=self.loc.device)
        if d > 1:
            unit = unit.index_put((self._index[0], self._index[1]), self.raw_tril)
        return F.softplus(self.raw_scale).unsqueeze(-1) * unit

    def base(self, context: Tensor | None = None) -> Distribution:
        if context is not None:
            raise ValueError("an autoguide's family takes no context.")
        return GaussianDistribution(self.loc, self.scale_tril)

    def forward(self, context: Tensor | None = None) -> Distribution:
        return self.base(context)


class AutoMultivariateNormal(AutoGuide):
    """Full-rank Gaussian guide over the flat unconstrained vector of all latents.

    Captures posterior correlations that ``AutoNormal`` misses. Models with latent sites
    inside a subsampled plate are refused (one joint Gaussian over every data point's
    latents cannot be trained on minibatches); use ``AutoNormal`` there.

    Args:
        model: The model.
        init_loc_fn: Initial values (default: median of 15 prior draws).
        init_scale: Initial scale in unconstrained space.
    """

    def _build(self, init_loc: Tensor) -> None:
        self.family = FullRankNormal(init_loc, self.init_scale)

    def _global_quantiles(self, q: Tensor) -> Tensor:
        tril = self.family.scale_tril
        std = tril.square().sum(-1).sqrt()
        z = torch.distributions.Normal(0.0, 1.0).icdf(q).unsqueeze(-1)
        return self.family.loc + std * z

    def named_site_params(self) -> dict[str, Tensor]:
        """``auto_loc`` ``[D]`` and ``auto_scale_tril`` ``[D, D]`` (unconstrained space)."""
        self._require_setup()
        return {
            "auto_loc": self.family.loc.detach().clone(),
            "auto_scale_tril": self.family.scale_tril.detach(),
        }
