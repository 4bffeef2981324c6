"""The fitted state of a :class:`~sbi_vi.posteriors.VIPosterior`: one object per way of fitting.

A posterior is trained in one of several ways, and what it can answer depends on which:

- :class:`~sbi_vi.posteriors.single.SingleFit` — q(θ) for one observation x_o
  (``train(x_o)``): the family, the x it was trained for, the warm-up flag and the optimizer
  that a later ``train()`` resumes.
- :class:`~sbi_vi.posteriors.amortized.AmortizedFit` — q(θ | x) trained on simulated pairs
  (``train_amortized(theta, x)``): serves any x, one observation or a batch ``[B, L]``.
- :class:`~sbi_vi.posteriors.batched.BatchedFit` — B independent q_b(θ) for a batch of
  observations ``X`` ``[B, L]`` fitted in one vectorised run (``train(x=X)`` on a posterior
  built with ``x_shape`` ``[L]`` or ``[1, L]``): a family with a batch of B parameter sets,
  answering with the return shapes of :class:`AmortizedFit` (``[n, B, D]`` draws, ``[B]``
  k-hat and evidence), so code written for one works with the other.

All implement :class:`FittedQ`, and ``VIPosterior`` holds one of them and delegates every
use of q to it (``sample``, ``sample_batched``, ``log_prob``, ``evaluate``, the initial
points of ``map``, ``refine``), instead of branching on a mode in every method. The public
methods keep the checks that do not depend on the fit (``sample_shape``, ``N``, the metric's
name, the MAP's cache) and pass the posterior itself as ``post``: its checks of θ and x, its
default x, potential and prior (:class:`~sbi_vi.posteriors.base.PosteriorBase`). No fit
imports the posterior class, so the package has no import cycle.

``VIPosterior.train`` chooses the fit at the one place a fit is made
(``VIPosterior._fit_for``: the single fit for one observation, a ``BatchedFit`` for a batch)
and serves it through ``_replace_fit`` as it serves the others; the methods that use q stay
as they are. ``metrics`` declares which quality-control metrics a fit's ``evaluate``
accepts, so ``train`` refuses an unavailable one before training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from sbi_vi.posteriors.base import PosteriorBase

__all__ = ["FittedQ"]


@runtime_checkable
class FittedQ(Protocol):
    """What a posterior needs from its fitted state (see the module docstring).

    Every method takes the posterior as ``post`` for its boundary checks (``_check_x``,
    ``_check_theta``), its default x and its potential; ``sample_shape`` and ``N`` arrive
    checked.
    """

    origin: str
    """What was fitted, for the warning when another training replaces it."""

    metrics: tuple[str, ...]
    """The quality-control metrics ``evaluate`` accepts (checked before a training)."""

    @property
    def module(self) -> nn.Module:
        """The trainable module (θ and x are cast to the dtype of its parameters)."""
        ...

    @property
    def status(self) -> str:
        """How q was trained, for ``repr`` (``"untrained"``, ``"amortised over x"``, ...)."""
        ...

    @property
    def trained(self) -> bool:
        """Whether q can be used (sampled, scored, evaluated)."""
        ...

    def distribution(self) -> Distribution:
        """q as one distribution over the support (``VIPosterior.q``): batch shape ``[B]``
        for B observations.

        Raises:
            ValueError: A q that needs x to be a distribution (amortised).
        """
        ...

    def sample(self, sample_shape: Size, x: Tensor | None, post: PosteriorBase) -> Tensor:
        """θ ~ q, ``[*sample_shape, D]`` (``[*sample_shape, B, D]`` for B observations)."""
        ...

    def sample_batched(
        self, sample_shape: Size, x: Tensor, max_batch_size: int, post: PosteriorBase
    ) -> Tensor:
        """θ ~ q(θ | x_b) for every row of x: ``[*sample_shape, B, D]``."""
        ...

    def log_prob(
        self, theta: Tensor, x: Tensor | None, post: PosteriorBase, track_gradients: bool
    ) -> Tensor:
        """log q(θ | x) by the shape rules of ``VIPosterior.log_prob``."""
        ...

    def importance_draws(
        self, N: int, x: Tensor | None, post: PosteriorBase
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, theta, log_p, log_q)``: N draws θ of q per observation (``[N, D]`` or
        ``[N, B, D]``) with their log densities (``[N]`` or ``[N, B]``); what
        ``evaluate``, ``log_evidence`` and ``sample(method="sir")`` use."""
        ...

    def evaluate(
        self,
        metric: str,
        N: int,
        x: Tensor | None,
        post: PosteriorBase,
        refine: Callable[..., Any] | None,
        refine_kwargs: dict | None,
    ) -> Any:
        """The quality diagnostic of q (``refine``: fine-tunes each failing observation)."""
        ...

    def map_inits(self, x: Tensor, num_init_samples: int, init_method: str) -> Tensor:
        """``num_init_samples`` draws of q at the checked observation x, ``[n, D]``."""
        ...

    def at_observation(self, x: Tensor, post: PosteriorBase) -> tuple[nn.Module, Tensor]:
        """A copy of q at one observation, as a family that ``train`` can fine-tune, and that
        observation checked, ``[1, L]`` (for ``refine``)."""
        ...

    def continued(self) -> nn.Module | None:
        """A copy of the conditional q that ``train_amortized`` continues (else ``None``)."""
        ...

    def to(self, device: str | torch.device) -> None:
        """Move q (and what it holds) to ``device``."""
        ...
