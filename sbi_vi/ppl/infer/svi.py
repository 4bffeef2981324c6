"""``SVI``: stochastic variational inference for ``sbi_vi.ppl`` models on the VI engine."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_vi._checks import check_positive_float, check_positive_int
from sbi_vi.diagnostics.psis import PSISResult
from sbi_vi.ppl.handlers import seed as seed_handler
from sbi_vi.ppl.infer.autoguides.base import AutoGuide
from sbi_vi.ppl.infer.averaging import TailAverage, check_average
from sbi_vi.ppl.infer.objective import Objective
from sbi_vi.ppl.infer.optim import LeanAdam
from sbi_vi.ppl.infer.quality import check_diverged
from sbi_vi.ppl.infer.quality import quality_control as run_quality_control
from sbi_vi.ppl.params import ParamStore
from sbi_vi.vi.divergences import Divergence, build_divergence
from sbi_vi.vi.fit import StoppingRule, fit, gradient_step, make_optimizer

__all__ = ["SVI", "SVIResult"]

OptimizerSpec = type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] | None


class SVI:
    """Stochastic variational inference: fit a guide to a model with one of the divergences.

    The divergence is one of the engine's (:mod:`sbi_vi.vi.divergences`): ``"rKL"`` is the
    ELBO (Pyro's ``Trace_ELBO``); ``"IW"`` the importance-weighted bound with ``K``
    particles per bound; ``"alpha"`` the Rényi bound; ``"fKL"`` the forward KL by
    self-normalised importance sampling. ``IW``, ``alpha`` and ``fKL`` need the full-data
    log density per particle, so they refuse models that subsample a plate; ``AutoDelta``
    (a point mass) trains with ``rKL`` only.

    Training runs through the engine's fit loop (:func:`sbi_vi.vi.fit`); a second
    :meth:`run` resumes from where the first stopped (same parameters, same optimiser
    state).

    Args:
        model: The model, a function of the data using ``sample``/``param``/``plate``.
        guide: An autoguide (``AutoNormal(model)``, ...) or a guide function with the
            model's signature that samples every latent site of the model.
        optimizer: A ``torch.optim.Optimizer`` class (built with ``lr``), or a factory
            ``optimizer(params) -> Optimizer``; ``None``: Adam (:class:`LeanAdam`, torch's
            fused Adam kernel called without its per-step Python layer).
        lr: Learning rate of the optimizer class (constant unless ``scheduler``).
        divergence: ``"rKL"``, ``"IW"``, ``"alpha"``, ``"fKL"`` or a ``Divergence``.
        n_particles: Particles per step (for IW: bounds of ``K`` particles each).
        scheduler: A ``torch.optim.lr_scheduler`` class (built with
            ``scheduler_kwargs``) or a factory ``scheduler(optimizer)``, stepped every step.
        scheduler_kwargs: Keyword arguments of the scheduler class.
        clip_value: Largest gradient norm (``None``: no clipping, as in Pyro).
        store: The parameter store of ``param`` sites (by default the store of an autoguide
            that is already set up, else a new one).
        **divergence_kwargs: Settings of the divergence, e.g. ``K=8``, ``alpha=0.5``,
            ``stick_the_landing=True``, ``dreg=True``.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import plate, sample
        >>> from sbi_vi.ppl.infer import AutoNormal
        >>> def model(x):
        ...     mu = sample("mu", Normal(0.0, 10.0))
        ...     with plate("data", x.shape[0]):
        ...         sample("x", Normal(mu, 1.0), obs=x)
        >>> x = torch.randn(50) + 3.0
        >>> svi = SVI(model, AutoNormal(model), lr=0.05)
        >>> result = svi.run(300, x, seed=0, show_progress_bar=False)
        >>> abs(float(result.params["mu_auto_loc"]) - float(x.mean())) < 0.2
        True
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        optimizer: OptimizerSpec = None,
        lr: float = 1e-3,
        divergence: str | Divergence = "rKL",
        n_particles: int = 1,
        *,
        scheduler: Any = None,
        scheduler_kwargs: Mapping[str, Any] | None = None,
        clip_value: float | None = None,
        store: ParamStore | None = None,
        **divergence_kwargs: Any,
    ) -> None:
        if not callable(model):
            raise TypeError(f"`model` must be callable, got {type(model).__name__}.")
        if not callable(guide):
            raise TypeError(
                f"`guide` must be an autoguide or a guide function, got {type(guide).__name__}."
            )
        if isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "`optimizer` must be an optimizer class (e.g. torch.optim.Adam) or a factory "
                "`params -> optimizer`, not an optimizer instance: the parameters of an "
                "autoguide exist only once it has seen the model's arguments."
            )
        if optimizer is not None and not callable(optimizer):
            raise TypeError(f"`optimizer` must be a class or a callable, got {optimizer!r}.")
        if isinstance(divergence, Divergence):
            if divergence_kwargs:
                raise TypeError(
                    f"divergence settings {sorted(divergence_kwargs)} go with a divergence "
                    "name; this divergence object is already configured."
                )
            self.divergence = divergence
        elif isinstance(divergence, str):
            self.divergence = build_divergence(divergence, **divergence_kwargs)
        else:
            raise TypeError(
                "`divergence` must be 'rKL', 'fKL', 'IW', 'alpha' or a Divergence, got "
                f"{type(divergence).__name__}."
            )
        if store is not None and not isinstance(store, ParamStore):
            raise TypeError(f"`store` must be a ParamStore, got {type(store).__name__}.")
        self.model = model
        self.guide = guide
        self.optimizer_spec = optimizer
        self.lr = check_positive_float("lr", lr)
        self.n_particles = check_positive_int("n_particles", n_particles)
        self.scheduler_spec = scheduler
        self.scheduler_kwargs = dict(scheduler_kwargs or {})
        self.clip_value = (
            None if clip_value is None else check_positive_float("clip_value", clip_value)
        )
        if store is None and isinstance(guide, AutoGuide) and guide.store is not None:
            store = guide.store  # a guide set up earlier holds the model's parameters
        self.store = ParamStore() if store is None else store
        self.objective = Objective(model, guide, self.divergence, self.n_particles, self.store)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._history: list[Tensor] = []
        self.num_skipped = 0
        """Steps of every run and ``step`` so far skipped because they were not finite."""
        self._known: set[int] = set()
        self._store_size = 0
        self._last_args: tuple[tuple, dict] = ((), {})

    # --- setup ---------------------------------------------------------------------------

    def _parameters(self) -> list[Tensor]:
        params: dict[int, Tensor] = {}
        for p in self.store.parameters():
            params.setdefault(id(p), p)
        if isinstance(self.guide, torch.nn.Module):
            for p in self.guide.parameters():
                params.setdefault(id(p), p)
        return [p for p in params.values() if p.requires_grad]

    def setup(self, *args: Any, **kwargs: Any) -> SVI:
        """Set the guide up and build the optimiser (done by the first step or run)."""
        self.objective.setup(args, kwargs)
        if self.optimizer is None:
            params = self._parameters()
            if not params:
                raise ValueError(
                    "there is nothing to optimise: neither the guide nor the model has parameters."
                )
            spec = self.optimizer_spec
            if spec is None or (
                isinstance(spec, type) and issubclass(spec, torch.optim.Optimizer)
            ):
                scheduler = self.scheduler_spec if isinstance(self.scheduler_spec, type) else None
                self.optimizer, self.scheduler = make_optimizer(
                    params,
                    learning_rate=self.lr,
                    optimizer=LeanAdam if spec is None else spec,
                    scheduler=scheduler,
                    scheduler_kwargs=self.scheduler_kwargs,
                )
            else:
                self.optimizer = spec(params)
                if not isinstance(self.optimizer, torch.optim.Optimizer):
                    raise TypeError(
                        "the `optimizer` factory must return a torch.optim.Optimizer, got "
                        f"{type(self.optimizer).__name__}."
                    )
            spec = self.scheduler_spec
            if spec is not None and self.scheduler is None:
                if not callable(spec):
                    raise TypeError("`scheduler` must be a scheduler class or a factory.")
                kwargs = self.scheduler_kwargs if isinstance(spec, type) else {}
                self.scheduler = spec(self.optimizer, **kwargs)
            self._known = {id(p) for p in params}
            self._store_size = len(self.store)
        return self

    def _adopt_new_parameters(self) -> None:
        if len(self.store) == self._store_size:  # params appear only in the store later on
            return
        self._store_size = len(self.store)
        new = [p for p in self._parameters() if id(p) not in self._known]
        if new:
            self.optimizer.add_param_group({"params": new})  # type: ignore[union-attr]
            self._known.update(id(p) for p in new)

    # --- training --------------------------------------------------------------------------

    def _loss(self, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        out = self.objective(args, kwargs)
        self._adopt_new_parameters()
        return out.loss, out.value

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One optimisation step on the model's arguments; returns the reported loss.

        Returns:
            The divergence's reported value (the negative ELBO for rKL); ``nan`` if the
            step was skipped because the loss or a gradient was not finite.
        """
        self.setup(*args, **kwargs)
        self._last_args = (args, kwargs)
        surrogate, value = self._loss(args, kwargs)
        taken = gradient_step(surrogate, self.optimizer, clip_value=self.clip_value)  # type: ignore[arg-type]
        if self.scheduler is not None:
            self.scheduler.step()
        loss = float(value.detach().mean()) if taken else float("nan")
        self.num_skipped += not taken
        self._history.append(torch.tensor([loss]))
        return loss

    def run(
        self,
        num_steps: int,
        *args: Any,
        seed: int | None = None,
        show_progress_bar: bool = True,
        quality_control: bool = True,
        average: float | None = None,
        stopping: StoppingRule | None = None,
        **kwargs: Any,
    ) -> SVIResult:
        """Run ``num_steps`` optimisation steps on the model's arguments.

        A step whose loss or gradient is not finite is skipped (its loss is recorded as
        NaN). After the run two checks say whether the fit can be used: a
        :class:`~sbi_vi.errors.DivergedWarning` if more than 10 % of the steps were skipped
        or the parameters are not finite (naming the sites that are not finite), and —
        with ``quality_control`` — a :class:`~sbi_vi.errors.QualityWarning` when PSIS on
        1,000 full-data draws of the guide says q is unreliable (k̂ > 0.7 or ESS below
        1 % of the draws: the rule of ``VIPosterior.train``). The QC draws leave the
        caller's torch RNG alone.

        Args:
            num_steps: Number of steps.
            *args: The model's (and guide's) arguments.
            seed: Seed of the draws (the caller's RNG is left alone); ``None``: the
                global torch RNG.
            show_progress_bar: Show a progress bar.
            quality_control: Run the PSIS check at the end (one vectorised pass of the
                model over 1,000 draws at full data; turn it off for very large data).
            average: Polyak–Ruppert iterate averaging: the fraction of the run's last
                steps (of ``num_steps``) whose parameters are averaged and written into
                the guide at the end, e.g. ``0.5`` (``None``: keep the last iterate). At a
                constant learning rate this removes most of the step-to-step noise of the
                fitted parameters. With ``stopping``, a run that stops before the averaging
                window begins keeps its last iterate.
            stopping: A stopping rule of the engine, e.g.
                :class:`~sbi_vi.vi.fit.ConvergenceCheck` (``eps`` in loss units, e.g.
                nats): stop before ``num_steps`` once it says the loss has converged
                (``result.converged``). ``None``: run every step.
            **kwargs: The model's keyword arguments.

        Returns:
            An :class:`SVIResult`; its ``losses`` and ``num_skipped`` are this run's, its
            ``quality`` the PSIS result (``None`` without quality control or for a point
            mass), ``converged`` whether ``stopping`` ended it, ``num_averaged`` the
            iterates averaged into the parameters (0: the last iterate).

        Raises:
            RuntimeError: If every step of the run was skipped as non-finite.
            ValueError: On bad arguments, a guide built for another model, or data that
                cannot be scored (the error names the site).
        """
        num_steps = check_positive_int("num_steps", num_steps)
        if not isinstance(quality_control, bool):
            raise TypeError(f"`quality_control` must be a bool, got {quality_control!r}.")
        average = check_average(average)
        if stopping is not None and not isinstance(stopping, StoppingRule):
            raise TypeError(
                "`stopping` must be None or a StoppingRule, e.g. "
                f"sbi_vi.vi.fit.ConvergenceCheck(eps=1e-3), got {type(stopping).__name__}."
            )
        context = contextlib.nullcontext() if seed is None else seed_handler(rng_seed=seed)
        with context:
            self.setup(*args, **kwargs)
            self._last_args = (args, kwargs)
            scheduler = self.scheduler
            averager = None
            if average is not None:
                start = num_steps - max(1, round(average * num_steps))
                averager = TailAverage(self._parameters(), start, self.scheduler)
                scheduler = averager
            history = fit(
                _RunLoss(self, args, kwargs),
                self.optimizer,  # type: ignore[arg-type]
                scheduler=scheduler,
                max_num_iters=num_steps,
                clip_value=self.clip_value,
                stopping=stopping,
                show_progress_bar=show_progress_bar,
                description="SVI",
            )
            num_averaged = 0
            if averager is not None and averager.apply():
                num_averaged = averager.num_averaged
            self._history.append(history.losses)
            self.num_skipped += history.num_skipped
            # The checks' draws come from the run's stream but do not advance it.
            with torch.random.fork_rng(devices=[]):
                skipped, steps = history.num_skipped, history.num_iters
                diverged = check_diverged(self, args, kwargs, skipped, steps)
                quality = None
                if quality_control and not diverged:
                    quality = run_quality_control(self, args, kwargs)
        return SVIResult(
            params=self.get_params(),
            losses=history.losses,
            guide=self.guide,
            svi=self,
            args=args,
            kwargs=kwargs,
            num_skipped=history.num_skipped,
            quality=quality,
            converged=history.converged,
            num_averaged=num_averaged,
        )

    @property
    def losses(self) -> Tensor:
        """The reported loss of every step so far (all runs and steps), ``[num_steps]``."""
        if len(self._history) > 1:
            self._history = [torch.cat(self._history)]
        return self._history[0] if self._history else torch.zeros(0)

    def get_params(self) -> dict[str, Tensor]:
        """Constrained values of every parameter (model, guide), detached, by name."""
        params = dict(self.store.constrained())
        if isinstance(self.guide, AutoGuide) and self.guide.info is not None:
            params.update(self.guide.named_site_params())
        return {name: value.detach().clone() for name, value in params.items()}

    def __repr__(self) -> str:
        model = getattr(self.model, "__name__", type(self.model).__name__)
        return (
            f"SVI({model}, {self.guide!r}, divergence={self.divergence!r}, "
            f"n_particles={self.n_particles}, lr={self.lr})"
        )


class _RunLoss:
    """The loss closure of one run: the first step as torch is configured, the rest with
    distribution argument validation off (:func:`~sbi_vi.ppl.fast_log_prob.validation_off`:
    the first step has checked the same model on the same data)."""

    def __init__(self, svi: SVI, args: tuple, kwargs: dict) -> None:
        self.svi, self.args, self.kwargs = svi, args, kwargs
        self.checked = False

    def __call__(self) -> tuple[Tensor, Tensor]:
        if not self.checked:
            self.checked = True
            return self.svi._loss(self.args, self.kwargs)
        previous = Distribution._validate_args  # validation_off(), minus a generator
        Distribution._validate_args = False
        try:
            return self.svi._loss(self.args, self.kwargs)
        finally:
            Distribution._validate_args = previous


@dataclass(frozen=True, eq=False)
class SVIResult:
    """What :meth:`SVI.run` returns: parameters, losses, and the fitted guide's summaries.

    Attributes:
        params: Constrained parameter values by name (detached).
        losses: Reported loss of every step of this run, ``[num_steps]``.
        guide: The fitted guide.
        svi: The ``SVI`` object (holds the model, the store and the optimiser).
        args: The model arguments of the run (the default of the methods below).
        kwargs: The model keyword arguments of the run.
        num_skipped: Steps of the run skipped because the loss or a gradient was not
            finite (more than 10 % of them raise a ``DivergedWarning``).
        quality: PSIS k̂/ESS of the fitted guide on full-data draws (``None`` when quality
            control was off, the run diverged, or the guide is a point mass).
        converged: Whether the run's ``stopping`` rule ended it before ``num_steps``.
        num_averaged: Iterates averaged into the parameters (``average``; 0: the last
            iterate).
    """

    params: dict[str, Tensor]
    losses: Tensor
    guide: Any
    svi: SVI = field(repr=False)
    args: tuple = field(default=(), repr=False)
    kwargs: dict = field(default_factory=dict, repr=False)
    num_skipped: int = 0
    quality: PSISResult | None = field(default=None, repr=False)
    converged: bool = False
    num_averaged: int = 0

    def _args(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return (args, kwargs) if (args or kwargs) else (self.args, self.kwargs)

    def sample_posterior(
        self,
        *args: Any,
        num_samples: int = 1000,
        return_sites: Sequence[str] | None = None,
        use_gpu: bool | int | str | None = None,
        batch_size: int | None = None,
        return_observed: bool = False,
        return_samples: bool = False,
        summary_fun: Mapping[str, Callable[..., np.ndarray]] | None = None,
        obs_plate: str | None = None,
        seed: int | None = None,
        importance_weighted: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Summarise the posterior site by site (scvi-tools' ``sample_posterior``).

        See :func:`sbi_vi.ppl.infer.summary.sample_posterior`, which this calls with the
        fitted model and guide; ``args`` default to those of the run.
        """
        from sbi_vi.ppl.infer.summary import sample_posterior

        args, kwargs = self._args(args, kwargs)
        return sample_posterior(
            self.svi,
            args,
            kwargs,
            num_samples=num_samples,
            return_sites=return_sites,
            use_gpu=use_gpu,
            batch_size=batch_size,
            return_observed=return_observed,
            return_samples=return_samples,
            summary_fun=summary_fun,
            obs_plate=obs_plate,
            seed=seed,
            importance_weighted=importance_weighted,
        )

    def evaluate(
        self, *args: Any, num_samples: int = 1000, seed: int | None = None, **kwargs: Any
    ) -> PSISResult:
        """PSIS diagnostic of the guide on the full-data log weights.

        ``log w = log p(x, θ) - log q(θ)`` for ``num_samples`` draws of the guide with every
        subsampled plate at full size; k̂ > 0.7 says the guide should not be trusted.

        Returns:
            The :class:`~sbi_vi.diagnostics.psis.PSISResult` (``khat``, ``ess``, ...).
        """
        from sbi_vi.ppl.infer.evidence import evaluate

        args, kwargs = self._args(args, kwargs)
        return evaluate(self.svi, args, kwargs, num_samples=num_samples, seed=seed)

    def log_evidence(
        self, *args: Any, num_samples: int = 1000, seed: int | None = None, **kwargs: Any
    ) -> Any:
        """Importance-sampling estimate of log p(x) with the guide as proposal.

        Returns:
            A :class:`~sbi_vi.ppl.infer.evidence.LogEvidence` (value, standard error, k̂).
        """
        from sbi_vi.ppl.infer.evidence import log_evidence

        args, kwargs = self._args(args, kwargs)
        return log_evidence(self.svi, args, kwargs, num_samples=num_samples, seed=seed)

    def to_inference_data(
        self, *args: Any, num_samples: int = 1000, seed: int | None = None, **kwargs: Any
    ) -> Any:
        """The posterior draws (and the observed data) as an ``arviz.InferenceData``."""
        from sbi_vi.ppl.infer.evidence import to_inference_data

        args, kwargs = self._args(args, kwargs)
        return to_inference_data(self.svi, args, kwargs, num_samples=num_samples, seed=seed)
