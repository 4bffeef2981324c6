"""One evaluation of a divergence between a guide and a model, on the engine's divergences.

Three routes lead to the same :class:`~sbi_vi.vi.divergences.DivergenceOutput`:

- ``"family"`` — an autoguide without local latents *is* an engine family over the flat
  unconstrained vector ``u``; the divergence object is called unchanged with the target
  ``log p(T(u)) + log|det J_T(u)|``, which runs the vectorised model (any divergence,
  stick-the-landing and DReG included).
- ``"autoguide"`` — an autoguide with local latents (or a point mass): the guide draws
  every site for a fresh minibatch, the model is run on them, and
  :meth:`~sbi_vi.vi.divergences.Divergence.from_log_densities` turns ``log p [P]`` and
  ``log q [P]`` into the loss.
- ``"trace"`` — a user-written guide: it is traced (vectorised over particles), its
  values and minibatch indices are given to the model, and ``log q`` comes from the
  guide's trace; again ``from_log_densities``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from sbi_vi.ppl.handlers import param_store, replay, substitute, trace
from sbi_vi.ppl.infer.autoguides.base import AutoGuide
from sbi_vi.ppl.infer.checks import check_guide_sites, check_observed_values
from sbi_vi.ppl.infer.runner import ModelRunner, particle_plate
from sbi_vi.ppl.infer.sites import ModelInfo, inspect_model
from sbi_vi.ppl.params import ParamStore
from sbi_vi.ppl.particles import PARTICLE_PLATE, guess_max_plate_nesting, vectorize_particles
from sbi_vi.vi.divergences import (
    Divergence,
    DivergenceOutput,
    ForwardKL,
    ImportanceWeighted,
    RenyiAlpha,
)

__all__ = ["Objective", "Route"]

Route = Literal["family", "autoguide", "trace"]


class Objective:
    """A model, a guide and a divergence: ``objective(args, kwargs) -> DivergenceOutput``.

    Set up on the first call (the model and guide run once, creating their parameters in
    ``store``); :meth:`setup` may be called earlier with the same arguments.

    Args:
        model: The model.
        guide: An :class:`~sbi_vi.ppl.infer.AutoGuide` or a guide function.
        divergence: The engine divergence.
        n_particles: Particles per step (bounds of ``K`` particles each for IW).
        store: The parameter store of ``param`` sites.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        divergence: Divergence,
        n_particles: int,
        store: ParamStore,
    ) -> None:
        self.model = model
        self.guide = guide
        self.divergence = divergence
        self.n_particles = n_particles
        self.store = store
        self.info: ModelInfo | None = None
        self.route: Route | None = None
        self.max_plate_nesting = 0
        self._runner: ModelRunner | None = None
        self._vectorized: dict[int, Callable[..., Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The vectorised guide is a closure (rebuilt on demand); it does not pickle.
        return {**self.__dict__, "_vectorized": {}}

    # --- setup ----------------------------------------------------------------------------

    def setup(self, args: tuple, kwargs: dict) -> None:
        """Inspect the model, set the guide up, choose the route and check the divergence."""
        if self.route is not None:
            return
        guide = self.guide
        if isinstance(guide, AutoGuide):
            built_before = guide.info is not None
            guide.setup(*args, store=self.store, **kwargs)
            info = guide.info
            assert info is not None
            if built_before or guide.model is not self.model:
                model_info = inspect_model(self.model, args, kwargs, store=self.store)
                check_guide_sites(type(guide).__name__, info, model_info)
            k = info.max_plate_nesting
            route: Route = "autoguide" if guide.has_local or guide.is_point_mass else "family"
        else:
            info = inspect_model(self.model, args, kwargs, store=self.store)
            with param_store(store=self.store):
                k = max(info.max_plate_nesting, guess_max_plate_nesting(guide, *args, **kwargs))
            route = "trace"
        self.info, self.max_plate_nesting = info, k
        self._check_divergence(info, route)
        check_observed_values(self.model, args, kwargs, info, self.store)
        self._runner = ModelRunner(store=self.store, max_plate_nesting=k, strict=True)
        self._stl = bool(getattr(self.divergence, "stick_the_landing", False))
        self.route = route
        if route == "trace":
            self._check_guide_sites(args, kwargs)

    def _check_divergence(self, info: ModelInfo, route: Route) -> None:
        div = self.divergence
        name = type(div).__name__
        if isinstance(self.guide, AutoGuide) and self.guide.is_point_mass:
            if isinstance(div, ForwardKL | ImportanceWeighted | RenyiAlpha):
                raise ValueError(
                    f"{type(self.guide).__name__} is a point mass (MAP): its density is not "
                    f"defined off the point, so {name} does not apply; use divergence='rKL'."
                )
        if isinstance(div, ForwardKL | ImportanceWeighted | RenyiAlpha) and info.subsampled_plates:
            raise ValueError(
                f"{name} needs the log density of the full data for each particle (its "
                "importance weights are not defined on a minibatch estimate of log p), but the "
                f"model subsamples plate(s) {info.subsampled_plates}. Use divergence='rKL' (the "
                "ELBO, unbiased on minibatches), or drop `subsample_size`."
            )

    def _check_guide_sites(self, args: tuple, kwargs: dict) -> None:
        with torch.no_grad():
            gt = self._trace_guide(1, args, kwargs)
        info = self.info
        assert info is not None
        guided = {n for n, m in gt.items() if m.type == "sample" and not m.is_observed}
        missing = [n for n in info.latent if n not in guided]
        if missing:
            raise ValueError(
                f"the guide does not sample the model's latent site(s) {missing}; a guide "
                "must sample every latent site of the model (with the same name)."
            )
        for name, msg in gt.items():
            if msg.type != "sample" or msg.is_observed:
                continue
            if not msg.fn.has_rsample:
                raise ValueError(
                    f"guide site {name!r} ({type(msg.fn).__name__}) cannot be reparametrised; "
                    "SVI here needs reparametrised guide distributions."
                )
            extra = name not in info.latent and not msg.infer.get("is_auxiliary", False)
            if extra:
                warnings.warn(
                    f"guide site {name!r} is not a latent site of the model; mark it "
                    "`infer={'is_auxiliary': True}` if that is intended.",
                    stacklevel=4,
                )

    # --- running ---------------------------------------------------------------------------

    def run_model(
        self,
        values: dict[str, Tensor],
        n_particles: int,
        args: tuple,
        kwargs: dict,
        indices: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """The vectorised model's log joint ``[P]`` at the given latent values."""
        runner = self._runner
        assert runner is not None
        runner.values = values
        runner.indices = {} if indices is None else indices
        try:
            with particle_plate(n_particles, self.max_plate_nesting), runner:
                self.model(*args, **kwargs)
            log_p = runner.log_p
        finally:  # keep no tensor of this step's graph: a fitted object must deepcopy
            runner.values, runner.indices, runner.log_p = {}, {}, None
        if log_p is None:
            return torch.zeros(n_particles)
        return log_p

    def _trace_guide(self, n_particles: int, args: tuple, kwargs: dict) -> Any:
        vg = self._vectorized.get(n_particles)
        if vg is None:
            vg = vectorize_particles(
                self.guide, n_particles, max_plate_nesting=self.max_plate_nesting
            )
            self._vectorized = {n_particles: vg}
        with param_store(store=self.store):
            return trace(vg).get_trace(*args, **kwargs)

    def __call__(self, args: tuple, kwargs: dict) -> DivergenceOutput:
        """One evaluation of the divergence (with gradients)."""
        self.setup(args, kwargs)
        route, div = self.route, self.divergence
        if route == "family":
            guide = self.guide
            assert isinstance(guide, AutoGuide)
            log_p = guide.log_p_of_u(lambda v, n: self.run_model(v, n, args, kwargs))
            return div(guide.family, log_p, self.n_particles)
        if route == "autoguide":
            return self._autoguide_step(args, kwargs)
        return self._trace_step(args, kwargs)

    def _autoguide_step(self, args: tuple, kwargs: dict) -> DivergenceOutput:
        guide, info = self.guide, self.info
        p = self.n_particles
        indices = info.draw_indices()
        draw = guide.draw(p, indices, detached_log_q=self._stl)
        log_p = self.run_model(draw.values, p, args, kwargs, indices)
        return self.divergence.from_log_densities(
            log_p, draw.log_q, log_q_grad=draw.log_q_detached
        )

    def _particles(self) -> int:
        div = self.divergence
        if isinstance(div, ImportanceWeighted):
            return div.K * self.n_particles
        return self.n_particles

    def _trace_step(self, args: tuple, kwargs: dict) -> DivergenceOutput:
        div, p = self.divergence, self._particles()
        if isinstance(div, ForwardKL):
            with torch.no_grad():
                gt = self._trace_guide(p, args, kwargs)
                values, indices = _guide_values(gt)
                log_p = self.run_model(values, p, args, kwargs, indices)
            with param_store(store=self.store):
                replayed = trace(replay(self._vectorized[p], trace=gt)).get_trace(*args, **kwargs)
            return div.from_log_densities(log_p, replayed.batch_log_prob([PARTICLE_PLATE]))
        gt = self._trace_guide(p, args, kwargs)
        values, indices = _guide_values(gt)
        log_p = self.run_model(values, p, args, kwargs, indices)
        log_q = gt.batch_log_prob([PARTICLE_PLATE])
        log_q_grad = None
        if getattr(div, "stick_the_landing", False) or getattr(div, "dreg", False):
            log_q_grad = self._detached_log_q(gt, p, args, kwargs)
        return div.from_log_densities(log_p, log_q, log_q_grad=log_q_grad)

    def _detached_log_q(self, gt: Any, p: int, args: tuple, kwargs: dict) -> Tensor:
        """log q at the traced values with the guide's parameters detached."""
        params = {n: m.value.detach() for n, m in gt.items() if m.type == "param"}
        rerun = substitute(replay(self._vectorized[p], trace=gt), data=params)
        with param_store(store=self.store):
            return trace(rerun).get_trace(*args, **kwargs).batch_log_prob([PARTICLE_PLATE])


def _guide_values(gt: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    values = {n: m.value for n, m in gt.items() if m.type == "sample" and not m.is_observed}
    indices = {n: m.value for n, m in gt.items() if m.type == "plate" and n != PARTICLE_PLATE}
    return values, indices
