"""Amortised VI for :class:`~sbi_vi.posteriors.VIPosterior`: q(θ | x) for every x at once.

``train_amortized`` fits a conditional family to the potential across the observations of
a simulated set: the objective is the divergence of the posterior's ``vi_method`` (rKL, i.e.
the ELBO, by default; IW and alpha work too) on ``[particles, observations]`` log densities
from the same divergence implementations and the same fit loop as single-observation VI,
with early stopping on a held-out split. Per-observation PSIS k-hat shows which observations
the amortised q serves badly, and :meth:`AmortizedVI.refine` fine-tunes q for one of them.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Size, Tensor

from sbi_vi._checks import (
    check_choice,
    check_in_interval,
    check_positive_float,
    check_positive_int,
    check_unknown_kwargs,
    seeded,
)
from sbi_vi.diagnostics import psis
from sbi_vi.errors import NotTrainedError
from sbi_vi.posteriors.base import check_sample_shape, log_prob_far_out
from sbi_vi.posteriors.conditional import (
    AtObservation,
    ConditionalQ,
    broadcast_theta_x,
    build_conditional_q,
    sample_conditional,
)
from sbi_vi.posteriors.quality import importance_log_weights
from sbi_vi.vi.divergences import build_divergence
from sbi_vi.vi.fit import FitResult, fit, make_optimizer
from sbi_vi.vi.validation import ValidationStopping, common_random_numbers

if TYPE_CHECKING:
    from sbi_vi.posteriors.vi_posterior import VIPosterior

__all__ = ["AmortizedQuality", "AmortizedVI"]

_AMORTIZED_KWARGS = ("alpha", "K", "stick_the_landing", "dreg", "weight_transform", "seed")
_DIVERGENCE_KWARGS = ("alpha", "K", "stick_the_landing", "dreg", "weight_transform")
_VALIDATION_SEED = 20_231_121  # fixed draws for the validation loss (common random numbers)


@dataclass(frozen=True, eq=False)
class AmortizedQuality:
    """Per-observation quality of an amortised q: the result of ``evaluate(x=...)``.

    Attributes:
        khat: PSIS k-hat of q(θ | x_b) against the potential of x_b, shape ``[B]``.
        ess: Effective sample size of the smoothed importance weights, shape ``[B]``.
        reliable: ``khat ≤ 0.7`` and ESS ≥ 1 % of the draws, shape ``[B]`` (bool).
        psis: The batched :class:`~sbi_vi.diagnostics.PSISResult`.
        refined: With ``refine=True``: for each unreliable observation (its index into x),
            a single-observation :class:`VIPosterior` fine-tuned from the amortised q.
    """

    khat: Tensor
    ess: Tensor
    reliable: Tensor
    psis: Any
    refined: dict[int, VIPosterior] = field(default_factory=dict)

    @property
    def unreliable(self) -> Tensor:
        """Indices of the observations whose q should not be trusted."""
        return torch.nonzero(~self.reliable).flatten()

    def __repr__(self) -> str:
        n = int(self.khat.numel())
        bad = int((~self.reliable).sum())
        return (
            f"AmortizedQuality({n} observations, mean k-hat {float(self.khat.mean()):.3f}, "
            f"max {float(self.khat.max()):.3f}, {bad} unreliable, {len(self.refined)} refined)"
        )


class AmortizedVI:
    """The amortised half of :class:`VIPosterior` (a mixin; the state lives on the posterior).

    After ``train_amortized`` the posterior holds ``_amortized`` (a :class:`ConditionalQ`) and
    ``sample``, ``sample_batched``, ``log_prob``, ``map`` and ``evaluate`` take any x. After
    ``train`` it holds a q for one observation instead: each training discards the other
    kind of q, with a warning (as sbi documents).
    """

    _amortized: ConditionalQ | None

    def train_amortized(
        self: VIPosterior,
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
        settings = _resolve_settings(self, params, flow_type, num_transforms, hidden_features)
        z_theta = _fallback(z_score_theta, params, "z_score_theta", self._z_score_theta)
        z_x = _fallback(z_score_x, params, "z_score_x", self._z_score_x)
        choices = ("none", "independent", "structured")
        check_choice("z_score_theta", z_theta, choices)
        check_choice("z_score_x", z_x, choices)
        n_particles = check_positive_int("n_particles", n_particles)
        batch_size = check_positive_int("batch_size", batch_size)
        max_num_iters = check_positive_int("max_num_iters", max_num_iters)
        stop_after_iters = check_positive_int("stop_after_iters", stop_after_iters)
        check_positive_float("learning_rate", learning_rate)
        check_in_interval("gamma", gamma, 0.0, 1.0, closed="right")
        check_positive_float("clip_value", clip_value)
        validation_fraction = check_in_interval(
            "validation_fraction", validation_fraction, 0.0, 1.0
        )
        val_batch = check_positive_int(
            "validation_batch_size",
            batch_size if validation_batch_size is None else validation_batch_size,
        )
        val_particles = check_positive_int(
            "validation_n_particles",
            n_particles if validation_n_particles is None else validation_n_particles,
        )
        if not getattr(self.potential_fn, "takes_x", True):
            raise ValueError(
                "`potential_fn` is a function of θ alone, so it is the posterior of one fixed "
                "observation; amortised VI needs a potential of (theta, x): a function "
                "(theta, x) -> log p, or a potential object with `set_x` (ours or sbi's "
                "`likelihood_estimator_based_potential(estimator, prior, x_o=None)`)."
            )
        theta, x = self._check_training_pairs(theta, x)
        num_val = int(validation_fraction * x.shape[0])
        num_train = x.shape[0] - num_val
        if num_val == 0:
            raise ValueError(
                f"The validation split is empty: {x.shape[0]} pairs × validation_fraction="
                f"{validation_fraction} < 1. Pass more pairs or a larger validation_fraction."
            )
        if num_train < batch_size:
            raise ValueError(
                f"The training split has {num_train} pairs, fewer than batch_size="
                f"{batch_size}. Pass more pairs, a smaller batch_size or validation_fraction."
            )
        divergence = build_divergence(
            self._vi_method, **{k: v for k, v in kwargs.items() if k in _DIVERGENCE_KWARGS}
        )
        with seeded(kwargs.get("seed")):
            perm = torch.randperm(x.shape[0], device=x.device)
            train_idx, val_idx = perm[:num_train], perm[num_train:]
            x_train, x_val = x[train_idx], x[val_idx]
            x_val = x_val[:val_batch]  # a fixed random subset, scored every iteration
            if self._amortized is None or retrain_from_scratch:
                candidate = build_conditional_q(
                    settings["q"],
                    prior=self.prior,
                    transform=self.theta_transform,
                    theta=theta[train_idx],
                    x=x_train,
                    num_transforms=settings["num_transforms"],
                    hidden_features=settings["hidden_features"],
                    z_score_theta=z_theta,
                    z_score_x=z_x,
                    direction=self._direction,
                    device=self._device,
                )
            else:
                candidate = copy.deepcopy(self._amortized)  # a failed call keeps the old q
            result, rule = _fit_conditional(
                candidate,
                self.potential_fn,
                divergence,
                x_train,
                x_val,
                n_particles=n_particles,
                val_particles=val_particles,
                batch_size=batch_size,
                learning_rate=learning_rate,
                gamma=gamma,
                max_num_iters=max_num_iters,
                clip_value=clip_value,
                stop_after_iters=stop_after_iters,
                show_progress_bar=show_progress_bar,
                description=f"Amortised VI ({self._vi_method})",
            )
        if self._trained_on is not None:
            warnings.warn(
                "train_amortized() replaces the q trained for one observation by train(); "
                "from now on q(θ | x) serves every x.",
                UserWarning,
                stacklevel=2,
            )
        self._amortized = candidate.eval()
        self._trained_on = None
        self._map_cache.clear()
        self._optimizer = None
        self.history.append(result)
        self.validation_losses = list(rule.losses)
        return self

    # ------------------------------------------------------------------ using q(θ | x)
    def _require_amortized(self: VIPosterior, x: Tensor | None) -> Tensor:
        """The checked observations ``[B, L]`` for the amortised q (default: default x)."""
        if x is None:
            if self._x is None:
                raise ValueError(
                    "An amortised q needs `x`: pass `x=` or call `set_default_x(x)` first."
                )
            return self._x
        return self._check_x(x)

    def _sample_amortized(
        self: VIPosterior, sample_shape: Size, x: Tensor | None, max_batch_size: int = 10_000
    ) -> Tensor:
        x = self._require_amortized(x)
        theta = sample_conditional(self._amortized, Size(sample_shape), x, max_batch_size)
        return theta.squeeze(-2) if x.shape[0] == 1 else theta

    def sample_batched(
        self: VIPosterior,
        sample_shape: Size | tuple[int, ...],
        x: Tensor,
        max_sampling_batch_size: int = 10_000,
        show_progress_bars: bool = True,
    ) -> Tensor:
        """Draw θ ~ q(θ | x_b) for every observation of a batch: ``[*sample_shape, B, D]``.

        Args:
            sample_shape: Leading shape of the draws per observation.
            x: Observations ``[B, L]``.
            max_sampling_batch_size: At most about this many draws pass through q at once
                (bounds the memory; the result is the same).
            show_progress_bars: Unused (sampling is one pass per chunk).

        Raises:
            NotImplementedError: If q was trained for one observation (``train``), as sbi.
            NotTrainedError: If q is not trained (a ``ValueError``).
            TypeError: A ``sample_shape`` that is not a tuple of ints, or x not a tensor.
            ValueError: A negative size in ``sample_shape``, or a bad ``x`` (naming it).
        """
        del show_progress_bars
        if self._amortized is None:
            if self._trained_on is not None:
                raise NotImplementedError(
                    "sample_batched() needs an amortised q (train_amortized); this q was "
                    "trained by train() for one observation. Call sample() per observation."
                )
            raise NotTrainedError("q is not trained yet: call `train_amortized(theta, x)`.")
        sample_shape = check_sample_shape(sample_shape)
        batch = check_positive_int("max_sampling_batch_size", max_sampling_batch_size)
        x = self._check_x(x)
        return sample_conditional(self._amortized, sample_shape, x, batch)

    def _log_prob_amortized(
        self: VIPosterior, theta: Tensor, x: Tensor | None, track_gradients: bool
    ) -> Tensor:
        x = self._require_amortized(x)
        theta = self._check_theta(theta)
        if theta.ndim > 2 and x.shape[0] != 1:
            raise ValueError(
                f"`theta` of shape {tuple(theta.shape)} needs one observation; with {x.shape[0]} "
                "rows of x, pass θ as [N, D] (paired or broadcast with x)."
            )
        flat, x = broadcast_theta_x(theta.reshape(-1, theta.shape[-1]), x)
        if flat.shape[0] == 0:  # as sample((0,)): an empty answer, no network pass
            return flat.new_zeros(theta.shape[:-1])
        with torch.set_grad_enabled(track_gradients):
            out = log_prob_far_out(self._amortized(x), flat)
        if theta.ndim > 2:  # [*N, D] under one x
            return out.reshape(theta.shape[:-1])
        return out[0] if theta.ndim == 1 and out.shape[0] == 1 else out

    def _evaluate_amortized(
        self: VIPosterior,
        metric: str,
        N: int,
        x: Tensor | None,
        refine: bool,
        refine_kwargs: dict | None,
    ) -> AmortizedQuality:
        if metric != "psis":
            raise ValueError(
                "An amortised q is evaluated per observation with quality_control_metric="
                f"'psis'; got {metric!r}."
            )
        from sbi_vi.posteriors.quality import MIN_ESS_FRACTION

        x = self._require_amortized(x)
        self.potential_fn.set_x(x, x_is_iid=False)
        chunk = max(1, 100_000 // x.shape[0])
        _, lp, lq = importance_log_weights(self._amortized, self.potential_fn, N, x, chunk)
        result = psis(lp - lq)
        khat = torch.as_tensor(result.khat).reshape(-1)
        ess = torch.as_tensor(result.ess).reshape(-1)
        reliable = (khat <= 0.7) & (ess >= MIN_ESS_FRACTION * N)
        refined = {}
        if refine:
            for i in torch.nonzero(~reliable).flatten().tolist():
                refined[i] = self.refine(x[i], **(refine_kwargs or {}))
        return AmortizedQuality(khat, ess, reliable, result, refined)

    def refine(self: VIPosterior, x: Tensor, **train_kwargs: Any) -> VIPosterior:
        """A single-observation posterior for ``x``, fine-tuned from the amortised q.

        A copy of q(θ | x) with its context fixed at ``x`` is trained by :meth:`train`
        (this posterior's potential, prior and ``vi_method``; no warm-up and no annealing,
        since it starts from the amortised fit). The amortised q is left as it is.

        Args:
            x: One observation, ``[L]`` or ``[1, L]``.
            **train_kwargs: Passed to :meth:`train` (default ``max_num_iters=500``).

        Returns:
            A new :class:`VIPosterior` trained on ``x``.
        """
        from sbi_vi.posteriors.vi_posterior import VIPosterior

        if self._amortized is None:
            raise NotTrainedError("refine() needs an amortised q: call train_amortized() first.")
        x = self._check_x(x)
        if x.shape[0] != 1:
            raise ValueError(f"refine() takes one observation; got {x.shape[0]} rows of x.")
        family = AtObservation(copy.deepcopy(self._amortized), x[0])
        self.potential_fn.set_x(x)
        refined = VIPosterior(
            self.potential_fn,
            prior=self.prior,
            q=family,
            theta_transform=self.theta_transform,
            vi_method=self._vi_method,
            device=self._device,
        )
        train_kwargs.setdefault("max_num_iters", 500)
        train_kwargs.setdefault("warm_up_rounds", 0)
        train_kwargs.setdefault("annealing_iters", 0)  # q starts at the amortised fit
        train_kwargs.setdefault("show_progress_bar", False)
        return refined.train(x, **train_kwargs)


def _fallback(value: Any, params: Any, name: str, default: Any) -> Any:
    """Explicit argument, else the attribute of ``params``, else the instance default."""
    if value is not None:
        return value
    if params is not None and getattr(params, name, None) is not None:
        return getattr(params, name)
    return default


def _resolve_settings(
    posterior: Any, params: Any, flow_type: Any, num_transforms: Any, hidden_features: Any
) -> dict[str, Any]:
    q = flow_type
    if q is None and params is not None:
        q = getattr(params, "q", None)
        if q is not None and not isinstance(q, str):
            raise ValueError(
                "train_amortized() builds its conditional family by name; `params.q` is a "
                f"{type(q).__name__}. Use a name such as 'nsf' or 'maf'."
            )
    q = "nsf" if q is None else getattr(q, "value", q)  # sbi's ZukoFlowType enum values
    q = q.lower() if isinstance(q, str) else q
    return {
        "q": q,
        "num_transforms": check_positive_int(
            "num_transforms",
            _fallback(num_transforms, params, "num_transforms", posterior._num_transforms),
        ),
        "hidden_features": check_positive_int(
            "hidden_features",
            _fallback(hidden_features, params, "hidden_features", posterior._hidden_features),
        ),
    }


def _fit_conditional(
    q: ConditionalQ,
    potential: Any,
    divergence: Any,
    x_train: Tensor,
    x_val: Tensor,
    *,
    n_particles: int,
    val_particles: int,
    batch_size: int,
    learning_rate: float,
    gamma: float,
    max_num_iters: int,
    clip_value: float,
    stop_after_iters: int,
    show_progress_bar: bool,
    description: str,
) -> tuple[FitResult, ValidationStopping]:
    """The amortised objective through :func:`sbi_vi.vi.fit.fit`, stopped on validation."""
    num_train = x_train.shape[0]

    def closure() -> tuple[Tensor, Tensor]:
        idx = torch.randint(num_train, (batch_size,), device=x_train.device)
        x_batch = x_train[idx]
        potential.set_x(x_batch, x_is_iid=False)
        out = divergence(q, potential, n_particles, context=x_batch)
        return out.loss, out.value.mean()

    def validate() -> float:
        potential.set_x(x_val, x_is_iid=False)
        with common_random_numbers(_VALIDATION_SEED):
            out = divergence(q, potential, val_particles, context=x_val)
        return float(out.value.mean())

    optimizer, scheduler = make_optimizer(q.parameters(), learning_rate=learning_rate, gamma=gamma)
    rule = ValidationStopping(validate, q, stop_after_iters=stop_after_iters)
    q.train()
    try:
        result = fit(
            closure,
            optimizer,
            scheduler=scheduler,
            max_num_iters=max_num_iters,
            clip_value=clip_value,
            stopping=rule,
            show_progress_bar=show_progress_bar,
            description=description,
        )
    finally:
        rule.restore_best()
        q.eval()
    return result, rule
