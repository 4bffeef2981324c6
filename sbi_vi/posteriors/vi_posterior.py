"""``VIPosterior``: the sbi API over the engine's composed parts.

The class wires a potential, a family, a divergence and the fit loop together; each of
those is a separate object that can be used on its own (see :mod:`sbi_vi.vi`). What has
been fitted is held by one object per way of fitting (:mod:`sbi_vi.posteriors.fitted`): a
:class:`~sbi_vi.posteriors.single.SingleFit` after ``train``, an
:class:`~sbi_vi.posteriors.amortized.AmortizedFit` after ``train_amortized``; the public
methods check what does not depend on the fit and delegate the rest to it.
"""

from __future__ import annotations

import copy
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
from sbi_vi.posteriors.amortized import AmortizedFit
from sbi_vi.posteriors.amortized_training import AmortizedSettings, fit_conditional
from sbi_vi.posteriors.batched import BatchedFit
from sbi_vi.posteriors.fitted import FittedQ
from sbi_vi.posteriors.fitted_posterior import FittedPosterior
from sbi_vi.posteriors.quality import warn_if_unreliable
from sbi_vi.posteriors.setup import (
    event_size_of,
    make_family,
    resolve_potential,
    resolve_prior,
    resolve_transform,
)
from sbi_vi.posteriors.single import SingleFit
from sbi_vi.vi.divergences import DIVERGENCES, build_divergence
from sbi_vi.vi.families import FAMILY_NAMES, Family, FamilyName
from sbi_vi.vi.fit import FitResult

__all__ = ["VIPosterior"]

QType = FamilyName  # sbi's name of the family option
_AMORTIZED_KWARGS = ("alpha", "K", "stick_the_landing", "dreg", "weight_transform", "seed")
_DIVERGENCE_KWARGS = (
    "alpha",
    "K",
    "stick_the_landing",
    "dreg",
    "weight_transform",
    "refresh_every",
)
_FIT_OPTIONS = ("eps", "retain_graph", "optimizer", "scheduler")
_TRAIN_KWARGS = (*_FIT_OPTIONS, *_DIVERGENCE_KWARGS, "seed")


class VIPosterior(FittedPosterior):
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
        self._x_shape_given = self._x_shape  # the batch convention reads it (_is_batch)
        self._num_transforms = check_positive_int("num_transforms", num_transforms)
        self._hidden_features = check_positive_int("hidden_features", hidden_features)
        choices = ("none", "independent", "structured")
        self._z_score_theta = check_choice("z_score_theta", z_score_theta, choices)
        self._z_score_x = check_choice("z_score_x", z_score_x, choices)
        self._x: Tensor | None = None
        if self.potential_fn.x_o is not None:  # a potential built with x_o sets the default
            self._x = self._check_x(self.potential_fn.x_o)
        self.validation_losses: list[float] = []
        self._map_cache: dict[bytes, Tensor] = {}
        self.history: list[FitResult] = []
        self._set_method(vi_method)
        self._single: SingleFit | None = None  # the q of one observation (set_q builds it)
        self._fitted: FittedQ | None = None  # what sample/log_prob/... use: see fitted.py
        self.set_q(q, parameters=parameters, modules=modules)

    # ------------------------------------------------------------------ configuration
    @property
    def q(self) -> Distribution:
        """The variational distribution q(θ), a fresh distribution over the support; after
        ``train(x=X)`` with B observations, the B q's as one distribution of batch shape
        ``[B]``.

        Raises:
            ValueError: After ``train_amortized`` (q(θ | x) needs an x: use ``sample`` /
                ``log_prob`` with ``x=``).
        """
        return self._fitted.distribution()

    @property
    def family(self) -> Family:
        """The trainable module behind :attr:`q` (the batched or the conditional family
        after ``train(x=X)`` or ``train_amortized``)."""
        return self._fitted.module

    @property
    def _optimizer(self) -> Any:
        """The optimizer that ``train`` resumes (read by the benchmarks)."""
        return self._single.optimizer

    def set_q(
        self,
        q: QType | Distribution | VIPosterior | Callable | Family,
        parameters: Iterable | None = None,
        modules: Iterable | None = None,
    ) -> None:
        """Define the variational family (see the constructor's ``q``); resets training.

        An amortised q of ``train_amortized`` is kept: it serves until ``train`` replaces it.
        """
        if isinstance(q, VIPosterior):  # a copied q needs no warm-up to the prior
            family = copy.deepcopy(q._single.family).to(self._device)
        else:
            if isinstance(q, str) and q not in FAMILY_NAMES:
                raise ValueError(
                    f"`q` must be one of {', '.join(map(repr, FAMILY_NAMES))}, a Distribution, "
                    f"a VIPosterior or a callable; got {q!r}."
                )
            family = make_family(
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
        self._q_arg = q
        self._q_params = (parameters, modules)
        old, self._single = self._single, SingleFit(family, warm=isinstance(q, VIPosterior))
        if self._fitted is None or self._fitted is old:
            self._fitted = self._single
        self._map_cache.clear()

    def set_vi_method(self, method: Literal["rKL", "fKL", "IW", "alpha"]) -> VIPosterior:
        """Set the divergence (``rKL``, ``fKL``, ``IW``, ``alpha``); chainable.

        A flow family built later is arranged for the method's fast direction; the current
        family is kept (both directions support every method).
        """
        self._set_method(method)
        self._single.optimizer = None
        return self

    def _set_method(self, method: str) -> None:
        if method not in DIVERGENCES:
            raise ValueError(
                f"`vi_method` must be one of {', '.join(map(repr, DIVERGENCES))}; got {method!r}."
            )
        self._vi_method = method
        self._direction = "density" if method == "fKL" else "sample"

    @property
    def vi_method(self) -> str:
        """The divergence used by :meth:`train` (``rKL``, ``fKL``, ``IW`` or ``alpha``)."""
        return self._vi_method

    def to(self, device: str | torch.device) -> VIPosterior:
        """Move q, the potential's observation and the cached results to ``device``."""
        self._device = str(device)
        self._single.to(device)
        self._fitted.to(device)  # the same object after train(): moving twice is a no-op
        self.potential_fn.to(device)
        if self._x is not None:
            self._x = self._x.to(device)
        self._map_cache = {k: v.to(device) for k, v in self._map_cache.items()}
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

        With ``x_shape`` ``[L]`` or ``[1, L]`` given to the constructor, x of shape ``[B, L]``
        with B ≥ 2 is a batch of B observations: B independent q's are fitted in one
        vectorised run (Gaussian families), each with its own loss, gradient clipping,
        annealing and convergence; ``sample``, ``log_prob``, ``evaluate``, ``map`` and
        ``log_evidence`` then answer per observation with the shapes of an amortised q
        (see the user guide, "Many observations in one run").

        Args:
            x: The observation (default: :attr:`default_x`), ``[L]`` or ``[N, L]`` iid rows,
                or a batch ``[B, L]`` of observations (see above).
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
                ``alpha``, ``K``, ``stick_the_landing``, ``dreg``, ``weight_transform``,
                ``refresh_every`` (divergence settings), ``seed`` (seeds the training; the
                caller's random state is restored afterwards).

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: On invalid hyper-parameters (as sbi: non-positive ``n_particles``,
                ``learning_rate``, ``max_num_iters`` or ``clip_value``, ``gamma`` outside
                (0, 1], negative ``min_num_iters``), a missing observation or x with NaN/inf;
                for a batch of observations: a family that cannot be batched (the message
                names those that can), a potential of θ alone.
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
            fitted = self._fit_for(x, fresh=retrain_from_scratch)
            if quality_control and quality_control_metric not in fitted.metrics:
                raise ValueError(
                    f"quality_control_metric={quality_control_metric!r} is not available for "
                    f"{fitted.origin}: use one of {fitted.metrics} (or quality_control=False)."
                )
            result = fitted.fit(
                self.potential_fn,
                self.prior,
                divergence,
                x,
                n_particles=n_particles,
                learning_rate=learning_rate,
                gamma=gamma,
                max_num_iters=max_num_iters,
                min_num_iters=min_num_iters,
                clip_value=clip_value,
                warm_up_rounds=warm_up_rounds,
                annealing_steps=annealing_steps,
                reset_optimizer=reset_optimizer,
                check_for_convergence=check_for_convergence,
                show_progress_bar=show_progress_bar,
                description=f"VI ({self._vi_method})",
                options={k: v for k, v in kwargs.items() if k in _FIT_OPTIONS},
            )
            self.history.append(result)
            self._replace_fit(fitted, "train()", fitted.serving)
            if self._x is None:
                self._x = x
            if quality_control:
                result = self.evaluate(quality_control_metric, N=10_000)
                warn_if_unreliable(result, quality_control_metric)
            return self

    def _fit_for(self, x: Tensor, *, fresh: bool) -> SingleFit | BatchedFit:
        """The fitted state that ``train(x)`` trains: the q of one observation, or for a
        batch of observations (:meth:`_is_batch`) a :class:`BatchedFit` — the one serving
        these observations if there is one (and not ``fresh``), else a new one started
        from the current q."""
        if not self._is_batch(x):
            return self._single
        if isinstance(self._fitted, BatchedFit) and self._fitted.serves(x) and not fresh:
            return self._fitted
        if not getattr(self.potential_fn, "takes_x", True):
            raise ValueError(
                "`potential_fn` is a function of θ alone, so it is the posterior of one fixed "
                f"observation; `x` holds a batch of {x.shape[0]} observations (x_shape="
                f"{tuple(self._x_shape_given)}), which needs a potential of (theta, x) that "
                "pairs θ [*, B, D] with the rows of x (ours, sbi's, or a function (theta, x))."
            )
        return BatchedFit(self._single.family, x, warm=self._single.warm)

    def _replace_fit(self, fitted: FittedQ, method: str, from_now_on: str) -> None:
        """Serve ``fitted`` from now on, warning if it replaces a trained q of another kind."""
        if self._fitted.trained and self._fitted.origin != fitted.origin:
            warnings.warn(
                f"{method} replaces {self._fitted.origin}; from now on {from_now_on}.",
                UserWarning,
                stacklevel=3,
            )
        self._fitted = fitted
        self._map_cache.clear()

    def _annealing_steps(self, annealing_iters: int | None) -> int:
        if annealing_iters is None:  # the divergence's default: > 0 if mode-seeking
            return DIVERGENCES[self._vi_method].annealing_iters
        return check_positive_int("annealing_iters", annealing_iters, allow_zero=True)

    def train_amortized(
        self,
        theta: Tensor,
        x: Tensor,
        n_particles: int = 128,
        learning_rate: float = 1e-3,
        gamma: float = 0.999,
        max_num_iters: int = 500,
        clip_value: float = 5.0,
        batch_size: int = 64,
        validation_fraction: float = 0.1,
        validation_batch_size: int | None = None,
        validation_n_particles: int | None = None,
        stop_after_iters: int = 20,
        show_progress_bar: bool = True,
        retrain_from_scratch: bool = False,
        flow_type: str | None = None,
        num_transforms: int | None = None,
        hidden_features: int | None = None,
        z_score_theta: Literal["none", "independent", "structured"] | None = None,
        z_score_x: Literal["none", "independent", "structured"] | None = None,
        params: Any = None,
        **kwargs: Any,
    ) -> VIPosterior:
        """Train q(θ | x) on the observations of a simulated set, for sampling at any x.

        Each iteration draws ``batch_size`` observations of the training split and
        ``n_particles`` θ ~ q(θ | x) for each, and minimises the posterior's divergence
        (``vi_method``; rKL is the negative ELBO) averaged over the observations. After every
        iteration the same divergence is evaluated on a fixed subset of
        ``validation_batch_size`` held-out observations with the same base draws each time
        (common random numbers, so the curve moves only with the weights); training stops
        after ``stop_after_iters`` iterations without a lower validation loss and the best
        weights are restored.

        The potential is evaluated on θ ``[particles, B, D]`` paired with x ``[B, L]``
        (``set_x(x, x_is_iid=False)``): a potential of :mod:`sbi_vi.potentials` does this; a
        plain function ``(theta, x)`` must pair the last batch dim of θ with the rows of x.

        Args:
            theta: Simulated parameters ``[N, D]`` (used to standardise θ).
            x: Simulated observations ``[N, L]``.
            n_particles: θ draws per observation and iteration (for IW: bounds of K each).
            learning_rate: Adam's initial learning rate.
            gamma: Exponential learning-rate decay per iteration.
            max_num_iters: Maximum iterations.
            clip_value: Gradient-norm clipping.
            batch_size: Observations per iteration.
            validation_fraction: Fraction of the pairs held out, in (0, 1).
            validation_batch_size: Held-out observations scored after every iteration
                (default ``batch_size``; at most all held-out ones).
            validation_n_particles: Particles per held-out observation (default
                ``n_particles``).
            stop_after_iters: Iterations without a better validation loss before stopping.
            show_progress_bar: Show a tqdm bar.
            retrain_from_scratch: Rebuild q(θ | x) (else training continues an earlier one).
            flow_type: Family of q(θ | x): a flow name (``nsf`` by default, ``maf``, ...)
                or ``gaussian``/``gaussian_diag`` (a network of x gives mean and scale).
            num_transforms: Flow transforms (default: the constructor's).
            hidden_features: Hidden width (default: the constructor's).
            z_score_theta: Standardisation of θ (default: the constructor's).
            z_score_x: Standardisation of x (default: the constructor's).
            params: An object with attributes ``q``, ``num_transforms``,
                ``hidden_features``, ``z_score_theta``, ``z_score_x`` (e.g. sbi's
                ``VIPosteriorParameters``), used where the explicit argument is ``None``.
            **kwargs: ``alpha``, ``K``, ``stick_the_landing``, ``dreg``, ``weight_transform``
                (divergence settings) and ``seed`` (seeds the split and the training; the
                caller's random state is restored afterwards).

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: Mismatched, empty or non-finite ``theta``/``x``, θ of the wrong
                dimension, x of the wrong trailing shape, ``validation_fraction`` outside
                (0, 1), ``gamma`` outside (0, 1], a split too small for the batch sizes, or
                a potential that ignores x.

        A call that raises or is interrupted leaves the posterior as it was (the new or
        continued q is trained on a copy and kept only when the fit ends).
        """
        check_unknown_kwargs("VIPosterior.train_amortized()", kwargs, _AMORTIZED_KWARGS)
        settings = AmortizedSettings.from_arguments(
            {
                "num_transforms": self._num_transforms,
                "hidden_features": self._hidden_features,
                "z_score_theta": self._z_score_theta,
                "z_score_x": self._z_score_x,
            },
            params,
            flow_type=flow_type,
            num_transforms=num_transforms,
            hidden_features=hidden_features,
            z_score_theta=z_score_theta,
            z_score_x=z_score_x,
            n_particles=n_particles,
            batch_size=batch_size,
            max_num_iters=max_num_iters,
            stop_after_iters=stop_after_iters,
            learning_rate=learning_rate,
            gamma=gamma,
            clip_value=clip_value,
            validation_fraction=validation_fraction,
            validation_batch_size=validation_batch_size,
            validation_n_particles=validation_n_particles,
        )
        if not getattr(self.potential_fn, "takes_x", True):
            raise ValueError(
                "`potential_fn` is a function of θ alone, so it is the posterior of one fixed "
                "observation; amortised VI needs a potential of (theta, x): a function "
                "(theta, x) -> log p, or a potential object with `set_x` (ours or sbi's "
                "`likelihood_estimator_based_potential(estimator, prior, x_o=None)`)."
            )
        theta, x = self._check_training_pairs(theta, x)
        settings.split_sizes(x.shape[0])
        divergence = build_divergence(
            self._vi_method, **{k: v for k, v in kwargs.items() if k in _DIVERGENCE_KWARGS}
        )
        with seeded(kwargs.get("seed")):
            q, result, losses = fit_conditional(
                settings,
                None if retrain_from_scratch else self._fitted.continued(),
                self.potential_fn,
                divergence,
                theta,
                x,
                prior=self.prior,
                transform=self.theta_transform,
                direction=self._direction,
                device=self._device,
                show_progress_bar=show_progress_bar,
                description=f"Amortised VI ({self._vi_method})",
            )
        self._replace_fit(AmortizedFit(q), "train_amortized()", "q(θ | x) serves every x")
        self._single.forget_observation()
        self.history.append(result)
        self.validation_losses = losses
        return self

    def __repr__(self) -> str:
        name = self._q_arg if isinstance(self._q_arg, str) else type(self.family).__name__
        return (
            f"VIPosterior(q={name!r}, vi_method={self._vi_method!r}, "
            f"dim={event_size_of(self.prior)}, {self._fitted.status})"
        )
