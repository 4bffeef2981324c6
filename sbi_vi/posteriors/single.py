"""q(θ) for one observation x_o: the fitted state behind ``VIPosterior.train``.

:class:`SingleFit` holds the family, the observation it was trained for, whether it has been
warmed up to the prior, and the optimizer (with its scheduler) that a later ``train()``
resumes; :meth:`SingleFit.fit` is one training call: warm-up on a fresh fit, the annealed
fit loop of :mod:`sbi_vi.vi`, and the rollback of :mod:`sbi_vi.posteriors.rollback` when
the call fails. See :mod:`sbi_vi.posteriors.fitted` for the interface it implements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from sbi_vi._checks import check_positive_int
from sbi_vi.errors import NotTrainedError
from sbi_vi.posteriors.base import PosteriorBase, log_prob_far_out
from sbi_vi.posteriors.quality import evaluate_quality, importance_log_weights
from sbi_vi.posteriors.rollback import restored_on_failure
from sbi_vi.posteriors.setup import warm_up
from sbi_vi.potentials.base import log_prior_or_zero
from sbi_vi.vi.divergences import Divergence
from sbi_vi.vi.families import Family
from sbi_vi.vi.fit import ConvergenceCheck, FitResult, make_optimizer
from sbi_vi.vi.tempering import annealed_fit

__all__ = ["SingleFit", "prepare_optimizer"]


class SingleFit:
    """The variational q(θ) of one observation, with its training state.

    Args:
        family: The trainable family (``family()`` is q).
        warm: Whether q already starts away from the prior (a copied q): no warm-up and no
            annealing on its first training.

    Attributes:
        family: The family.
        trained_on: The observation ``[N, L]`` q was last trained for (``None``: untrained).
        warm: Whether the warm-up to the prior has been done.
        optimizer: The optimizer a later training resumes (``None``: a fresh one is built).
        scheduler: Its learning-rate scheduler.
        optimizer_key: The settings the optimizer was built with.
    """

    origin = "the q trained for one observation by train()"
    serving = "q serves this observation only"
    metrics = ("psis", "prop")

    def __init__(self, family: Family, *, warm: bool = False):
        self.family = family
        self.trained_on: Tensor | None = None
        self.warm = warm
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.optimizer_key: tuple | None = None

    # ------------------------------------------------------------------ state
    @property
    def module(self) -> nn.Module:
        """The family."""
        return self.family

    @property
    def trained(self) -> bool:
        """Whether q has been trained for an observation."""
        return self.trained_on is not None

    def distribution(self) -> Distribution:
        """q(θ), a fresh distribution over the support."""
        return self.family()

    @property
    def status(self) -> str:
        """``"trained on one observation x_o"`` or ``"untrained"``."""
        return "trained on one observation x_o" if self.trained else "untrained"

    def forget_observation(self) -> None:
        """Mark q as not trained for any observation (another fit took over)."""
        self.trained_on = None

    def to(self, device: str | torch.device) -> None:
        """Move the family and the observation; the optimizer is rebuilt on next training."""
        self.family.to(device)
        if self.trained_on is not None:
            self.trained_on = self.trained_on.to(device)
        self.optimizer = None

    def require(self, x: Tensor | None, post: PosteriorBase) -> None:
        """Refuse an untrained q, or an ``x`` other than the one q was trained for.

        Raises:
            NotTrainedError: If q is not trained.
            ValueError: If ``x`` is given and is not the trained observation.
        """
        if self.trained_on is None:
            raise NotTrainedError("q is not trained yet: call `train(x_o)` first.")
        if x is not None:
            x = post._check_x(x)
            if x.shape != self.trained_on.shape or not torch.allclose(x, self.trained_on):
                raise ValueError(
                    "This q was trained for another observation: it is q(θ) for x_o, not "
                    "q(θ | x). Call train(x) for the new x (or pass x=None)."
                )

    # ------------------------------------------------------------------ using q
    def sample(self, sample_shape: Size, x: Tensor | None, post: PosteriorBase) -> Tensor:
        """θ ~ q, ``[*sample_shape, D]``."""
        self.require(x, post)
        with torch.no_grad():
            return self.family().sample(sample_shape)

    def sample_batched(
        self, sample_shape: Size, x: Tensor, max_batch_size: int, post: PosteriorBase
    ) -> Tensor:
        """Refused: a q of one observation has no batch of observations to serve.

        Raises:
            NotImplementedError: If q was trained by ``train`` (as sbi).
            NotTrainedError: If q is not trained.
        """
        if self.trained:
            raise NotImplementedError(
                "sample_batched() needs an amortised q (train_amortized); this q was "
                "trained by train() for one observation. Call sample() per observation."
            )
        raise NotTrainedError("q is not trained yet: call `train_amortized(theta, x)`.")

    def log_prob(
        self, theta: Tensor, x: Tensor | None, post: PosteriorBase, track_gradients: bool
    ) -> Tensor:
        """log q(θ) for θ ``[*, D]``: shape ``[*]``."""
        self.require(x, post)
        theta = post._check_theta(theta)
        if theta.shape[:-1].numel() == 0:  # as sample((0,)): an empty answer, no network pass
            return theta.new_zeros(theta.shape[:-1])
        with torch.set_grad_enabled(track_gradients):
            return log_prob_far_out(self.family(), theta)

    def importance_draws(
        self, N: int, x: Tensor | None, post: PosteriorBase
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_o, theta, log_p, log_q)``: N draws θ ~ q ``[N, D]``, log densities ``[N]``."""
        self.require(x, post)
        post.potential_fn.set_x(self.trained_on)
        theta, log_p, log_q = importance_log_weights(self.family, post.potential_fn, N)
        return self.trained_on, theta, log_p, log_q

    def evaluate(
        self,
        metric: str,
        N: int,
        x: Tensor | None,
        post: PosteriorBase,
        refine: Callable[..., Any] | None,
        refine_kwargs: dict | None,
    ) -> Any:
        """PSIS or prop of q against the potential of the trained observation.

        Raises:
            ValueError: If ``x`` or ``refine`` is given (they are for an amortised q).
            NotTrainedError: If q is not trained.
        """
        if x is not None or refine is not None:
            raise ValueError(
                "`x` and `refine` are for an amortised q (train_amortized); this q was "
                "trained for one observation, which evaluate() uses."
            )
        self.require(None, post)
        post.potential_fn.set_x(self.trained_on)
        return evaluate_quality(self.family, post.potential_fn, metric, N)

    def map_inits(self, x: Tensor, num_init_samples: int, init_method: str) -> Tensor:
        """Draws of q as MAP starting points; q must be trained on ``x``.

        Raises:
            NotTrainedError: If q is not trained on ``x``.
        """
        if self.trained_on is None or not torch.equal(self.trained_on, x):
            raise NotTrainedError(
                f"init_method={init_method!r} needs q trained on this x; call train(x) "
                "first or use init_method='prior'."
            )
        n = check_positive_int("num_init_samples", num_init_samples)
        with torch.no_grad():
            return self.family().sample(Size((n,)))

    def at_observation(self, x: Tensor, post: PosteriorBase) -> tuple[nn.Module, Tensor]:
        """Refused: ``refine`` fine-tunes an amortised q.

        Raises:
            NotTrainedError: Always (a ``ValueError``).
        """
        raise NotTrainedError("refine() needs an amortised q: call train_amortized() first.")

    def continued(self) -> None:
        """No conditional q to continue: ``train_amortized`` builds a new one."""
        return None

    # ------------------------------------------------------------------ training
    def fit(
        self,
        potential: Any,
        prior: Any,
        divergence: Divergence,
        x: Tensor,
        *,
        n_particles: int,
        learning_rate: float,
        gamma: float,
        max_num_iters: int,
        min_num_iters: int,
        clip_value: float,
        warm_up_rounds: int,
        annealing_steps: int,
        reset_optimizer: bool,
        check_for_convergence: bool,
        show_progress_bar: bool,
        description: str,
        options: dict,
    ) -> FitResult:
        """One training call of q on the potential of ``x`` (see ``VIPosterior.train``).

        A fresh q (never trained, not warm) is first fitted to the prior for
        ``warm_up_rounds`` and then annealed over ``annealing_steps``. A call that raises
        or is interrupted leaves q, the warm flag and the optimizer as they were.

        Args:
            options: ``eps``, ``retain_graph``, ``optimizer``, ``scheduler`` of ``train``.

        Returns:
            The result of the fit loop; ``trained_on`` is ``x`` afterwards.
        """
        fresh = self.trained_on is None and not self.warm  # q starts from the prior
        potential.set_x(x)
        with restored_on_failure(self):  # an interrupted fit leaves q as it found it
            if fresh and warm_up_rounds > 0:
                warm_up(
                    self.family,
                    prior,
                    rounds=warm_up_rounds,
                    n_particles=n_particles,
                    learning_rate=learning_rate,
                    clip_value=clip_value,
                )
            self.warm = True
            prepare_optimizer(self, learning_rate, gamma, options, reset_optimizer)
            stopping = (
                ConvergenceCheck(eps=options.get("eps", 1e-3), min_num_iters=min_num_iters)
                if check_for_convergence
                else None
            )
            result = annealed_fit(
                self._loss_closure(divergence, n_particles),
                potential,
                lambda theta: log_prior_or_zero(prior, theta),
                annealing_steps if fresh else 0,
                self.optimizer,
                scheduler=self.scheduler,
                max_num_iters=max_num_iters,
                clip_value=clip_value,
                stopping=stopping,
                retain_graph=bool(options.get("retain_graph", False)),
                show_progress_bar=show_progress_bar,
                description=description,
            )
        self.trained_on = x
        return result

    def _loss_closure(
        self, divergence: Divergence, n_particles: int
    ) -> Callable[[Callable[[Tensor], Tensor]], Callable[[], tuple[Tensor, Tensor]]]:
        family = self.family

        def for_target(log_p: Callable[[Tensor], Tensor]) -> Callable[[], tuple[Tensor, Tensor]]:
            def closure() -> tuple[Tensor, Tensor]:
                out = divergence(family, log_p, n_particles)
                return out.loss, out.value

            return closure

        return for_target


def prepare_optimizer(
    state: Any, learning_rate: float, gamma: float, options: dict, reset: bool
) -> None:
    """Build ``state.optimizer`` and ``state.scheduler`` for ``state.family`` unless the one
    it holds was built with the same settings (a later ``train()`` resumes it).

    Args:
        state: A :class:`SingleFit` or a :class:`~sbi_vi.posteriors.batched.BatchedFit`.
        learning_rate: Initial learning rate.
        gamma: Exponential decay per iteration.
        options: ``optimizer`` (class) and ``scheduler`` (class or ``(class, kwargs)``).
        reset: Build a fresh optimizer in any case.
    """
    scheduler = options.get("scheduler")
    scheduler_cls, scheduler_kwargs = (
        scheduler if isinstance(scheduler, tuple) else (scheduler, None)
    )
    key = (learning_rate, gamma, options.get("optimizer"), scheduler_cls)
    if state.optimizer is None or reset or key != state.optimizer_key:
        state.optimizer, state.scheduler = make_optimizer(
            state.family.parameters(),
            learning_rate=learning_rate,
            optimizer=options.get("optimizer"),
            scheduler=scheduler_cls,
            scheduler_kwargs=scheduler_kwargs,
            gamma=gamma,
        )
        state.optimizer_key = key
