"""``AutoNormal``: a mean-field Gaussian guide in unconstrained space, locals included."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from sbi_vi.ppl.infer.autoguides.base import AutoGuide, split_natural
from sbi_vi.ppl.infer.sites import LatentSite, natural_shape
from sbi_vi.vi.families import Family
from sbi_vi.vi.families.gaussian import DiagonalGaussianDistribution

__all__ = ["AutoNormal", "MeanFieldNormal", "inverse_softplus"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def inverse_softplus(y: Tensor) -> Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0``."""
    return y + torch.log(-torch.expm1(-y))


def _normal_log_prob(eps: Tensor, scale: Tensor, event_ndim: int) -> Tensor:
    """log N(loc + scale·eps | loc, scale), summed over the ``event_ndim`` last dims.

    ``scale`` has the shape of the event's parameters (``eps`` may have leading dims).
    """
    log_scale = scale.log()
    if not event_ndim:
        return -_HALF_LOG_2PI - torch.add(log_scale, eps.square(), alpha=0.5)
    if event_ndim == 1:
        square = torch.linalg.vecdot(eps, eps)
    else:
        square = eps.square().sum(tuple(range(-event_ndim, 0)))
    log_det = log_scale.sum(tuple(range(-event_ndim, 0)))
    size = math.prod(eps.shape[eps.dim() - event_ndim :])
    return -size * _HALF_LOG_2PI - torch.add(log_det, square, alpha=0.5)


class _MeanFieldDistribution(DiagonalGaussianDistribution):
    """N(loc, diag(scale²)) over ``u ∈ ℝᴰ``, drawn with one fused multiply-add.

    The log density of a draw comes from its noise ε (no triangular solve, no division),
    and ``Σ log scale`` is computed when a density is asked for, not when q is built.
    """

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        self.loc = loc
        self.scale = scale
        Distribution.__init__(self, loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def _half_log_det(self) -> Tensor:  # type: ignore[override]
        return self.scale.log().sum(-1)

    def rsample_and_log_prob(self, sample_shape: Size | tuple = ()) -> tuple[Tensor, Tensor]:
        loc = self.loc
        eps = torch.randn(Size(sample_shape) + loc.shape, dtype=loc.dtype, device=loc.device)
        return torch.addcmul(loc, self.scale, eps), _normal_log_prob(eps, self.scale, 1)


class MeanFieldNormal(Family):
    """N(loc, diag(scale²)) over ``u ∈ ℝᴰ`` with ``scale = softplus(raw_scale)``.

    Parametrised as Pyro's ``AutoNormal`` (location and softplus-positive scale, no
    rescaling), so a learning rate means the same in both. Location and raw scale are the
    two rows of one parameter tensor, ``params`` ``[2, D]`` (one tensor for the optimiser).

    Args:
        init_loc: Initial location, shape ``[D]``.
        init_scale: Initial scale (positive).

    Example:
        >>> family = MeanFieldNormal(torch.zeros(3), 0.1)
        >>> u, log_q = family().rsample_and_log_prob((5,))
        >>> tuple(u.shape), tuple(log_q.shape)
        ((5, 3), (5,))
    """

    def __init__(self, init_loc: Tensor, init_scale: float) -> None:
        super().__init__(int(init_loc.shape[0]))
        raw = inverse_softplus(torch.full_like(init_loc, float(init_scale)))
        self.params = nn.Parameter(torch.stack([init_loc.detach(), raw]))

    @property
    def loc(self) -> Tensor:
        """The location, ``[D]``."""
        return self.params[0]

    @property
    def scale_values(self) -> Tensor:
        """The scale ``softplus(raw_scale)``, ``[D]``."""
        return F.softplus(self.params[1])

    def base(self, context: Tensor | None = None) -> Distribution:
        if context is not None:
            raise ValueError("an autoguide's family takes no context.")
        loc, raw = self.params.unbind(0)  # as ``loc, raw = self.params``, minus the iterator
        return _MeanFieldDistribution(loc, F.softplus(raw))

    def forward(self, context: Tensor | None = None) -> Distribution:
        return self.base(context)


class AutoNormal(AutoGuide):
    """Mean-field Gaussian guide: each latent coordinate independent in unconstrained space.

    Global latents share one :class:`MeanFieldNormal` over the flat vector ``u`` (the
    engine family, :attr:`family`). Local latents — sites inside a subsampled plate — get
    per-data-point locations and scales of the plate's full size, indexed by the
    minibatch, as in Pyro's ``AutoNormal`` (stored as ``local_params[site]``, ``[2,
    *shape]``: location and raw scale).

    Args:
        model: The model.
        init_loc_fn: Initial values (default: median of 15 prior draws).
        init_scale: Initial standard deviation in unconstrained space.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import plate, sample
        >>> def model(x):
        ...     mu = sample("mu", Normal(0.0, 1.0))
        ...     with plate("data", x.shape[0]):
        ...         sample("x", Normal(mu, 1.0), obs=x)
        >>> guide = AutoNormal(model)
        >>> sorted(guide(torch.zeros(3)))
        ['mu']
        >>> guide.family.event_size
        1
    """

    supports_local = True

    def _build(self, init_loc: Tensor) -> None:
        self.family = MeanFieldNormal(init_loc, self.init_scale)
        self.local_params = nn.ParameterDict()
        for site in self._locals:
            loc = self._unconstrain(site, site.init).detach()
            raw = inverse_softplus(torch.full_like(loc, self.init_scale))
            self.local_params[site.name] = nn.Parameter(torch.stack([loc, raw]))

    def _draw_u(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        loc, raw = self.family.params.unbind(0)
        scale = F.softplus(raw)
        eps = torch.randn((*shape, self.latent_dim), dtype=loc.dtype, device=loc.device)
        return torch.addcmul(loc, scale, eps), _normal_log_prob(eps, scale, 1)

    def _log_q_u_detached(self, u: Tensor) -> Tensor:
        params = self.family.params.detach()
        scale = F.softplus(params[1])
        return _normal_log_prob((u - params[0]) / scale, scale, 1)

    def _local_draw(
        self,
        site: LatentSite,
        lead: tuple[int, ...],
        indices: Mapping[str, Tensor],
        detached: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        loc, raw = self._local_index(site, self.local_params[site.name], indices).unbind(0)
        scale = F.softplus(raw)
        eps = torch.randn((*lead, *loc.shape), dtype=loc.dtype, device=loc.device)
        u = torch.addcmul(loc, scale, eps)
        ue = site.unconstrained_event_ndim
        log_q = _normal_log_prob(eps, scale, ue)
        log_q_det = None
        if detached:
            loc_d, scale_d = loc.detach(), scale.detach()
            log_q_det = _normal_log_prob((u - loc_d) / scale_d, scale_d, ue)
        return u, log_q, log_q_det

    def _global_quantiles(self, q: Tensor) -> Tensor:
        z = torch.distributions.Normal(0.0, 1.0).icdf(q).unsqueeze(-1)
        return self.family.loc + self.family.scale_values * z

    def _local_quantiles(self, site: LatentSite, q: Tensor) -> Tensor:
        loc, raw = self.local_params[site.name]
        z = torch.distributions.Normal(0.0, 1.0).icdf(q).reshape(-1, *([1] * loc.dim()))
        return loc + F.softplus(raw) * z

    def named_site_params(self) -> dict[str, Tensor]:
        """``{site}_auto_loc`` and ``{site}_auto_scale`` in unconstrained space (plain shapes)."""
        self._require_setup()
        out = split_natural(self, self.family.loc, "_auto_loc")
        out.update(split_natural(self, self.family.scale_values, "_auto_scale"))
        for site in self._locals:
            shape = natural_shape(site.unconstrained_shape, site.frames, site.max_plate_nesting)
            loc, raw = self.local_params[site.name].detach()
            out[f"{site.name}_auto_loc"] = loc.reshape(shape)
            out[f"{site.name}_auto_scale"] = F.softplus(raw).reshape(shape)
        return out
