"""Maximum a posteriori by gradient ascent in unconstrained space."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions.transforms import Transform
from tqdm.auto import tqdm

from sbi_vi._checks import check_positive_float, check_positive_int

__all__ = ["gradient_ascent"]


def gradient_ascent(
    potential: Callable[[Tensor], Tensor],
    inits: Tensor,
    transform: Transform,
    *,
    num_iter: int = 1000,
    num_to_optimize: int = 100,
    learning_rate: float = 0.01,
    save_best_every: int = 10,
    show_progress_bar: bool = False,
) -> tuple[Tensor, Tensor]:
    """Maximise ``potential`` from the best ``num_to_optimize`` of ``inits``.

    The optimisation runs on ``u = transform(θ)`` so it never leaves the support; the
    objective is the potential of θ itself (the MAP in θ-space, no Jacobian term).

    Args:
        potential: θ ``[*, D]`` → log p̃(θ) ``[*]``.
        inits: Candidate starting points θ, shape ``[N, D]``.
        transform: Map from the support to unconstrained space.
        num_iter: Adam steps.
        num_to_optimize: How many of the best candidates to optimise in parallel.
        learning_rate: Adam learning rate.
        save_best_every: Record the best point every this many steps.
        show_progress_bar: Show a tqdm bar.

    Returns:
        The best θ ``[D]`` and its potential (scalar).
    """
    num_iter = check_positive_int("num_iter", num_iter)
    num_to_optimize = check_positive_int("num_to_optimize", num_to_optimize)
    learning_rate = check_positive_float("learning_rate", learning_rate)
    save_best_every = check_positive_int("save_best_every", save_best_every)
    with torch.no_grad():
        scores = potential(inits)
        scores = torch.nan_to_num(scores, nan=float("-inf"))
        top = torch.topk(scores, min(num_to_optimize, len(inits))).indices
        u = transform(inits[top]).clone()
    u.requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=learning_rate)
    best_theta, best_value = inits[top[0]].clone(), scores[top[0]].clone()
    for it in tqdm(range(num_iter), disable=not show_progress_bar, desc="MAP", leave=False):
        optimizer.zero_grad(set_to_none=True)
        values = potential(transform.inv(u))
        finite = torch.isfinite(values)
        loss = -torch.where(finite, values, torch.zeros_like(values)).sum()
        loss.backward()
        u.grad = torch.nan_to_num(u.grad, nan=0.0, posinf=0.0, neginf=0.0)
        optimizer.step()
        if it % save_best_every == 0 or it == num_iter - 1:
            with torch.no_grad():
                theta = transform.inv(u)
                values = torch.nan_to_num(potential(theta), nan=float("-inf"))
                i = int(values.argmax())
                if values[i] > best_value:
                    best_theta, best_value = theta[i].clone(), values[i].clone()
    return best_theta.detach(), best_value.detach()
