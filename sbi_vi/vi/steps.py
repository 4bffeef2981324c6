"""One optimisation step: backpropagate, clip, and step unless the loss or a gradient is not
finite — with the host deciding (:func:`gradient_step`) or the device (:func:`deferred_step`).

:func:`gradient_step` reads the loss and the gradient norm back to the host to decide
whether to step: free on the CPU, but a synchronisation per step on an accelerator, where
the host must wait for the step's kernels before queueing the next minibatch's.
:func:`deferred_step` hands the decision to the fused Adam kernel instead (its
``found_inf`` input, as :class:`torch.amp.GradScaler` uses it), so that nothing of the
step is read back; :func:`fit <sbi_vi.vi.fit.fit>` takes it where
:func:`steps_on_device` says the optimizer allows it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["deferred_step", "gradient_step", "steps_on_device", "zero_grad"]

_FOUND_INF_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)


def gradient_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    clip_value: float | None = None,
    retain_graph: bool = False,
    clip_gradients: Callable[[list[Tensor]], bool] | None = None,
) -> bool:
    """Zero grads, backpropagate, clip, and step unless the loss or a gradient is not finite.

    Args:
        loss: The scalar to backpropagate.
        optimizer: The optimizer to step.
        clip_value: Largest joint gradient norm (``None``: no clipping).
        retain_graph: Passed to ``backward``.
        clip_gradients: Replaces the norm clipping: clips the gradients of the parameters
            in place and returns whether to step (e.g. :class:`~sbi_vi.vi.fit.RowwiseClip`).

    Returns:
        Whether the step was taken.
    """
    zero_grad(optimizer)
    if not _all_finite_scalar(loss):
        return False
    loss.backward(retain_graph=retain_graph)
    params = _params_with_grad(optimizer)
    if clip_gradients is not None:
        finite = clip_gradients(params)
    elif clip_value is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_value)
        finite = bool(torch.isfinite(norm))
    else:
        finite = _grads_finite(params)
    if not finite:
        zero_grad(optimizer)
        return False
    optimizer.step()
    return True


def deferred_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    clip_value: float | None = None,
    retain_graph: bool = False,
) -> Tensor:
    """:func:`gradient_step` without reading anything back to the host.

    The step is always queued; the fused Adam kernel skips it (and does not count it)
    when the loss or the gradient norm is not finite. ``optimizer`` must pass
    :func:`steps_on_device`.

    Args:
        loss: The scalar to backpropagate.
        optimizer: A fused ``torch.optim.Adam`` or ``AdamW``.
        clip_value: Largest joint gradient norm (``None``: no clipping).
        retain_graph: Passed to ``backward``.

    Returns:
        Whether the step was taken: a 0-d bool tensor on the parameters' device.
    """
    zero_grad(optimizer)
    loss.backward(retain_graph=retain_graph)
    params = _params_with_grad(optimizer)
    if not params:
        return torch.isfinite(loss.detach()).all()
    if clip_value is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_value)
    else:
        norm = torch.stack(torch._foreach_norm([p.grad for p in params], 2.0)).sum()
    taken = torch.isfinite(norm) & torch.isfinite(loss.detach()).all()
    optimizer.found_inf = (~taken).to(torch.float32)  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]
    return taken


def steps_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :func:`deferred_step` serves ``optimizer`` and is worth it: a fused Adam or
    AdamW (their kernels take ``found_inf``) over parameters on one accelerator (on the
    CPU the host reads a value for free)."""
    if type(optimizer) not in _FOUND_INF_OPTIMIZERS:
        return False
    if not all(group.get("fused") for group in optimizer.param_groups):
        return False
    devices = {p.device for group in optimizer.param_groups for p in group["params"]}
    return len(devices) == 1 and next(iter(devices)).type != "cpu"


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)``, without its profiler record for torch's own."""
    if type(optimizer).zero_grad is not _BASE_ZERO_GRAD:
        optimizer.zero_grad(set_to_none=True)
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad = None


_BASE_ZERO_GRAD = torch.optim.Optimizer.zero_grad


def _params_with_grad(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _all_finite_scalar(loss: Tensor) -> bool:
    """``bool(torch.isfinite(loss))``; a one-element CPU tensor is read without a kernel."""
    if loss.numel() == 1 and loss.device.type == "cpu" and loss.is_floating_point():
        return math.isfinite(loss.item())
    return bool(torch.isfinite(loss))


def _grads_finite(params: list[Tensor]) -> bool:
    """Whether every gradient of ``params`` is finite (one fused reduction where possible).

    The Euclidean norms are NaN or infinite when an entry is (or when the sum of squares
    overflows, for gradients beyond ~1e19 in float32: also a step not to take); on the
    CPU torch's fused 2-norm is much faster than its max-abs norm.
    """
    grads = [p.grad for p in params]
    if not grads:
        return True
    if all(
        g.device.type == "cpu" and g.numel() > 0 and not g.is_sparse and g.is_floating_point()
        for g in grads
    ):
        norms = torch._foreach_norm(grads, 2.0)
        return math.isfinite(torch.stack(norms).sum().item())
    return all(bool(torch.isfinite(g).all()) for g in grads)
