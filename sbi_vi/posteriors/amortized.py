"""q(θ | x) for every x at once: the fitted state behind ``VIPosterior.train_amortized``.

``train_amortized`` (:mod:`sbi_vi.posteriors.amortized_training`) fits a conditional family
to the potential across the observations of a simulated set: the objective is the divergence
of the posterior's ``vi_method`` (rKL, i.e. the ELBO, by default; IW and alpha work too) on
``[particles, observations]`` log densities from the same divergence implementations and
the same fit loop as single-observation VI, with early stopping on a held-out split.
:class:`AmortizedFit` holds the result and answers for any x; per-observation PSIS k-hat
(:class:`AmortizedQuality`) shows which observations it serves badly, and
``VIPosterior.refine`` fine-tunes q for one of them. See :mod:`sbi_vi.posteriors.fitted`
for the interface it implements.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from sbi_vi._checks import check_positive_int
from sbi_vi.diagnostics import psis
from sbi_vi.posteriors.base import PosteriorBase, check_sample_shape, log_prob_far_out
from sbi_vi.posteriors.conditional import (
    AtObservation,
    ConditionalQ,
    broadcast_theta_x,
    sample_conditional,
)
from sbi_vi.posteriors.quality import MIN_ESS_FRACTION, importance_log_weights

__all__ = ["AmortizedFit", "AmortizedQuality", "per_observation_quality"]


@dataclass(frozen=True, eq=False)
class AmortizedQuality:
    """Per-observation quality of an amortised q: the result of ``evaluate(x=...)``.

    Attributes:
        khat: PSIS k-hat of q(θ | x_b) against the potential of x_b, shape ``[B]``.
        ess: Effective sample size of the smoothed importance weights, shape ``[B]``.
        reliable: ``khat ≤ 0.7`` and ESS ≥ 1 % of the draws, shape ``[B]`` (bool).
        psis: The batched :class:`~sbi_vi.diagnostics.PSISResult`.
        refined: With ``refine=True``: for each unreliable observation (its index into x),
            a single-observation :class:`~sbi_vi.posteriors.VIPosterior` fine-tuned from
            the amortised q.
    """

    khat: Tensor
    ess: Tensor
    reliable: Tensor
    psis: Any
    refined: dict[int, Any] = field(default_factory=dict)

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


def per_observation_quality(
    log_w: Tensor,
    x: Tensor,
    refine: Callable[..., Any] | None,
    refine_kwargs: dict | None,
) -> AmortizedQuality:
    """PSIS per observation of log weights ``[N, B]`` for x ``[B, L]``.

    Args:
        log_w: ``log p̃ − log q`` of N draws per observation.
        x: The observations.
        refine: Called as ``refine(x_b, **refine_kwargs)`` for every unreliable observation
            (``None``: no refinement).
        refine_kwargs: Its keyword arguments.
    """
    result = psis(log_w)
    khat = torch.as_tensor(result.khat).reshape(-1)
    ess = torch.as_tensor(result.ess).reshape(-1)
    reliable = (khat <= 0.7) & (ess >= MIN_ESS_FRACTION * log_w.shape[0])
    refined = {}
    if refine is not None:
        for i in torch.nonzero(~reliable).flatten().tolist():
            refined[i] = refine(x[i], **(refine_kwargs or {}))
    return AmortizedQuality(khat, ess, reliable, result, refined)


def evaluate_per_observation(
    fitted: Any,
    what: str,
    metric: str,
    N: int,
    x: Tensor | None,
    post: PosteriorBase,
    refine: Callable[..., Any] | None,
    refine_kwargs: dict | None,
) -> AmortizedQuality:
    """``evaluate`` of a fit that serves many observations (amortised or batched): PSIS
    k-hat and ESS of ``fitted.importance_draws`` per observation.

    Raises:
        ValueError: For ``metric`` other than ``"psis"`` (``what`` names the fit).
    """
    if metric != "psis":
        raise ValueError(
            f"{what} is evaluated per observation with quality_control_metric='psis'; "
            f"got {metric!r}."
        )
    x, _, log_p, log_q = fitted.importance_draws(N, x, post)
    return per_observation_quality(log_p - log_q, x, refine, refine_kwargs)


class AmortizedFit:
    """A trained q(θ | x): answers for one observation ``[L]``/``[1, L]`` or a batch ``[B, L]``.

    Args:
        q: The trained conditional family.
    """

    origin = "the amortised q(θ | x) of train_amortized()"
    status = "amortised over x"
    metrics = ("psis",)
    trained = True

    def __init__(self, q: ConditionalQ):
        self.conditional = q

    def __setstate__(self, state: dict) -> None:
        if "q" in state:  # saved before the attribute was renamed
            state["conditional"] = state.pop("q")
        self.__dict__.update(state)

    @property
    def module(self) -> nn.Module:
        """The conditional family."""
        return self.conditional

    def distribution(self) -> Distribution:
        """Refused: q(θ | x) is a distribution only at an x.

        Raises:
            ValueError: Always, naming what to use instead.
        """
        raise ValueError(
            "After train_amortized(), q(θ | x) depends on x: draw with sample(shape, x=x), "
            "score with log_prob(theta, x=x), or use posterior.family (the conditional "
            "module) directly."
        )

    def to(self, device: str | torch.device) -> None:
        """Move q to ``device``."""
        self.conditional.to(device)

    def require(self, x: Tensor | None, post: PosteriorBase) -> Tensor:
        """The checked observations ``[B, L]`` (default: the posterior's default x).

        Raises:
            ValueError: No ``x`` and no default x, or a bad ``x``.
        """
        if x is None:
            if post._x is None:
                raise ValueError(
                    "An amortised q needs `x`: pass `x=` or call `set_default_x(x)` first."
                )
            return post._x
        return post._check_x(x)

    # ------------------------------------------------------------------ using q(θ | x)
    def sample(self, sample_shape: Size, x: Tensor | None, post: PosteriorBase) -> Tensor:
        """``[*sample_shape, D]`` for one observation, ``[*sample_shape, B, D]`` for B."""
        x = self.require(x, post)
        theta = sample_conditional(self.conditional, Size(sample_shape), x, 10_000)
        return theta.squeeze(-2) if x.shape[0] == 1 else theta

    def sample_batched(
        self, sample_shape: Size, x: Tensor, max_batch_size: int, post: PosteriorBase
    ) -> Tensor:
        """``[*sample_shape, B, D]`` for x ``[B, L]``, at most ~``max_batch_size`` per pass."""
        sample_shape = check_sample_shape(sample_shape)
        batch = check_positive_int("max_sampling_batch_size", max_batch_size)
        x = post._check_x(x)
        return sample_conditional(self.conditional, sample_shape, x, batch)

    def log_prob(
        self, theta: Tensor, x: Tensor | None, post: PosteriorBase, track_gradients: bool
    ) -> Tensor:
        """log q(θ | x): θ ``[N, D]`` paired or broadcast with x ``[B, L]``, θ ``[*n, B, D]``
        under the q of each row (``[*n, B]``, the shape of ``sample``), or ``[*N, D]`` under
        one x."""
        x = self.require(x, post)
        theta = post._check_theta(theta)
        if theta.ndim > 2 and x.shape[0] != 1:
            if theta.shape[-2] != x.shape[0]:
                raise ValueError(
                    f"`theta` of shape {tuple(theta.shape)} needs one observation or a column "
                    f"per row of x ([*n, {x.shape[0]}, D]); with {x.shape[0]} rows of x, pass "
                    "θ as [*n, B, D] or [N, D] (paired or broadcast with x)."
                )
            if theta.shape[:-1].numel() == 0:
                return theta.new_zeros(theta.shape[:-1])
            with torch.set_grad_enabled(track_gradients):
                return log_prob_far_out(self.conditional(x), theta)
        flat, x = broadcast_theta_x(theta.reshape(-1, theta.shape[-1]), x)
        if flat.shape[0] == 0:  # as sample((0,)): an empty answer, no network pass
            return flat.new_zeros(theta.shape[:-1])
        with torch.set_grad_enabled(track_gradients):
            out = log_prob_far_out(self.conditional(x), flat)
        if theta.ndim > 2:  # [*N, D] under one x
            return out.reshape(theta.shape[:-1])
        return out[0] if theta.ndim == 1 and out.shape[0] == 1 else out

    def importance_draws(
        self, N: int, x: Tensor | None, post: PosteriorBase
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, theta, log_p, log_q)``: N draws of q(θ | x_b) per observation
        ``[N, B, D]``, log densities ``[N, B]``."""
        x = self.require(x, post)
        post.potential_fn.set_x(x, x_is_iid=False)
        chunk = max(1, 100_000 // x.shape[0])
        theta, log_p, log_q = importance_log_weights(
            self.conditional, post.potential_fn, N, x, chunk
        )
        return x, theta, log_p, log_q

    def evaluate(
        self,
        metric: str,
        N: int,
        x: Tensor | None,
        post: PosteriorBase,
        refine: Callable[..., Any] | None,
        refine_kwargs: dict | None,
    ) -> AmortizedQuality:
        """PSIS k-hat and ESS per observation (``prop`` is refused)."""
        return evaluate_per_observation(
            self, "An amortised q", metric, N, x, post, refine, refine_kwargs
        )

    def map_inits(self, x: Tensor, num_init_samples: int, init_method: str) -> Tensor:
        """Draws of q(θ | x) for one checked observation x ``[1, L]``."""
        if x.shape[0] != 1:
            raise ValueError(f"map() takes one observation; got {x.shape[0]} rows of x.")
        n = check_positive_int("num_init_samples", num_init_samples)
        return sample_conditional(self.conditional, Size((n,)), x, 10_000).squeeze(-2)

    def at_observation(self, x: Tensor, post: PosteriorBase) -> tuple[nn.Module, Tensor]:
        """A copy of q(θ | x) with the context fixed at one observation ``[L]``/``[1, L]``,
        and that observation checked, ``[1, L]``."""
        x = post._check_x(x)
        if x.shape[0] != 1:
            raise ValueError(f"refine() takes one observation; got {x.shape[0]} rows of x.")
        return AtObservation(copy.deepcopy(self.conditional), x[0]), x

    def continued(self) -> ConditionalQ | None:
        """A copy of q that further training may change (a failed call keeps this one)."""
        return copy.deepcopy(self.conditional)
