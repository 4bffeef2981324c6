"""B independent q's for a batch of observations: the fitted state behind ``train(x=X)``.

``VIPosterior.train`` with ``X`` of shape ``[B, L]`` (B ≥ 2, on a posterior whose
``x_shape`` says one observation is one row: see :meth:`PosteriorBase._is_batch
<sbi_vi.posteriors.base.PosteriorBase._is_batch>`) fits q_b(θ) ≈ p(θ | x_b) for every row in
one vectorised run:

- the family is batched (:func:`~sbi_vi.vi.families.batch_family`): every parameter gets a
  leading dim B, and ``family()`` is a distribution with batch shape ``[B]``;
- the potential pairs θ ``[particles, B, D]`` with the rows of X (``x_is_iid=False``), so the
  divergence works on ``[particles, B]`` log densities as for amortised VI;
- the loss is the **sum** over observations (the divergence's mean times B), so row b of
  the parameters gets exactly the gradient a separate fit on x_b would get, and gradients
  are clipped per observation (:class:`~sbi_vi.vi.fit.RowwiseClip`);
- convergence is per observation (:class:`~sbi_vi.vi.fit.BatchedConvergenceCheck`): once
  x_b has converged, its gradient is masked to zero and its parameters are held where they
  were (an optimizer with momentum would otherwise keep moving them); the run ends when
  every observation has converged or at ``max_num_iters``;
- the warm-up to the prior runs once on the unbatched family, whose state then starts every
  q_b; the likelihood is annealed in per observation (the tempered target is
  ``[particles, B]``), all observations on the same schedule since they start together.

:class:`BatchedFit` answers with the shapes of
:class:`~sbi_vi.posteriors.amortized.AmortizedFit` (``[n, B, D]`` draws, ``[B]`` k-hat,
``[B]`` evidence), so code written for one works with the other; an ``x`` passed to it must
consist of rows of X (then only those observations are answered for).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from sbi_vi._checks import check_positive_int
from sbi_vi.posteriors.amortized import AmortizedQuality, evaluate_per_observation
from sbi_vi.posteriors.base import PosteriorBase, check_sample_shape, log_prob_far_out
from sbi_vi.posteriors.quality import importance_log_weights
from sbi_vi.posteriors.rollback import restored_on_failure
from sbi_vi.posteriors.setup import warm_up
from sbi_vi.posteriors.single import prepare_optimizer
from sbi_vi.potentials.base import log_prior_or_zero
from sbi_vi.vi.divergences import Divergence
from sbi_vi.vi.families import Family, batch_family, member_of
from sbi_vi.vi.fit import BatchedConvergenceCheck, FitResult, RowwiseClip
from sbi_vi.vi.tempering import annealed_fit

__all__ = ["BatchedFit"]


class BatchedFit:
    """B independent q_b(θ), one per row of the observations ``X`` ``[B, L]``.

    Args:
        template: The unbatched family every q_b starts from (copied, not changed).
        x: The checked observations ``[B, L]``, B ≥ 2.
        warm: Whether the template starts away from the prior (trained before): then no
            warm-up and no annealing.

    Attributes:
        family: The batched family (parameters ``[B, ...]``; ``family()`` has batch ``[B]``).
        trained_on: ``x`` once trained (``None`` before).
        converged_at: Per observation, the iteration of the last training at which it
            converged, ``[B]`` (``-1``: ran to ``max_num_iters``; ``None`` before training).
    """

    origin = "the q's trained for a batch of observations by train()"
    serving = "q_b serves observation b of x (and only those observations)"
    metrics = ("psis",)

    def __init__(self, template: Family, x: Tensor, *, warm: bool):
        self._template = template
        self.family = batch_family(template, x.shape[0])
        self.x = x
        self.trained_on: Tensor | None = None
        self.converged_at: Tensor | None = None
        self.warm = warm
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.optimizer_key: tuple | None = None

    # ------------------------------------------------------------------ state
    @property
    def module(self) -> nn.Module:
        """The batched family."""
        return self.family

    @property
    def batch_size(self) -> int:
        """The number B of observations."""
        return int(self.x.shape[0])

    @property
    def trained(self) -> bool:
        """Whether the q's have been trained."""
        return self.trained_on is not None

    @property
    def status(self) -> str:
        """``"trained on B observations"`` or ``"untrained"``."""
        return f"trained on {self.batch_size} observations" if self.trained else "untrained"

    def serves(self, x: Tensor) -> bool:
        """Whether this fit holds the q's of exactly the observations ``x`` ``[B, L]``."""
        return x.shape == self.x.shape and torch.equal(x, self.x)

    def to(self, device: str | torch.device) -> None:
        """Move the family and the observations; the optimizer is rebuilt on next training."""
        self.family.to(device)
        self._template.to(device)
        self.x = self.x.to(device)
        if self.trained_on is not None:
            self.trained_on = self.trained_on.to(device)
        self.optimizer = None

    def rows(self, x: Tensor | None, post: PosteriorBase) -> Tensor | None:
        """Which q's ``x`` asks for: ``None`` (all) for ``x=None``, else the index into X of
        every row of x, ``[K]``.

        Raises:
            NotTrainedError: If the q's are not trained.
            ValueError: If a row of ``x`` is not one of the trained observations.
        """
        from sbi_vi.errors import NotTrainedError

        if self.trained_on is None:
            raise NotTrainedError("q is not trained yet: call `train(x)` first.")
        if x is None:
            return None
        x = post._check_x(x)
        same = torch.isclose(x.unsqueeze(1), self.trained_on.unsqueeze(0)).all(-1)  # [K, B]
        missing = torch.nonzero(~same.any(1)).flatten()
        if missing.numel():
            raise ValueError(
                f"`x` must consist of the {self.batch_size} observations these q's were "
                f"trained for (rows of the x of train()); row {int(missing[0])} of x (shape "
                f"{tuple(x.shape)}) is not one of them. Call train(x) for new observations."
            )
        return same.to(torch.uint8).argmax(1)

    def distribution(self) -> Distribution:
        """The B q's as one distribution of batch shape ``[B]``."""
        return self.rows_q(None)

    def rows_q(self, index: Tensor | None) -> Distribution:
        """The q's of the rows ``index`` (``None``: all B), a distribution of batch ``[K]``."""
        if index is None:
            return self.family()
        params = {name: p[index] for name, p in self.family.named_parameters()}
        return torch.func.functional_call(self.family, params, (), strict=False)

    # ------------------------------------------------------------------ using the q's
    def sample(self, sample_shape: Size, x: Tensor | None, post: PosteriorBase) -> Tensor:
        """``[*sample_shape, B, D]`` (x ``None``: every observation), ``[*sample_shape, K, D]``
        for K rows of X, ``[*sample_shape, D]`` for one."""
        index = self.rows(x, post)
        with torch.no_grad():
            theta = self.rows_q(index).sample(sample_shape)
        return theta.squeeze(-2) if index is not None and index.numel() == 1 else theta

    def sample_batched(
        self, sample_shape: Size, x: Tensor, max_batch_size: int, post: PosteriorBase
    ) -> Tensor:
        """``[*sample_shape, K, D]`` for K rows of X (one pass: the q's are small)."""
        sample_shape = check_sample_shape(sample_shape)
        check_positive_int("max_sampling_batch_size", max_batch_size)
        index = self.rows(x, post)
        with torch.no_grad():
            return self.rows_q(index).sample(sample_shape)

    def log_prob(
        self, theta: Tensor, x: Tensor | None, post: PosteriorBase, track_gradients: bool
    ) -> Tensor:
        """log q_b(θ): θ ``[*n, K, D]`` under the K q's (``[*n, K]``), or θ ``[N, D]`` paired
        or broadcast with the K observations as for an amortised q.

        Raises:
            ValueError: θ of a shape that fits neither rule (the message gives both).
        """
        index = self.rows(x, post)
        k = self.batch_size if index is None else int(index.numel())
        theta = post._check_theta(theta)
        if theta.ndim >= 3 and theta.shape[-2] == k:
            value, squeeze = theta, None
        elif theta.ndim <= 2 and (theta.ndim == 1 or theta.shape[0] in (1, k)):
            value, squeeze = theta.reshape(-1, theta.shape[-1]), None  # paired or broadcast
        elif k == 1:  # [*N, D] under one q
            value, squeeze = theta.unsqueeze(-2), -1
        else:
            raise ValueError(
                f"`theta` must have shape [*n, {k}, D] (one column per observation of x) or "
                f"[N, D] with N equal to 1 or {k} (broadcast or paired with the rows of x); "
                f"got {tuple(theta.shape)}."
            )
        if value.shape[:-1].numel() == 0:
            return value.new_zeros(theta.shape[:-1])
        with torch.set_grad_enabled(track_gradients):
            out = log_prob_far_out(self.rows_q(index), value)
        if squeeze is not None:
            return out.squeeze(squeeze)
        if theta.ndim <= 2 and k == 1:  # one observation: [N] (or [] for θ [D])
            out = out.reshape(-1)
        return out[0] if theta.ndim == 1 and out.numel() == 1 else out

    def importance_draws(
        self, N: int, x: Tensor | None, post: PosteriorBase
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, theta, log_p, log_q)``: N draws per observation ``[N, K, D]``, log
        densities ``[N, K]``."""
        index = self.rows(x, post)
        x = self.trained_on if index is None else self.trained_on[index]
        post.potential_fn.set_x(x, x_is_iid=False)
        q = self.rows_q(index)
        chunk = max(1, 100_000 // x.shape[0])
        theta, log_p, log_q = importance_log_weights(
            lambda _: q, post.potential_fn, N, None, chunk
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
        """PSIS k-hat and ESS per observation (``prop`` is refused), as for an amortised q."""
        what = "Each q of a batch of observations"
        return evaluate_per_observation(self, what, metric, N, x, post, refine, refine_kwargs)

    def map_inits(self, x: Tensor, num_init_samples: int, init_method: str) -> Tensor:
        """Draws of the q_b of the one checked observation x ``[1, L]``, ``[n, D]``.

        Raises:
            NotTrainedError: If x is not one of the trained observations.
        """
        from sbi_vi.errors import NotTrainedError

        n = check_positive_int("num_init_samples", num_init_samples)
        same = torch.isclose(x, self.trained_on).all(-1) if self.trained_on is not None else None
        if same is None or x.shape[0] != 1 or not bool(same.any()):
            raise NotTrainedError(
                f"init_method={init_method!r} needs a q trained on this x; call train(x) "
                "first or use init_method='prior'."
            )
        with torch.no_grad():
            return self.rows_q(same.nonzero()[0]).sample(Size((n,))).squeeze(-2)

    def at_observation(self, x: Tensor, post: PosteriorBase) -> tuple[nn.Module, Tensor]:
        """A copy of the q_b of one observation as an unbatched family, and x ``[1, L]``."""
        index = self.rows(x, post)
        if index.numel() != 1:
            raise ValueError(f"refine() takes one observation; got {index.numel()} rows of x.")
        return member_of(self.family, int(index[0])), self.trained_on[index]

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
        """One training call of the B q's (the arguments of :meth:`SingleFit.fit`).

        A call that raises or is interrupted leaves the q's, the warm flag and the
        optimizer as they were.

        Raises:
            ValueError: If ``x`` is not the batch this fit was built for.
        """
        if not self.serves(x):
            raise ValueError("A BatchedFit trains the observations it was built for only.")
        fresh = self.trained_on is None and not self.warm
        potential.set_x(x, x_is_iid=False)
        with restored_on_failure(self):
            if fresh and warm_up_rounds > 0:
                warm_up(
                    self._template,
                    prior,
                    rounds=warm_up_rounds,
                    n_particles=n_particles,
                    learning_rate=learning_rate,
                    clip_value=clip_value,
                )
                self._start_from_template()
            self.warm = True
            prepare_optimizer(self, learning_rate, gamma, options, reset_optimizer)
            stopping = (
                BatchedConvergenceCheck(
                    self.batch_size, eps=options.get("eps", 1e-3), min_num_iters=min_num_iters
                )
                if check_for_convergence
                else None
            )
            num_annealing = min(annealing_steps, max_num_iters) if fresh else 0
            with _held_when_converged(self.family, self.optimizer, stopping):
                result = annealed_fit(
                    self._loss_closure(divergence, n_particles, potential, stopping),
                    potential,
                    lambda theta: log_prior_or_zero(prior, theta),
                    num_annealing,
                    self.optimizer,
                    scheduler=self.scheduler,
                    max_num_iters=max_num_iters,
                    clip_value=None,
                    clip_gradients=RowwiseClip(clip_value),
                    stopping=stopping,
                    retain_graph=bool(options.get("retain_graph", False)),
                    show_progress_bar=show_progress_bar,
                    description=description,
                )
        potential.set_x(x, x_is_iid=False)  # the closure may have cut it to active rows
        self.trained_on = x
        if stopping is None:
            self.converged_at = torch.full((self.batch_size,), -1, dtype=torch.long)
        else:
            at = stopping.converged_at
            self.converged_at = torch.where(at >= 0, at + num_annealing, -1)
        return result

    def _start_from_template(self) -> None:
        """Copy the (warmed-up) template's parameters into every row of the family."""
        with torch.no_grad():
            pairs = zip(self.family.parameters(), self._template.parameters(), strict=True)
            for batched, single in pairs:
                batched.copy_(single.expand_as(batched))

    def _loss_closure(
        self,
        divergence: Divergence,
        n_particles: int,
        potential: Any,
        stopping: BatchedConvergenceCheck | None,
    ) -> Callable[[Callable[[Tensor], Tensor]], Callable[[], tuple[Tensor, Tensor]]]:
        """The loss of the observations still training: Σ_b loss_b over the active rows.

        Once some have converged, only the active rows are drawn and scored (the family's
        parameters indexed by them, the potential's x cut to them), so a run whose
        observations converge at different times does less work as they do.
        """
        family, x = self.family, self.x
        rows = _ActiveRows(family)
        last = torch.zeros(self.batch_size, dtype=x.dtype)  # last loss of each row
        current: dict[str, Tensor | None] = {"index": None}

        def for_target(log_p: Callable[[Tensor], Tensor]) -> Callable[[], tuple[Tensor, Tensor]]:
            def closure() -> tuple[Tensor, Tensor]:
                if stopping is None or bool(stopping.active.all()):
                    out = divergence(family, log_p, n_particles)
                    last.copy_(out.value.detach().to(last))
                    return out.loss * self.batch_size, out.value  # Σ_b loss_b; value [B]
                index = stopping.active.nonzero().flatten().to(x.device)
                if current["index"] is None or not torch.equal(current["index"], index):
                    potential.set_x(x[index], x_is_iid=False)
                    rows.index, current["index"] = index, index
                out = divergence(rows, log_p, n_particles)
                last[index.cpu()] = out.value.detach().to(last)
                return out.loss * index.numel(), last.clone()

            return closure

        return for_target


class _ActiveRows(nn.Module):
    """The rows ``index`` of a batched family as a family: ``forward()`` is the q of those
    rows (its parameters are the whole family's, indexed, so gradients reach those rows)."""

    def __init__(self, family: nn.Module):
        super().__init__()
        self.family = family
        self.index: Tensor | None = None

    def forward(self, context: Tensor | None = None) -> Distribution:
        params = {name: p[self.index] for name, p in self.family.named_parameters()}
        return torch.func.functional_call(self.family, params, (context,), strict=False)


@contextlib.contextmanager
def _held_when_converged(
    family: nn.Module, optimizer: Any, stopping: BatchedConvergenceCheck | None
) -> Iterator[None]:
    """While the block runs, observations that ``stopping`` marks converged stop training.

    Their gradient rows are zeroed (a hook on each parameter), and their parameter rows are
    put back after every optimizer step to the values they had when they converged: with
    zero gradient, Adam's momentum would still move them.
    """
    if stopping is None:
        yield
        return
    params = [p for p in family.parameters() if p.requires_grad]
    held: dict[int, list[Tensor]] = {}

    def mask(grad: Tensor) -> Tensor:
        active = stopping.active.to(grad.device)
        return grad * active.reshape(-1, *([1] * (grad.ndim - 1))).to(grad.dtype)

    def before_step(*_: Any) -> None:
        for b in torch.nonzero(~stopping.active).flatten().tolist():
            if b not in held:
                held[b] = [p.detach()[b].clone() for p in params]

    def after_step(*_: Any) -> None:
        with torch.no_grad():
            for b, values in held.items():
                for p, value in zip(params, values, strict=True):
                    p[b] = value

    handles = [p.register_hook(mask) for p in params]
    handles.append(optimizer.register_step_pre_hook(before_step))
    handles.append(optimizer.register_step_post_hook(after_step))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        after_step()
