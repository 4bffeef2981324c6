"""``LeanAdam``: torch's fused Adam kernel without the per-step Python layer around it.

An SVI step of a small model takes a few hundred microseconds of tensor work; torch's
``Adam.step`` adds ~80 µs of Python (the profiler record, the step hooks, ``_init_group``,
grouping tensors by device) on top of a ~4 µs fused kernel. ``LeanAdam`` *is* a
``torch.optim.Adam(fused=True)`` (same state, same ``state_dict``, same schedulers) whose
``step`` calls the same kernel directly when nothing needs the general path; with a
closure, step hooks, a tensor learning rate, AMSGrad, weight decay, ``maximize`` or a
parameter off the CPU it runs torch's own ``Adam.step``. The updates are bitwise those of
``torch.optim.Adam(fused=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from sbi_vi.vi.optim import fuses

__all__ = ["LeanAdam"]


class LeanAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` with a direct call of the fused kernel per step.

    Args:
        params: Parameters (or parameter groups) to optimise.
        lr: Learning rate (positive).
        betas: Coefficients of the running averages of the gradient and its square.
        eps: Term added to the denominator.
        **kwargs: Other ``torch.optim.Adam`` options (``weight_decay``, ``amsgrad``, ...);
            with any of them set, steps take torch's general path.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(3))
        >>> opt = LeanAdam([p], lr=0.1)
        >>> p.grad = torch.ones(3)
        >>> opt.step()
        >>> p.detach()
        tensor([-0.1000, -0.1000, -0.1000])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        if "fused" not in kwargs and "foreach" not in kwargs:  # the one fused policy
            params = list(params)
            tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
            kwargs["fused"] = fuses(LeanAdam, tensors)
        super().__init__(params, lr=lr, betas=betas, eps=eps, **kwargs)

    def _lean(self, group: dict[str, Any]) -> bool:
        return (
            group["fused"]
            and not group["amsgrad"]
            and not group["maximize"]
            and not group["capturable"]
            and not group["differentiable"]
            and group["weight_decay"] == 0
            and not isinstance(group["lr"], Tensor)
            and not isinstance(group["betas"][0], Tensor)
        )

    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One Adam update of every parameter with a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss (torch's general path).

        Returns:
            The closure's loss, or ``None``.
        """
        groups = self.param_groups
        if (
            closure is not None
            or self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks
            or not all(self._lean(g) for g in groups)
        ):
            return torch.optim.Adam.step(self, closure)
        batches = []
        for group in groups:
            lists = _gather(group, self.state)
            if lists is None:  # a parameter the fused CPU kernel does not take
                return torch.optim.Adam.step(self, closure)
            if lists[0]:
                batches.append((group, lists))
        with torch.no_grad():
            for group, (params, grads, avgs, sqs, steps) in batches:
                beta1, beta2 = group["betas"]
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(
                    params,
                    grads,
                    avgs,
                    sqs,
                    [],
                    steps,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=0.0,
                    eps=group["eps"],
                    maximize=False,
                )
        return None

    step.hooked = True  # type: ignore[attr-defined]  # the hooks are checked above


def _gather(group: dict[str, Any], state: Any) -> tuple[list[Tensor], ...] | None:
    """The kernel's lists for one group (state made as Adam makes it); ``None``: not lean."""
    params: list[Tensor] = []
    grads: list[Tensor] = []
    avgs: list[Tensor] = []
    sqs: list[Tensor] = []
    steps: list[Tensor] = []
    dtype = None
    for p in group["params"]:
        grad = p.grad
        if grad is None:
            continue
        if dtype is None:
            dtype = p.dtype
        if p.device.type != "cpu" or grad.is_sparse or p.dtype != dtype or p.is_complex():
            return None
        s = state[p]
        if not s:
            s["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        params.append(p)
        grads.append(grad)
        avgs.append(s["exp_avg"])
        sqs.append(s["exp_avg_sq"])
        steps.append(s["step"])
    return params, grads, avgs, sqs, steps
