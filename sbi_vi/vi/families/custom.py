"""Families from user objects: a ready distribution, or a builder function.

* :class:`DistributionFamily` wraps a torch ``Distribution`` over unconstrained θ whose
  trainable tensors are given as ``parameters`` / ``modules`` (or found through its own
  ``parameters()`` / ``modules()``). It is pushed onto the support like every family.
* :class:`BuilderFamily` calls ``builder(event_shape, link_transform, device)`` once; the
  returned distribution lives on θ's support already (the builder received the link).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution
from torch.distributions.transforms import Transform, identity_transform

from sbi_vi.vi.families.base import Family, LinkedDistribution

__all__ = ["BuilderFamily", "DistributionFamily"]


def _collect(q: object, parameters: Iterable | None, modules: Iterable | None) -> list:
    params: list = []
    if parameters is not None:
        params.extend(parameters)
    if modules is not None:
        for m in modules:
            if not isinstance(m, nn.Module):
                raise TypeError(f"`modules` must hold torch nn.Modules, got {type(m).__name__}.")
            params.extend(m.parameters())
    if not params:
        for attr in ("parameters", "modules"):
            fn = getattr(q, attr, None)
            if callable(fn):
                found = list(fn())
                if attr == "modules":
                    found = [p for m in found for p in m.parameters()]
                params.extend(found)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"`parameters[{i}]` must be a torch Tensor, got {type(p).__name__}.")
    return params


class _UserTensors:
    """Mixin: ``parameters()`` yields the user's tensors (plain leaf tensors included)."""

    _user_tensors: list[Tensor]

    def _set_user_tensors(self, tensors: list[Tensor]) -> None:
        unique: dict[int, Tensor] = {}
        for t in tensors:
            if t.is_leaf and not t.requires_grad:
                t.requires_grad_(True)
            unique.setdefault(id(t), t)
        self._user_tensors = list(unique.values())

    def parameters(self, recurse: bool = True):
        yield from self._user_tensors


class DistributionFamily(_UserTensors, Family):
    """A user ``Distribution`` over unconstrained θ as a variational family.

    The distribution must read its trainable tensors when sampling (e.g. a distribution
    built from ``nn.Parameter`` objects), and it cannot take a context. Divergences that need
    log q with detached parameters (stick-the-landing, DReG) are not available for it.

    Args:
        q: The distribution, event shape ``[D]``, over unconstrained space.
        parameters: Its trainable tensors.
        modules: Modules holding its trainable tensors.
        link: Bijection from ℝᴰ onto the support.

    Raises:
        ValueError: If ``q`` has no trainable tensors, or a wrong event shape.
    """

    direction = "user"

    def __init__(
        self,
        q: Distribution,
        parameters: Iterable | None = None,
        modules: Iterable | None = None,
        link: Transform = identity_transform,
    ):
        if not isinstance(q, Distribution):
            raise TypeError(f"`q` must be a torch Distribution, got {type(q).__name__}.")
        if len(q.event_shape) != 1:
            raise ValueError(f"`q` must have event shape [D], got {tuple(q.event_shape)}.")
        super().__init__(q.event_shape[0], link)
        params = _collect(q, parameters, modules)
        if not params:
            raise ValueError(
                "`q` has no trainable tensors: pass them as `parameters=[...]` or "
                "`modules=[...]`, or give the distribution `parameters()`/`modules()` methods."
            )
        self._set_user_tensors(params)
        self.q = q

    def base(self, context: Tensor | None = None) -> Distribution:
        if context is not None:
            raise ValueError("A user-given distribution `q` cannot take a context `x`.")
        return self.q

    def forward(self, context: Tensor | None = None) -> Distribution:
        return LinkedDistribution(self.base(context), self.link)


class BuilderFamily(_UserTensors, Family):
    """A family from ``builder(event_shape, link_transform, device) -> Distribution``.

    The builder is called once, at construction; the distribution it returns lives on the
    support (it received the link) and its trainable tensors are found as for
    :class:`DistributionFamily`.

    Args:
        builder: The user's callable.
        event_size: Dimension ``D`` of θ.
        link: Bijection from ℝᴰ onto the support, handed to the builder.
        device: Device handed to the builder.
        parameters: Optional trainable tensors of the built distribution.
        modules: Optional modules of the built distribution.

    Raises:
        TypeError: If the builder does not return a ``Distribution``.
    """

    direction = "user"

    def __init__(
        self,
        builder: Callable[[Size, Transform, str], Distribution],
        event_size: int,
        link: Transform = identity_transform,
        device: str | torch.device = "cpu",
        parameters: Iterable | None = None,
        modules: Iterable | None = None,
    ):
        super().__init__(event_size, link)
        q = builder(Size([event_size]), link, str(device))
        if not isinstance(q, Distribution):
            raise TypeError(
                f"The callable `q` must return a torch Distribution, got {type(q).__name__}."
            )
        if q.event_shape != Size([event_size]):
            raise ValueError(
                f"The callable `q` returned event shape {tuple(q.event_shape)}; expected "
                f"({event_size},)."
            )
        params = _collect(q, parameters, modules)
        if not params:
            raise ValueError(
                "The distribution built by `q` has no trainable tensors: give it "
                "`parameters()` or pass `parameters=`/`modules=`."
            )
        self._set_user_tensors(params)
        self.q = q

    def base(self, context: Tensor | None = None) -> Distribution:
        if context is not None:
            raise ValueError("A distribution built by a callable `q` cannot take a context `x`.")
        return self.q

    def forward(self, context: Tensor | None = None) -> Distribution:
        return self.base(context)
