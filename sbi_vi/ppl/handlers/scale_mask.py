"""``scale`` and ``mask``: reweight or switch off the log densities of sample sites."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sbi_vi._checks import check_positive_float
from sbi_vi.ppl.runtime import Message, Messenger

__all__ = ["MaskMessenger", "ScaleMessenger", "mask", "scale"]


class ScaleMessenger(Messenger):
    """Multiplies the log density of every sample site inside by ``scale``.

    Args:
        fn: The model or guide.
        scale: A positive number, or a positive tensor broadcastable with the sites' batch
            shapes (e.g. ``[n]`` weights inside a plate).

    Example:
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import sample
        >>> from sbi_vi.ppl.handlers import trace
        >>> tr = trace(scale(lambda: sample("x", Normal(0.0, 1.0)), scale=2.0)).get_trace()
        >>> tr["x"].scale
        2.0
    """

    def __init__(self, fn: Callable[..., Any] | None = None, scale: float | Tensor = 1.0) -> None:
        super().__init__(fn)
        if isinstance(scale, Tensor):
            if not bool((scale > 0).all()):
                raise ValueError("`scale` must be positive everywhere.")
        else:
            scale = check_positive_float("scale", scale)
        self.scale = scale

    def process_message(self, msg: Message) -> None:
        if msg.type == "sample":
            msg.scale = self.scale * msg.scale


class MaskMessenger(Messenger):
    """Masks the log density of every sample site inside: masked entries add 0.

    Args:
        fn: The model or guide.
        mask: ``True``/``False``, or a bool tensor broadcastable with the sites' batch
            shapes. Combined with enclosing masks by logical and.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import sample
        >>> from sbi_vi.ppl.handlers import trace
        >>> model = mask(lambda: sample("x", Normal(0.0, 1.0)), mask=False)
        >>> trace(model).get_trace().log_prob_sum()
        tensor(0.)
    """

    def __init__(self, fn: Callable[..., Any] | None = None, mask: bool | Tensor = True) -> None:
        super().__init__(fn)
        if not isinstance(mask, bool) and not (
            isinstance(mask, Tensor) and mask.dtype == torch.bool
        ):
            raise TypeError(
                f"`mask` must be a bool or a bool tensor, got {type(mask).__name__}"
                f"{'' if not isinstance(mask, Tensor) else ' of dtype ' + str(mask.dtype)}; "
                "compare to get one, e.g. `mask=x > 0`."
            )
        self.mask = mask

    def process_message(self, msg: Message) -> None:
        if msg.type == "sample":
            msg.mask = self.mask if msg.mask is None else (self.mask & msg.mask)


def scale(fn: Callable[..., Any] | None = None, scale: float | Tensor = 1.0) -> ScaleMessenger:
    """A :class:`ScaleMessenger` (NumPyro's ``handlers.scale(fn, scale)``)."""
    return ScaleMessenger(fn, scale)


def mask(fn: Callable[..., Any] | None = None, mask: bool | Tensor = True) -> MaskMessenger:
    """A :class:`MaskMessenger` (NumPyro's ``handlers.mask(fn, mask)``)."""
    return MaskMessenger(fn, mask)
