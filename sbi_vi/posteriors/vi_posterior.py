"""``VIPosterior``: the sbi API over the engine's composed parts.

The class wires a potential, a family, a divergence and the fit loop together; each of
those is a separate object that can be used on its own (see :mod:`sbi_vi.vi`).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Size, Tensor
from torch.distributions import Distribution
from torch.distributions.transforms import Transform

from sbi_vi._checks import (
    check_choice,
    check_in_interval,
    check_positive_float,
    check_positive_int,
    check_unknown_kwargs,
    seeded,
)
from sbi_vi.errors import NotTrainedError, QualityWarning
from sbi_vi.posteriors.amortized import AmortizedVI
from sbi_vi.posteriors.base import PosteriorBase, check_sample_shape, log_prob_far_out
from sbi_vi.posteriors.map import gradient_ascent
from sbi_vi.posteriors.quality import evaluate_quality, is_reliable, summarise
from sbi_vi.posteriors.rollback import restored_on_failure
from sbi_vi.posteriors.setup import (
    event_size_of,
    make_family,
    resolve_potential,
    resolve_prior,
    resolve_transform,
    warm_up,
)
from sbi_vi.potentials.base import log_prior_or_zero
from sbi_vi.vi.divergences import DIVERGENCES, Divergence, build_divergence
from sbi_vi.vi.families import FAMILY_NAMES, Family
from sbi_vi.vi.fit import ConvergenceCheck, FitResult, make_optimizer
from sbi_vi.vi.tempering import annealed_fit

__all__ = ["VIPosterior"]

logger = logging.getLogger(__name__)

QType = Literal["maf", "nsf", "naf", "unaf", "nice", "sospf", "gf", "gaussian", "gaussian_diag"]
_TRAIN_KWARGS = (
    "eps",
    "retain_graph",
    "optimizer",
    "scheduler",
    "alpha",
    "K",
    "stick_the_landing",
    "dreg",
    "weight_transform",
    "seed",
)
_DIVERGENCE_KWARGS = ("alpha", "K", "stick_the_landing", "dreg", "weight_transform")


class VIPosterior(AmortizedVI, PosteriorBase):
    r"""A variational posterior q(θ) ≈ p(θ | x_o), trained by minimising a divergence.

    ``train(x_o)`` fits q(θ) for one observation; ``train_amortized(theta, x)`` fits
    q(θ | x) for every observation at once (then ``sample``, ``log_prob``, ``map`` and
    ``evaluate`` take any ``x``, and ``sample_batched`` a batch of them).

    Args:
        potential_fn: The unnormalised log posterior: a potential of
            :mod:`sbi_vi.potentials` or a function ``(theta [*, D], x_o [N, L]) -> [*]``.
        prior: The prior (default: the potential's).
        q: A family name (``maf``, ``nsf``, ``naf``, ``unaf``, ``nice``, ``sospf``, ``gf``,
            ``gaussian``, ``gaussian_diag``), a ``Distribution`` over unconstrained θ, a
            callable ``(event_shape, link_transform, device) -> Distribution``, or another
            ``VIPosterior`` (its q is copied).
        theta_transform: Map from the prior's support to unconstrained space (default: from
            the prior's support).
        vi_method: ``rKL``, ``fKL``, ``IW`` or ``alpha``.
        device: Device of q and of the samples.
        x_shape: Shape of one observation; observations are checked against it.
        parameters: Trainable tensors of a user ``q``.
        modules: Modules of a user ``q``.
        num_transforms: Transforms of a flow family.
        hidden_features: Hidden width of a flow family.
        z_score_theta: Standardise θ in unconstrained space (``none``, ``independent``,
            ``structured``).
        z_score_x: Standardisation of x for amortised VI (default of ``train_amortized``).

    Example:
        >>> from torch.distributions import MultivariateNormal
        >>> prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> def potential(theta, x_o):
        ...     return prior.log_prob(theta) - 0.5 * ((theta - x_o) ** 2).sum(-1) / 0.1
        >>> posterior = VIPosterior(potential, prior, q="gaussian")
        >>> _ = posterior.set_default_x(torch.ones(1, 2)).train(show_progress_bar=False)
        >>> posterior.sample((1000,)).mean(0).round(decimals=1)
        tensor([0.9000, 0.9000])
    """

    def __init__(
        self,
        potential_fn: object,
        prior: Distribution | None = None,
        q: QType | Distribution | VIPosterior | Callable = "maf",
        theta_transform: Transform | None = None,
        vi_method: Literal["rKL", "fKL", "IW", "alpha"] = "rKL",
        device: str = "cpu",
        x_shape: Size | None = None,
        parameters: Iterable | None = None,
        modules: Iterable | None = None,
        num_transforms: int = 5,
        hidden_features: int = 50,
        z_score_theta: Literal["none", "independent", "structured"] = "independent",
        z_score_x: Literal["none", "independent", "structured"] = "independent",
    ):
        self._device = str(device)
        self.potential_fn = resolve_potential(potential_fn, prior)
        self.potential_fn.to(self._device)
        self.prior = resolve_prior(prior, self.potential_fn)
        self.theta_transform = resolve_transform(self.prior, theta_transform)
        self._x_shape = None if x_shape is None else Size(x_shape)
        self._num_transforms = check_positive_int("num_transforms", num_transforms)
        self._hidden_features = check_positive_int("hidden_features", hidden_features)
        choices = ("none", "independent", "structured")
        self._z_score_theta = check_choice("z_score_theta", z_score_theta, choices)
        self._z_score_x = check_choice("z_score_x", z_score_x, choices)
        self._x: Tensor | None = None
        if self.potential_fn.x_o is not None:  # a potential built with x_o sets the default
            self._x = self._check_x(self.potential_fn.x_o)
        self._trained_on: Tensor | None = None
        self._amortized = None
        self.validation_losses: list[float] = []
        self._map_cache: dict[bytes, Tensor] = {}
        self._optimizer: Any = None
        self._scheduler: Any = None
        self._optimizer_key: tuple | None = None
        self.history: list[FitResult] = []
        self.set_vi_method(vi_method)
        self.set_q(q, parameters=parameters, modules=modules)

    # ------------------------------------------------------------------ configuration
    @property
    def q(self) -> Distribution:
        """The variational distribution q(θ) (a fresh distribution over the support)."""
        return self._family()

    @property
    def family(self) -> Family:
        """The trainable family module behind :attr:`q`."""
        return self._family

    def set_q(
        self,
        q: QType | Distribution | VIPosterior | Callable | Family,
        parameters: Iterable | None = None,
        modules: Iterable | None = None,
    ) -> None:
        """Define the variational family (see the constructor's ``q``); resets training."""
        self._q_arg = q
        self._warm = isinstance(q, VIPosterior)  # a copied q needs no warm-up to the prior
        if isinstance(q, VIPosterior):
            self._family = copy.deepcopy(q._family).to(self._device)
        else:
            if isinstance(q, str) and q not in FAMILY_NAMES:
                raise ValueError(
                    f"`q` must be one of {', '.join(map(repr, FAMILY_NAMES))}, a Distribution, "
                    f"a VIPosterior or a callable; got {q!r}."
                )
            self._family = make_family(
                q,
                prior=self.prior,
                transform=self.theta_transform,
                z_score_theta=self._z_score_theta,
                num_transforms=self._num_transforms,
                hidden_features=self._hidden_features,
                direction=self._direction,
                parameters=parameters,
                modules=modules,
                device=self._device,
            )
        self._q_params = (parameters, modules)
        self._trained_on = None
        self._map_cache.clear()
        self._optimizer = None

    def set_vi_method(self, method: Literal["rKL", "fKL", "IW", "alpha"]) -> VIPosterior:
        """Set the divergence (``rKL``, ``fKL``, ``IW``, ``alpha``); chainable.

        A flow family built later is arranged for the method's fast direction; the current
        family is kept (both directions support every method).
        """
        if method not in DIVERGENCES:
            raise ValueError(
                f"`vi_method` must be one of {', '.join(map(repr, DIVERGENCES))}; got {method!r}."
            )
        self._vi_method = method
        self._direction = "density" if method == "fKL" else "sample"
        self._optimizer = None
        return self

    @property
    def vi_method(self) -> str:
        """The divergence used by :meth:`train` (``rKL``, ``fKL``, ``IW`` or ``alpha``)."""
        return self._vi_method

    def to(self, device: str | torch.device) -> VIPosterior:
        """Move q, the potential's observation and the cached results to ``device``."""
        self._device = str(device)
        self._family.to(device)
        if self._amortized is not None:
            self._amortized.to(device)
        self.potential_fn.to(device)
        if self._x is not None:
            self._x = self._x.to(device)
        if self._trained_on is not None:
            self._trained_on = self._trained_on.to(device)
        self._map_cache = {k: v.to(device) for k, v in self._map_cache.items()}
        self._optimizer = None
        return self

    # ------------------------------------------------------------------ training
    def train(
        self,
        x: Tensor | None = None,
        n_particles: int = 256,
        learning_rate: float = 1e-3,
        gamma: float = 0.999,
        max_num_iters: int = 2000,
        min_num_iters: int = 10,
        clip_value: float = 10.0,
        warm_up_rounds: int = 100,
        retrain_from_scratch: bool = False,
        reset_optimizer: bool = False,
        show_progress_bar: bool = True,
        check_for_convergence: bool = True,
        quality_control: bool = True,
        quality_control_metric: Literal["psis", "prop"] = "psis",
        annealing_iters: int | None = None,
        **kwargs: Any,
    ) -> VIPosterior:
        """Fit q to the posterior of one observation.

        Args:
            x: The observation (default: :attr:`default_x`), ``[L]`` or ``[N, L]`` iid rows.
            n_particles: Particles per step (for ``IW``: bounds of ``K`` particles each).
            learning_rate: Initial learning rate.
            gamma: Exponential learning-rate decay per iteration.
            max_num_iters: Maximum iterations.
            min_num_iters: No convergence stop before this many iterations.
            clip_value: Gradient-norm clipping.
            warm_up_rounds: Iterations fitting q to the prior before the first training
                (maximum likelihood on prior draws for fKL flows, else reverse KL).
            retrain_from_scratch: Rebuild q before training.
            reset_optimizer: Start a fresh optimizer (and scheduler).
            show_progress_bar: Show a tqdm bar.
            check_for_convergence: Stop when the loss stops improving (else run all iters).
            quality_control: Evaluate q afterwards and warn if it should not be trusted.
            quality_control_metric: ``psis`` or ``prop``.
            annealing_iters: When q starts from the prior (the first training, or after
                ``retrain_from_scratch``), temper the likelihood in over this many of the
                ``max_num_iters`` iterations: ``log π + β (log p̃ − log π)`` with β rising
                linearly to 1 (:mod:`sbi_vi.vi.tempering`), so that a mode-seeking
                divergence keeps the mass of every posterior mode rather than the first it
                finds. Default: the divergence's ``annealing_iters``, 200 for ``rKL`` and 0
                (no tempering) for the other methods;
                the convergence check only starts afterwards.
            **kwargs: ``eps`` (default 1e-3: training stops once the median loss of two
                blocks of 50 iterations in a row improves by less than this), ``retain_graph``,
                ``optimizer`` (class), ``scheduler`` (class or ``(class, kwargs)``),
                ``alpha``, ``K``, ``stick_the_landing``, ``dreg``, ``weight_transform``
                (divergence settings), ``seed`` (seeds the training; the caller's random
                state is restored afterwards).

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: On invalid hyper-parameters (as sbi: non-positive ``n_particles``,
                ``learning_rate``, ``max_num_iters`` or ``clip_value``, ``gamma`` outside
                (0, 1], negative ``min_num_iters``), a missing observation or x with NaN/inf.
            TypeError: On unknown keyword arguments, or a non-number hyper-parameter.

        A call that raises or is interrupted (Ctrl-C) leaves q, its optimizer and the
        warm-up state as they were: after a failed first call, the next ``train()`` warms
        up and anneals as a fresh fit does.
        """
        check_unknown_kwargs("VIPosterior.train()", kwargs, _TRAIN_KWARGS)
        n_particles = check_positive_int("n_particles", n_particles)
        max_num_iters = check_positive_int("max_num_iters", max_num_iters)
        min_num_iters = check_positive_int("min_num_iters", min_num_iters, allow_zero=True)
        warm_up_rounds = check_positive_int("warm_up_rounds", warm_up_rounds, allow_zero=True)
        learning_rate = check_positive_float("learning_rate", learning_rate)
        gamma = check_in_interval("gamma", gamma, 0.0, 1.0, closed="right")
        clip_value = check_positive_float("clip_value", clip_value)
        check_choice("quality_control_metric", quality_control_metric, ("psis", "prop"))
        annealing_steps = self._annealing_steps(annealing_iters)
        with seeded(kwargs.get("seed")):  # the caller's random state is restored after
            x = self._resolve_x(x)
            divergence = build_divergence(
                self._vi_method, **{k: v for k, v in kwargs.items() if k in _DIVERGENCE_KWARGS}
            )
            if retrain_from_scratch:
                self.set_q(self._q_arg, *self._q_params)
            first_fit = self._trained_on is None
            fresh = first_fit and not self._warm  # q starts from the prior
            self.potential_fn.set_x(x)
            with restored_on_failure(self):  # an interrupted fit leaves q as it found it
                if fresh and warm_up_rounds > 0:
                    warm_up(
                        self._family,
                        self.prior,
                        rounds=warm_up_rounds,
                        n_particles=n_particles,
                        learning_rate=learning_rate,
                        clip_value=clip_value,
                    )
                self._warm = True
                self._prepare_optimizer(learning_rate, gamma, kwargs, reset_optimizer)
                stopping = (
                    ConvergenceCheck(eps=kwargs.get("eps", 1e-3), min_num_iters=min_num_iters)
                    if check_for_convergence
                    else None
                )
                result = annealed_fit(
                    lambda target: self._loss_closure(divergence, target, n_particles),
                    self.potential_fn,
                    lambda theta: log_prior_or_zero(self.prior, theta),
                    annealing_steps if fresh else 0,
                    self._optimizer,
                    scheduler=self._scheduler,
                    max_num_iters=max_num_iters,
                    clip_value=clip_value,
                    stopping=stopping,
                    retain_graph=bool(kwargs.get("retain_graph", False)),
                    show_progress_bar=show_progress_bar,
                    description=f"VI ({self._vi_method})",
                )
            self.history.append(result)
            if self._amortized is not None:
                warnings.warn(
                    "train() replaces the amortised q(θ | x) of train_amortized(); from now "
                    "on q serves this observation only.",
                    UserWarning,
                    stacklevel=2,
                )
                self._amortized = None
            self._trained_on = x
            self._map_cache.clear()
            if self._x is None:
                self._x = x
            if quality_control:
                self._quality_control(quality_control_metric)
            return self

    def _annealing_steps(self, annealing_iters: int | None) -> int:
        if annealing_iters is None:  # the divergence's default: > 0 if mode-seeking
            return DIVERGENCES[self._vi_method].annealing_iters
        return check_positive_int("annealing_iters", annealing_iters, allow_zero=True)

    def _loss_closure(
        self, divergence: Divergence, log_p: Callable[[Tensor], Tensor], n_particles: int
    ) -> Callable[[], tuple[Tensor, Tensor]]:
        family = self._family

        def closure() -> tuple[Tensor, Tensor]:
            out = divergence(family, log_p, n_particles)
            return out.loss, out.value

        return closure

    def _prepare_optimizer(
        self, learning_rate: float, gamma: float, kwargs: dict, reset: bool
    ) -> None:
        scheduler = kwargs.get("scheduler")
        scheduler_cls, scheduler_kwargs = (
            scheduler if isinstance(scheduler, tuple) else (scheduler, None)
        )
        key = (learning_rate, gamma, kwargs.get("optimizer"), scheduler_cls)
        if self._optimizer is None or reset or key != self._optimizer_key:
            self._optimizer, self._scheduler = make_optimizer(
                self._family.parameters(),
                learning_rate=learning_rate,
                optimizer=kwargs.get("optimizer"),
                scheduler=scheduler_cls,
                scheduler_kwargs=scheduler_kwargs,
                gamma=gamma,
            )
            self._optimizer_key = key

    def _quality_control(self, metric: str) -> None:
        result = self.evaluate(metric, N=10_000)
        if not is_reliable(result):
            warnings.warn(
                f"Quality control ({metric}): {summarise(result)} The variational posterior "
                "may be inaccurate: train longer, use a more flexible q (e.g. 'nsf'), more "
                "particles, or vi_method='fKL'/'IW' for a mass-covering fit.",
                QualityWarning,
                stacklevel=3,
            )
        else:
            logger.info("Quality control (%s): %s", metric, summarise(result))

    # ------------------------------------------------------------------ using q
    def sample(
        self,
        sample_shape: Size | tuple[int, ...] = (),
        x: Tensor | None = None,
        show_progress_bars: bool = True,
    ) -> Tensor:
        """Draw θ ~ q, shape ``[*sample_shape, D]`` (``[*sample_shape, B, D]`` for B > 1 x).

        Args:
            sample_shape: Leading shape of the samples.
            x: For a q trained by ``train``: the trained observation (or ``None``). For an
                amortised q: any observation ``[L]``/``[1, L]``, or a batch ``[B, L]``
                (default: :attr:`default_x`).
            show_progress_bars: Unused (sampling is one pass).

        Raises:
            NotTrainedError: If q has not been trained.
            ValueError: If ``x`` is not the observation q was trained on.
        """
        del show_progress_bars
        sample_shape = check_sample_shape(sample_shape)
        if self._amortized is not None:
            return self._sample_amortized(sample_shape, x)
        self._check_trained_for(x)
        with torch.no_grad():
            return self.q.sample(sample_shape)

    def log_prob(
        self, theta: Tensor, x: Tensor | None = None, track_gradients: bool = False
    ) -> Tensor:
        """log q(θ) for θ of shape ``[D]`` or ``[N, D]`` (returns ``[]`` or ``[N]``).

        For an amortised q, log q(θ | x) with x ``[L]``, ``[1, L]`` or ``[B, L]``: one x
        serves every θ (``[N]``), one θ is scored under every x (``[B]``), and N = B pairs
        rows (``[N]``). θ (and x) of another floating dtype are cast to q's dtype (float32
        unless q was built otherwise); an empty batch ``[0, D]`` gives an empty ``[0]``.

        Args:
            theta: Parameters, ``[D]`` or ``[N, D]`` (any ``[*, D]`` with one x).
            x: The observation (see above; default: :attr:`default_x`).
            track_gradients: Keep the autograd graph of the result.

        Returns:
            log q(θ | x), shape as above, in q's dtype.

        Raises:
            NotTrainedError: If q is not trained (a ``ValueError``).
            TypeError: θ or x not a real tensor or array.
            ValueError: Wrong θ shape; θ with NaN or ±inf entries (the message says which);
                θ outside the prior's support; θ overflowing q's dtype; x not the trained
                x; or N ≠ B with neither equal to 1.
        """
        if self._amortized is not None:
            return self._log_prob_amortized(theta, x, track_gradients)
        self._check_trained_for(x)
        theta = self._check_theta(theta)
        if theta.shape[:-1].numel() == 0:  # as sample((0,)): an empty answer, no network pass
            return theta.new_zeros(theta.shape[:-1])
        with torch.set_grad_enabled(track_gradients):
            return log_prob_far_out(self.q, theta)

    def map(
        self,
        x: Tensor | None = None,
        num_iter: int = 1000,
        num_to_optimize: int = 100,
        learning_rate: float = 0.01,
        init_method: Literal["proposal", "posterior", "prior"] | Tensor = "proposal",
        num_init_samples: int = 10_000,
        save_best_every: int = 10,
        show_progress_bars: bool = False,
        force_update: bool = False,
    ) -> Tensor:
        """The maximum a posteriori θ (gradient ascent on the potential), cached per x.

        Starts from the ``num_to_optimize`` best of ``num_init_samples`` draws from q
        (``proposal``/``posterior``) or the prior, or from a given tensor ``[N, D]``.

        Returns:
            The MAP, shape ``[D]``.
        """
        x = self._resolve_x(x)
        key = x.detach().cpu().numpy().tobytes()
        if key in self._map_cache and not force_update:
            return self._map_cache[key]
        if not isinstance(init_method, str):  # a tensor or array of initial points
            inits = self._check_theta(init_method, "init_method")
            inits = inits.reshape(-1, event_size_of(self.prior))
            if inits.shape[0] == 0:
                raise ValueError("`init_method` is an empty tensor: pass at least one θ.")
        elif init_method in ("proposal", "posterior") and self._amortized is not None:
            if x.shape[0] != 1:
                raise ValueError(f"map() takes one observation; got {x.shape[0]} rows of x.")
            n = check_positive_int("num_init_samples", num_init_samples)
            inits = self._sample_amortized(Size((n,)), x)
        elif init_method in ("proposal", "posterior"):
            if self._trained_on is None or not torch.equal(self._trained_on, x):
                raise NotTrainedError(
                    f"init_method={init_method!r} needs q trained on this x; call train(x) "
                    "first or use init_method='prior'."
                )
            inits = self.sample((check_positive_int("num_init_samples", num_init_samples),))
        elif init_method == "prior":
            n = check_positive_int("num_init_samples", num_init_samples)
            inits = self.prior.sample((n,)).to(self._device)
        else:
            raise ValueError(
                "`init_method` must be 'proposal', 'posterior', 'prior' or a tensor of initial "
                f"points; got {init_method!r}."
            )
        self.potential_fn.set_x(x)
        theta, _ = gradient_ascent(
            lambda t: self.potential_fn(t, track_gradients=True),
            inits,
            self.theta_transform,
            num_iter=num_iter,
            num_to_optimize=num_to_optimize,
            learning_rate=learning_rate,
            save_best_every=save_best_every,
            show_progress_bar=show_progress_bars,
        )
        self._map_cache[key] = theta
        return theta

    def evaluate(
        self,
        quality_control_metric: Literal["psis", "prop"] = "psis",
        N: int = 50_000,
        x: Tensor | None = None,
        refine: bool = False,
        refine_kwargs: dict | None = None,
    ) -> Any:
        """Diagnose q against the potential with ``N`` draws (per observation if amortised).

        ``psis``: Pareto k-hat of the importance weights p̃/q (≤ 0.5 good, ≤ 0.7 usable,
        > 0.7 unreliable). ``prop``: whether log q is proportional to log p̃.

        Args:
            quality_control_metric: ``psis`` or ``prop`` (amortised q: ``psis``).
            N: Draws of q per observation.
            x: Amortised q only: the observations ``[B, L]`` to diagnose (default: the
                default x).
            refine: Amortised q only: fine-tune a single-observation posterior (see
                :meth:`refine`) for every observation that fails the check.
            refine_kwargs: Passed to :meth:`refine` (e.g. ``max_num_iters``).

        Returns:
            A :class:`~sbi_vi.diagnostics.PSISResult` (``khat``, ``ess``, ``reliable``) or a
            :class:`~sbi_vi.diagnostics.PropResult` (``value``, ``good``); for an amortised q
            an :class:`~sbi_vi.posteriors.amortized.AmortizedQuality` with k-hat, ESS and
            the verdict per observation (and the refined posteriors).
        """
        check_choice("quality_control_metric", quality_control_metric, ("psis", "prop"))
        N = check_positive_int("N", N)
        if self._amortized is not None:
            return self._evaluate_amortized(quality_control_metric, N, x, refine, refine_kwargs)
        if x is not None or refine:
            raise ValueError(
                "`x` and `refine` are for an amortised q (train_amortized); this q was "
                "trained for one observation, which evaluate() uses."
            )
        self._check_trained_for(None)
        self.potential_fn.set_x(self._trained_on)
        return evaluate_quality(self._family, self.potential_fn, quality_control_metric, N)

    def __repr__(self) -> str:
        if self._amortized is not None:
            trained = "amortised over x"
        elif self._trained_on is not None:
            trained = "trained on one observation x_o"
        else:
            trained = "untrained"
        name = self._q_arg if isinstance(self._q_arg, str) else type(self._family).__name__
        return (
            f"VIPosterior(q={name!r}, vi_method={self._vi_method!r}, "
            f"dim={event_size_of(self.prior)}, {trained})"
        )
