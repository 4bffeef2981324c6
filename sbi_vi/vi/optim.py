"""The one way an optimizer is built in sbi_vi, with one policy for torch's fused Adam.

Every front end — VI and the PPL (:func:`~sbi_vi.vi.fit.make_optimizer`), the neural
estimators, the single-cell model — builds its optimizer with :func:`build_optimizer`:
an optimizer class, its keyword arguments, and one rule for the fused kernel (one kernel
for all parameters instead of a loop over them, the same update): Adam and AdamW (and
their subclasses) are fused when every parameter is a floating tensor on the CPU or a CUDA
device, unless the caller chose ``fused`` or ``foreach`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["build_optimizer", "fuses"]

_FUSED_CLASSES = (torch.optim.Adam, torch.optim.AdamW)
_FUSED_DEVICES = ("cpu", "cuda")


def fuses(optimizer_cls: type, params: list[Tensor]) -> bool:
    """Whether :func:`build_optimizer` gives ``optimizer_cls`` over ``params`` the fused
    kernel: an Adam or AdamW (or a subclass) over floating tensors on the CPU or CUDA."""
    return issubclass(optimizer_cls, _FUSED_CLASSES) and all(
        p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params
    )


def build_optimizer(
    params: Iterable[Tensor], optimizer_cls: type = torch.optim.Adam, **kwargs: Any
) -> torch.optim.Optimizer:
    """``optimizer_cls(params, **kwargs)``, fused where :func:`fuses` says so.

    Args:
        params: The trainable tensors (those with ``requires_grad``; others are dropped).
        optimizer_cls: A ``torch.optim.Optimizer`` class (default Adam).
        **kwargs: Its keyword arguments (``lr``, ``weight_decay``, ...); a ``fused`` or
            ``foreach`` given here is kept as it is.

    Returns:
        The optimizer.

    Raises:
        TypeError: ``optimizer_cls`` is not an optimizer class.
        ValueError: No parameter requires a gradient.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> build_optimizer([p], lr=0.1).defaults["fused"]
        True
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise TypeError(
            "`optimizer` must be a torch.optim.Optimizer class (e.g. torch.optim.Adam), got "
            f"{optimizer_cls!r}."
        )
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("There are no trainable parameters to optimise.")
    if "fused" not in kwargs and "foreach" not in kwargs and fuses(optimizer_cls, trainable):
        kwargs["fused"] = True
    return optimizer_cls(trainable, **kwargs)
