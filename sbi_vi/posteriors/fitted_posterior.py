"""The methods of a posterior that use q: each delegates to the posterior's fitted state.

:class:`FittedPosterior` holds ``_fitted`` (a :class:`~sbi_vi.posteriors.fitted.FittedQ`:
a q of one observation, or an amortised q(θ | x)) and answers ``sample`` (direct or
importance-resampled), ``sample_batched``, ``log_prob``, ``map``, ``evaluate`` and
``log_evidence`` through it, after the checks that do not depend on how q was fitted.
:class:`~sbi_vi.posteriors.VIPosterior` adds the configuration and the training that put a
fitted state there.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import torch
from torch import Size, Tensor

from sbi_vi._checks import check_choice, check_positive_int
from sbi_vi.diagnostics.evidence import LogEvidence, log_evidence_from_log_weights
from sbi_vi.posteriors.base import PosteriorBase, check_sample_shape
from sbi_vi.posteriors.fitted import FittedQ
from sbi_vi.posteriors.importance import (
    SIRResult,
    check_normalized,
    num_proposals_for,
    sir_resample,
)
from sbi_vi.posteriors.legacy import upgrade_state
from sbi_vi.posteriors.map import gradient_ascent
from sbi_vi.posteriors.setup import event_size_of

__all__ = ["FittedPosterior"]


class FittedPosterior(PosteriorBase):
    """A posterior whose q is a fitted state object; see :class:`~sbi_vi.posteriors.VIPosterior`.

    Subclasses set ``_fitted``, ``_map_cache`` (MAP per observation), ``theta_transform``
    and ``_vi_method``; :meth:`refine` builds a posterior of the subclass with its
    constructor's ``potential_fn, prior, q, theta_transform, vi_method, device``.
    """

    _fitted: FittedQ
    _map_cache: dict[bytes, Tensor]
    _vi_method: str
    theta_transform: Any
    sir_diagnostics: SIRResult | None = None
    """k̂ and ESS of the weights of the last ``sample(method="sir")`` (``None`` before)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, reading files written before the fitted-state objects too."""
        self.__dict__.update(upgrade_state(state))

    def sample(
        self,
        sample_shape: Size | tuple[int, ...] = (),
        x: Tensor | None = None,
        show_progress_bars: bool = True,
        *,
        method: Literal["direct", "sir"] = "direct",
        num_proposals: int | None = None,
    ) -> Tensor:
        """Draw θ ~ q, shape ``[*sample_shape, D]`` (``[*sample_shape, B, D]`` for B > 1 x).

        ``method="sir"`` (sampling/importance resampling) draws ``num_proposals`` θ from q,
        weights them by p̃/q smoothed with PSIS, and resamples ``sample_shape`` of them with
        replacement: a slightly-off q gives draws closer to the posterior. It is refused
        when k̂ > 0.7 (no resampling repairs such a q). The k̂ and effective sample size of
        the weights are kept in :attr:`sir_diagnostics` (per observation for a batch of x)
        and logged; a :class:`~sbi_vi.errors.QualityWarning` says when the ESS is below the
        number of draws asked for (the draws then repeat). Works with any potential.

        Args:
            sample_shape: Leading shape of the samples.
            x: For a q trained by ``train``: the trained observation (or ``None``). For an
                amortised q: any observation ``[L]``/``[1, L]``, or a batch ``[B, L]``
                (default: :attr:`default_x`).
            show_progress_bars: Unused (sampling is one pass).
            method: ``"direct"`` (draws of q) or ``"sir"`` (importance-resampled).
            num_proposals: ``"sir"`` only: draws of q to resample from, per observation
                (default ``max(10 n, 10_000)`` for n draws).

        Raises:
            NotTrainedError: If q has not been trained.
            ValueError: If ``x`` is not the observation q was trained on; an unknown
                ``method``; ``num_proposals`` given with ``method="direct"`` or below 2;
                ``method="sir"`` with k̂ > 0.7 (the message names the remedies).
        """
        del show_progress_bars
        sample_shape = check_sample_shape(sample_shape)
        check_choice("method", method, ("direct", "sir"))
        if method == "direct":
            if num_proposals is not None:
                raise ValueError(
                    "`num_proposals` is for method='sir'; got it with method='direct'."
                )
            return self._fitted.sample(sample_shape, x, self)
        M = num_proposals_for(sample_shape.numel(), num_proposals)
        _, theta, log_p, log_q = self._fitted.importance_draws(M, x, self)
        draws, self.sir_diagnostics = sir_resample(theta, log_p - log_q, sample_shape)
        if draws.ndim == len(sample_shape) + 2 and draws.shape[-2] == 1:  # as sample(): one x
            draws = draws.squeeze(-2)
        return draws

    def log_evidence(
        self, N: int = 10_000, x: Tensor | None = None, normalized: bool = False
    ) -> LogEvidence:
        """An importance-sampling estimate of log p(x_o), its standard error and PSIS k̂.

        With N draws θ_s ~ q and weights ``w_s = exp(potential(θ_s)) / q(θ_s)``, the
        estimate is ``log (1/N) Σ_s w_s`` and its standard error ``sd(w) / (√N mean(w))``;
        the k̂ of the same weights (those of :meth:`evaluate`) says whether to trust both
        (k̂ ≤ 0.7). It is log p(x_o) only when the potential is a normalised likelihood ×
        prior: a likelihood-based potential is, a ratio-based or custom one is refused
        unless ``normalized=True``. One implementation serves every front end:
        :func:`~sbi_vi.diagnostics.log_evidence_from_log_weights`.

        Args:
            N: Draws of q per observation (at least 2).
            x: For a q trained by ``train``: the trained observation (or ``None``). For an
                amortised q: the observations ``[B, L]`` (default: :attr:`default_x`).
            normalized: Vouch that a ratio-based or custom potential is
                log p(x_o | θ) + log p(θ) with both densities normalised.

        Returns:
            A :class:`~sbi_vi.diagnostics.LogEvidence` (``value``, ``stderr``, ``khat``,
            ``reliable``): floats for a q of one observation, tensors ``[B]`` (one per
            observation) for an amortised q.

        Raises:
            NotTrainedError: If q is not trained (a ``ValueError``).
            ValueError: A potential not known to be normalised without
                ``normalized=True``; ``N`` < 2; a bad ``x``.
            TypeError: ``normalized`` not a bool.
        """
        check_normalized(self.potential_fn, normalized)
        N = check_positive_int("N", N)
        if N < 2:
            raise ValueError(f"`N` must be at least 2, got {N}.")
        _, _, log_p, log_q = self._fitted.importance_draws(N, x, self)
        return log_evidence_from_log_weights(log_p - log_q)

    def sample_batched(
        self,
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
        return self._fitted.sample_batched(sample_shape, x, max_sampling_batch_size, self)

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
        return self._fitted.log_prob(theta, x, self, track_gradients)

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

        For a batch of observations x ``[B, L]`` (:meth:`_is_batch`: a posterior built with
        ``x_shape`` ``[L]`` or ``[1, L]``), the MAP of each, from the draws of its own q.

        Returns:
            The MAP, shape ``[D]`` (``[B, D]`` for a batch of observations).
        """
        x = self._resolve_x(x)
        if self._is_batch(x):
            return torch.stack(
                [
                    self.map(
                        x[b : b + 1],
                        num_iter,
                        num_to_optimize,
                        learning_rate,
                        init_method,
                        num_init_samples,
                        save_best_every,
                        show_progress_bars,
                        force_update,
                    )
                    for b in range(x.shape[0])
                ]
            )
        key = x.detach().cpu().numpy().tobytes()
        if key in self._map_cache and not force_update:
            return self._map_cache[key]
        if not isinstance(init_method, str):  # a tensor or array of initial points
            inits = self._check_theta(init_method, "init_method")
            inits = inits.reshape(-1, event_size_of(self.prior))
            if inits.shape[0] == 0:
                raise ValueError("`init_method` is an empty tensor: pass at least one θ.")
        elif init_method in ("proposal", "posterior"):
            inits = self._fitted.map_inits(x, num_init_samples, init_method)
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
        return self._fitted.evaluate(
            quality_control_metric, N, x, self, self.refine if refine else None, refine_kwargs
        )

    def refine(self, x: Tensor, **train_kwargs: Any) -> Self:
        """A single-observation posterior for ``x``, fine-tuned from the amortised q.

        A copy of q(θ | x) with its context fixed at ``x`` is trained by :meth:`train`
        (this posterior's potential, prior and ``vi_method``; no warm-up and no annealing,
        since it starts from the amortised fit). The amortised q is left as it is.

        Args:
            x: One observation, ``[L]`` or ``[1, L]``.
            **train_kwargs: Passed to :meth:`train` (default ``max_num_iters=500``).

        Returns:
            A new posterior of this class (a :class:`~sbi_vi.posteriors.VIPosterior`)
            trained on ``x``.
        """
        family, x = self._fitted.at_observation(x, self)
        self.potential_fn.set_x(x)
        refined = type(self)(
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
