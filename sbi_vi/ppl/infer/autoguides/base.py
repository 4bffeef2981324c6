"""The autoguide base class: a guide built from the model's latent sites.

An autoguide is three things at once:

- a **guide program** with the model's signature (``guide(*args, **kwargs)``), usable in
  traces and by :class:`~sbi_vi.ppl.infer.SVI`;
- an **engine family**: :attr:`AutoGuide.family` is a :class:`~sbi_vi.vi.families.Family`
  over the flat vector ``u ∈ ℝᴰ`` of the unconstrained global latents (each site's
  support is reached by ``biject_to(support)``), so the engine's divergences train it
  unchanged;
- a **posterior summary**: :meth:`~AutoGuide.median`, :meth:`~AutoGuide.quantiles`,
  :meth:`~AutoGuide.sample` in each site's plain shape.

Latent sites inside a subsampled plate (*local* latents, one value per data point) are not
part of ``u``; guides that support them (``AutoNormal``, ``AutoDelta``) hold per-data-point
parameters indexed by the plate's minibatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sbi_vi._checks import check_positive_float, check_positive_int
from sbi_vi.ppl.infer.init import init_to_median
from sbi_vi.ppl.infer.runner import Delta, active_batch_shape
from sbi_vi.ppl.infer.sites import LatentSite, ModelInfo, inspect_model, natural_shape
from sbi_vi.ppl.params import ParamStore
from sbi_vi.ppl.plate import Plate
from sbi_vi.ppl.primitives import sample
from sbi_vi.ppl.runtime import Message
from sbi_vi.vi.divergences import detached_log_prob
from sbi_vi.vi.families import rsample_and_log_prob

__all__ = ["AutoGuide", "GuideDraw"]


@dataclass(frozen=True, eq=False)
class GuideDraw:
    """Particles drawn by an autoguide, in the layout of the vectorised model.

    Attributes:
        values: Constrained value of every latent site, ``[P, *batch, *event]``.
        log_q: log q(θ) per particle, ``[P]`` (local sites scaled by ``size / n``).
        log_q_detached: The same with the guide's parameters detached (for
            stick-the-landing), or ``None`` when not asked for.
        u: The unconstrained global draw, ``[P, D]``.
    """

    values: dict[str, Tensor]
    log_q: Tensor
    log_q_detached: Tensor | None
    u: Tensor


def _sum_to(t: Tensor, ndim: int) -> Tensor:
    """Sum ``t`` over every dim after the first ``ndim`` (a view if those dims are all 1)."""
    if t.dim() > ndim:
        lead = t.shape[:ndim]
        if t.numel() == lead.numel():
            return t.reshape(lead)
        return t.sum(tuple(range(ndim, t.dim())))
    return t


class AutoGuide(nn.Module):
    """Base class of autoguides; subclasses choose the family over the global latents.

    The guide is set up from the model the first time it is called (or by :meth:`setup`,
    which ``SVI`` calls): the model runs once with subsampled plates at full size, each
    latent site is set to ``init_loc_fn(msg)``, and the shapes, supports and plates found
    there are fixed for good (as in Pyro).

    Args:
        model: The model.
        init_loc_fn: Initial values, ``init_loc_fn(msg) -> value`` (see
            :mod:`sbi_vi.ppl.infer.init`); the default is the median of 15 prior draws.
        init_scale: Initial scale of the guide in unconstrained space (positive).
    """

    #: Whether the guide supports latent sites inside subsampled plates.
    supports_local: bool = False
    #: Whether q is a point mass (MAP): only rKL applies.
    is_point_mass: bool = False

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        init_loc_fn: Callable[[Message], Tensor] = init_to_median,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"`model` must be callable, got {type(model).__name__}.")
        if not callable(init_loc_fn):
            raise TypeError(f"`init_loc_fn` must be callable, got {type(init_loc_fn).__name__}.")
        self.model = model
        self.init_loc_fn = init_loc_fn
        self.init_scale = check_positive_float("init_scale", init_scale)
        self.info: ModelInfo | None = None
        self.store: ParamStore | None = None
        self._globals: list[tuple[LatentSite, int]] = []
        self._locals: list[LatentSite] = []
        self.latent_dim = 0
        self._offsets: dict[str, int] = {}
        self._global_sizes: list[int] = []
        self._local_plans: dict[str, list[tuple[str, int, int]]] = {}

    @property
    def aux_name(self) -> str:
        """Name of the auxiliary site that holds the flat global draw ``u``."""
        return f"_{type(self).__name__}_latent"

    # --- setup --------------------------------------------------------------------------

    def setup(self, *args: Any, store: ParamStore | None = None, **kwargs: Any) -> AutoGuide:
        """Build the guide's parameters from one run of the model on ``args`` (once).

        Args:
            *args: The model's arguments.
            store: Parameter store of the model's own ``param`` sites (a new one if
                ``None``).
            **kwargs: The model's keyword arguments.

        Returns:
            The guide itself.

        Raises:
            ValueError: If the model has local latents and the guide cannot hold them.
        """
        if self.info is not None:
            return self
        store = ParamStore() if store is None else store
        info = inspect_model(self.model, args, kwargs, store=store, init_loc_fn=self.init_loc_fn)
        local = info.local_sites()
        if local and not self.supports_local:
            plates = sorted(
                {f.name for n in local for f in info.latent[n].local_frames(info.plates)}
            )
            raise ValueError(
                f"{type(self).__name__} cannot hold the local latent sites {local} inside the "
                f"subsampled plate(s) {plates}: a joint (full-rank or flow) guide over one "
                "value per data point cannot be trained on minibatches. Use AutoNormal or "
                "AutoDelta, write a guide by hand, or drop `subsample_size` from the plate."
            )
        offset = 0
        self._globals, self._locals = [], []
        for site in info.latent.values():
            if site.local_frames(info.plates):
                self._locals.append(site)
            else:
                self._globals.append((site, offset))
                offset += site.numel
        self.latent_dim = offset
        self._offsets = {site.name: o for site, o in self._globals}
        self._global_sizes = [site.numel for site, _ in self._globals]
        self._local_plans = {  # (plate, dim of the unconstrained value, plate size)
            site.name: [
                (f.name, f.dim - site.unconstrained_event_ndim, info.plates[f.name].size)
                for f in site.local_frames(info.plates)
            ]
            for site in self._locals
        }
        self.store = store
        self.info = info
        init_loc = self._unconstrained_init()
        self._build(init_loc)
        return self

    def _unconstrained_init(self) -> Tensor:
        parts = [self._unconstrain(site, site.init).reshape(-1) for site, _ in self._globals]
        return torch.cat(parts) if parts else torch.zeros(0)

    @staticmethod
    def _unconstrain(site: LatentSite, value: Tensor) -> Tensor:
        return value if site.transform is None else site.transform.inv(value)

    def _build(self, init_loc: Tensor) -> None:
        """Create :attr:`family` (and local parameters) from the flat initial ``u``."""
        raise NotImplementedError

    def _require_setup(self) -> ModelInfo:
        if self.info is None:
            raise RuntimeError(
                f"{type(self).__name__} is not set up yet: call it once with the model's "
                "arguments, run SVI, or call `guide.setup(*args)`."
            )
        return self.info

    @property
    def has_local(self) -> bool:
        """Whether the guide holds local (per data point) latent sites."""
        return bool(self._locals)

    # --- drawing u and constraining ------------------------------------------------------

    def _draw_u(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``u`` ``[*shape, D]`` and log q(u) ``[*shape]`` (reparametrised)."""
        if not self.latent_dim:
            dtype = torch.get_default_dtype()
            return torch.zeros((*shape, 0), dtype=dtype), torch.zeros(shape, dtype=dtype)
        return rsample_and_log_prob(self.family(), shape)

    def _log_q_u_detached(self, u: Tensor) -> Tensor:
        if not self.latent_dim:
            return torch.zeros(u.shape[:-1], dtype=u.dtype)
        return detached_log_prob(self.family, u)

    @staticmethod
    def _constrain(site: LatentSite, u: Tensor, lead: int) -> tuple[Tensor, Tensor | None]:
        """θ = T(u) and log|det J_T(u)| summed to the ``lead`` leading dims (``None``: 0)."""
        t = site.transform
        if t is None:
            return u, None
        x = t(u)
        return x, _sum_to(t.log_abs_det_jacobian(u, x), lead)

    def _local_draw(
        self,
        site: LatentSite,
        lead: tuple[int, ...],
        indices: Mapping[str, Tensor],
        detached: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Unconstrained draw ``[*lead, *batch, *event_u]`` of a local site, its log q per
        element of ``lead`` + batch (unscaled), and the same with detached parameters."""
        raise NotImplementedError

    def _local_index(
        self, site: LatentSite, param: Tensor, indices: Mapping[str, Tensor]
    ) -> Tensor:
        """``param`` (``[*batch, *event_u]``, full plates) at the minibatch ``indices``."""
        for name, dim, _ in self._local_plans[site.name]:
            index = indices.get(name)
            if index is not None:
                if index.device != param.device:
                    index = index.to(param.device)
                param = param.index_select(dim, index)
        return param

    def _constrain_globals(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Site values ``[n, *batch, *event]`` from ``u`` ``[n, D]``, and Σ log|det J| ``[n]``."""
        if not self._globals:  # a model whose latents are all local
            return {}, None
        n = u.shape[0]
        parts = u.split(self._global_sizes, -1) if len(self._globals) > 1 else (u,)
        values: dict[str, Tensor] = {}
        total: Tensor | None = None
        for (site, _), part in zip(self._globals, parts, strict=True):
            u_site = part.reshape((n, *site.unconstrained_shape))
            t = site.transform
            if t is None:
                values[site.name] = u_site
                continue
            x = t(u_site)
            values[site.name] = x
            ladj = _sum_to(t.log_abs_det_jacobian(u_site, x), 1)
            total = ladj if total is None else total + ladj
        return values, total

    def draw(
        self,
        n_particles: int,
        indices: Mapping[str, Tensor] | None = None,
        *,
        detached_log_q: bool = False,
    ) -> GuideDraw:
        """Draw ``n_particles`` from the guide without running any handler.

        Args:
            n_particles: Number of particles ``P``.
            indices: Minibatch indices of the subsampled plates (full plates if missing).
            detached_log_q: Also compute log q with detached parameters.

        Returns:
            A :class:`GuideDraw` with values in the layout of the vectorised model.
        """
        if self.info is None:
            self._require_setup()
        indices = {} if indices is None else indices
        u, log_q = self._draw_u((n_particles,))
        log_q_det = self._log_q_u_detached(u) if detached_log_q else None
        values, ladj = self._constrain_globals(u)
        if ladj is not None and not self.is_point_mass:
            log_q = log_q - ladj
            log_q_det = None if log_q_det is None else log_q_det - ladj
        for site in self._locals:
            u_site, lq, lq_det = self._local_draw(site, (n_particles,), indices, detached_log_q)
            lead = u_site.dim() - site.unconstrained_event_ndim
            t = site.transform
            x = u_site if t is None else t(u_site)
            values[site.name] = x
            if t is not None and not self.is_point_mass:
                ladj = _sum_to(t.log_abs_det_jacobian(u_site, x), lead)
                lq = lq - ladj
                lq_det = None if lq_det is None else lq_det - ladj
            scale = 1.0
            for name, _, size in self._local_plans[site.name]:
                index = indices.get(name)
                if index is not None:
                    scale *= size / index.shape[0]
            log_q = torch.add(log_q, _sum_to(lq, 1), alpha=scale)
            if log_q_det is not None and lq_det is not None:
                log_q_det = torch.add(log_q_det, _sum_to(lq_det, 1), alpha=scale)
        return GuideDraw(values, log_q, log_q_det, u)

    def log_p_of_u(self, run_model: Callable[[dict[str, Tensor], int], Tensor]) -> Callable:
        """The engine's target in unconstrained space, for training :attr:`family`.

        Args:
            run_model: ``run_model(values, P) -> log p [P]``: the vectorised model's log
                joint at constrained global values ``[P, *batch, *event]``.

        Returns:
            ``log_p(u)``: ``u`` ``[*S, D]`` ↦ ``log p(T(u)) + log|det J_T(u)|`` ``[*S]``.
        """

        def log_p(u: Tensor) -> Tensor:
            flat = u if u.dim() == 2 else u.reshape(-1, self.latent_dim)
            values, ladj = self._constrain_globals(flat)
            lp = run_model(values, flat.shape[0])
            if ladj is not None:
                lp = lp + ladj
            return lp if u.dim() == 2 else lp.reshape(u.shape[:-1])

        return log_p

    # --- the guide program ---------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Run the guide: sample every latent site of the model (sets the guide up once).

        The global draw ``u`` is one auxiliary site (``is_auxiliary``) carrying log q(u);
        each latent site is a point mass at its constrained value carrying the change of
        variables (and, for local sites, its own log q), inside the model's plates.

        Returns:
            The sampled constrained values by site name.
        """
        info = self.setup(*args, **kwargs).info
        assert info is not None
        k = info.max_plate_nesting
        u = None
        if self.latent_dim:
            u, log_q_u = self._draw_u(active_batch_shape())
            sample(self.aux_name, Delta(u, log_q_u, event_dim=1), infer={"is_auxiliary": True})
        plates: dict[str, Plate] = {}
        out: dict[str, Tensor] = {}
        for site in info.latent.values():
            with ExitStack() as stack:
                indices = {}
                for frame in reversed(site.frames):  # outermost first
                    plate = plates.get(frame.name)
                    if plate is None:
                        p = info.plates[frame.name]
                        plate = plates[frame.name] = Plate(p.name, p.size, p.subsample_size, p.dim)
                    indices[frame.name] = stack.enter_context(plate)
                bshape = active_batch_shape()
                ue = site.unconstrained_shape[k:]
                offset = self._offsets.get(site.name)
                if offset is not None:
                    u_site = u[..., offset : offset + site.numel]  # type: ignore[index]
                    log_q = torch.zeros(bshape, dtype=u_site.dtype)
                else:
                    lead = bshape[: max(len(bshape) - k, 0)]
                    u_site, log_q, _ = self._local_draw(site, lead, indices, False)
                    log_q = log_q.reshape(bshape)
                u_site = u_site.reshape((*bshape, *ue))
                x, ladj = self._constrain(site, u_site, len(bshape))
                if ladj is not None and not self.is_point_mass:
                    log_q = log_q - ladj
                out[site.name] = sample(
                    site.name, Delta(x, log_q, event_dim=len(site.event_shape))
                )
        return out

    # --- summaries -----------------------------------------------------------------------

    def _to_sites(self, u: Tensor, local_u: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Constrained values in each site's plain shape from ``u`` ``[*S, D]`` and locals."""
        info = self._require_setup()
        lead = tuple(u.shape[:-1])
        out: dict[str, Tensor] = {}
        for site in info.latent.values():
            offset = self._offsets.get(site.name)
            if offset is not None:
                u_site = u[..., offset : offset + site.numel].reshape(
                    (*lead, *site.unconstrained_shape)
                )
            else:
                u_site = local_u[site.name]
            x, _ = self._constrain(site, u_site, len(lead))
            out[site.name] = x.reshape((*lead, *site.natural_shape))
        return out

    def _global_quantiles(self, q: Tensor) -> Tensor | None:
        """Marginal quantiles ``[len(q), D]`` of u, where the family knows them."""
        return None

    def _local_quantiles(self, site: LatentSite, q: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float] | Tensor, num_samples: int = 1000) -> dict:
        """Marginal quantiles of each latent site, ``{site: [len(quantiles), *shape]}``.

        Gaussian guides compute them in unconstrained space and map them through each
        site's (monotone) bijector, as Pyro does; other guides estimate them from
        ``num_samples`` draws.

        Args:
            quantiles: Levels in (0, 1).
            num_samples: Draws for the sample-based estimate.
        """
        self._require_setup()
        q = torch.as_tensor(quantiles, dtype=torch.get_default_dtype()).reshape(-1)
        if not bool(((q > 0) & (q < 1)).all()):
            raise ValueError(f"`quantiles` must lie in (0, 1), got {q.tolist()}.")
        u = self._global_quantiles(q)
        if u is None:
            draws = self.sample(check_positive_int("num_samples", num_samples))
            return {name: torch.quantile(v, q, dim=0) for name, v in draws.items()}
        local_u = {site.name: self._local_quantiles(site, q) for site in self._locals}
        return self._to_sites(u, local_u)

    def median(self) -> dict[str, Tensor]:
        """The median of each latent site in its plain shape, ``{site: [*shape]}``."""
        return {name: v[0] for name, v in self.quantiles([0.5]).items()}

    @torch.no_grad()
    def sample(self, num_samples: int = 1) -> dict[str, Tensor]:
        """Draws of every latent site (locals at full plates), ``{site: [S, *shape]}``."""
        info = self._require_setup()
        num_samples = check_positive_int("num_samples", num_samples)
        draw = self.draw(num_samples, info.full_indices())
        return {
            name: v.reshape(num_samples, *info.latent[name].natural_shape)
            for name, v in draw.values.items()
        }

    def named_site_params(self) -> dict[str, Tensor]:
        """The guide's parameters by NumPyro-style names (detached), e.g. ``mu_auto_loc``."""
        return {}

    def __repr__(self) -> str:
        sites = "not set up" if self.info is None else f"latent_dim={self.latent_dim}"
        return f"{type(self).__name__}({getattr(self.model, '__name__', 'model')}, {sites})"


def split_natural(guide: AutoGuide, flat: Tensor, suffix: str) -> dict[str, Tensor]:
    """Split a flat ``[D]`` parameter into ``{f"{site}{suffix}": [*shape_u]}`` (plain shapes)."""
    out = {}
    for site, offset in guide._globals:
        shape = natural_shape(site.unconstrained_shape, site.frames, site.max_plate_nesting)
        value = flat[offset : offset + site.numel].detach().clone()
        out[f"{site.name}{suffix}"] = value.reshape(shape)
    return out
