"""``AutoDelta``: a point-mass guide, i.e. MAP estimation (locals included)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from sbi_vi.ppl.infer.autoguides.base import AutoGuide
from sbi_vi.ppl.infer.sites import LatentSite
from sbi_vi.vi.families import Family

__all__ = ["AutoDelta", "PointMass"]


class _PointMassDistribution(Distribution):
    """A point mass at ``loc`` (``[D]``) whose draws report log density 0."""

    arg_constraints: dict = {}  # noqa: RUF012
    has_rsample = True

    def __init__(self, loc: Tensor) -> None:
        self.loc = loc
        super().__init__(Size(), loc.shape, validate_args=False)

    def rsample_and_log_prob(self, sample_shape: Size | tuple = ()) -> tuple[Tensor, Tensor]:
        shape = Size(sample_shape)
        return self.loc.expand(shape + self.loc.shape), self.loc.new_zeros(shape)

    def rsample(self, sample_shape: Size | tuple = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        same = (value == self.loc).all(-1)
        return torch.where(same, 0.0, float("-inf"))


class PointMass(Family):
    """The family of point masses ``δ(u - loc)`` over ``u ∈ ℝᴰ``.

    Args:
        init_loc: Initial point, shape ``[D]``.
    """

    def __init__(self, init_loc: Tensor) -> None:
        super().__init__(int(init_loc.shape[0]))
        self.loc = nn.Parameter(init_loc.detach().clone())

    def base(self, context: Tensor | None = None) -> Distribution:
        return _PointMassDistribution(self.loc)

    def forward(self, context: Tensor | None = None) -> Distribution:
        return self.base(context)


class AutoDelta(AutoGuide):
    """Point-mass guide: SVI with ``rKL`` maximises log p(x, θ), the MAP estimate.

    The point lives in unconstrained space but the objective has no change of variables,
    so the maximum is the mode of the posterior in θ's own space (as Pyro's ``AutoDelta``).
    Local latents inside subsampled plates get one point per data point.

    Args:
        model: The model.
        init_loc_fn: Initial values (default: median of 15 prior draws).
    """

    supports_local = True
    is_point_mass = True

    def _build(self, init_loc: Tensor) -> None:
        self.family = PointMass(init_loc)
        self.local_locs = nn.ParameterDict(
            {
                site.name: nn.Parameter(self._unconstrain(site, site.init).detach().clone())
                for site in self._locals
            }
        )

    def _local_draw(
        self,
        site: LatentSite,
        lead: tuple[int, ...],
        indices: Mapping[str, Tensor],
        detached: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        loc = self._local_index(site, self.local_locs[site.name], indices)
        u = loc.expand((*lead, *loc.shape))
        zeros = loc.new_zeros(u.shape[: u.dim() - site.unconstrained_event_ndim])
        return u, zeros, (zeros if detached else None)

    def _global_quantiles(self, q: Tensor) -> Tensor:
        return self.family.loc.expand(q.shape[0], self.latent_dim)

    def _local_quantiles(self, site: LatentSite, q: Tensor) -> Tensor:
        loc = self.local_locs[site.name]
        return loc.expand(q.shape[0], *loc.shape)

    def named_site_params(self) -> dict[str, Tensor]:
        """``{site}_auto_loc``: the point of each site, constrained, in its plain shape."""
        self._require_setup()
        out = {}
        for name, value in self.median().items():
            out[f"{name}_auto_loc"] = value.detach()
        return out
