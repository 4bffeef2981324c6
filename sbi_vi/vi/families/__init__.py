"""Variational families: lazy modules whose ``forward(context=None)`` returns q.

``build_family`` turns every accepted ``q`` — a name of :data:`FAMILY_NAMES`, a user
``Distribution``, a builder callable, or a ready :class:`Family` — into a :class:`Family`.
A new family is one class plus one entry in :data:`FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal, get_args

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.distributions.transforms import Transform, identity_transform

from sbi_vi.vi.families.base import Family, LinkedDistribution, rsample_and_log_prob
from sbi_vi.vi.families.batched import batch_family, batchable_names, member_of
from sbi_vi.vi.families.custom import BuilderFamily, DistributionFamily
from sbi_vi.vi.families.flows import FLOW_BUILDERS, FlowFamily
from sbi_vi.vi.families.gaussian import DiagonalGaussian, Gaussian, GaussianDistribution

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "BuilderFamily",
    "DiagonalGaussian",
    "DistributionFamily",
    "Family",
    "FamilyName",
    "FlowFamily",
    "Gaussian",
    "GaussianDistribution",
    "LinkedDistribution",
    "batch_family",
    "batchable_names",
    "build_family",
    "member_of",
    "rsample_and_log_prob",
]


def _flow(name: str) -> Callable[..., Family]:
    return partial(FlowFamily, name)


FAMILIES: dict[str, Callable[..., Family]] = {
    **{name: _flow(name) for name in FLOW_BUILDERS},
    "gaussian": Gaussian,
    "gaussian_diag": DiagonalGaussian,
}
"""Family constructors by name: ``ctor(event_size, link, shift, scale, *, context_size, ...)``."""

FamilyName = Literal[
    "maf", "nsf", "naf", "unaf", "nice", "sospf", "gf", "gaussian", "gaussian_diag"
]
"""The names accepted as ``q``, for type hints (the keys of :data:`FAMILIES`)."""

FAMILY_NAMES: tuple[str, ...] = get_args(FamilyName)
"""The names accepted as ``q``."""

if set(FAMILY_NAMES) != set(FAMILIES):  # pragma: no cover - a registry edit forgot the other
    raise ImportError(f"FamilyName {FAMILY_NAMES} and FAMILIES {tuple(FAMILIES)} disagree.")


def build_family(
    q: str | Distribution | Callable | Family,
    *,
    event_size: int,
    link: Transform = identity_transform,
    shift: Tensor | None = None,
    scale: Tensor | None = None,
    context_size: int = 0,
    num_transforms: int = 5,
    hidden_features: int = 50,
    direction: str = "sample",
    parameters: Iterable | None = None,
    modules: Iterable | None = None,
    device: str | torch.device = "cpu",
    embedding_net: torch.nn.Module | None = None,
    context_layers: int = 2,
) -> Family:
    """Build the variational family that ``q`` names or wraps.

    Args:
        q: A name of :data:`FAMILY_NAMES`, a ``Family``, a ``Distribution`` over unconstrained
            θ, or a callable ``(event_shape, link_transform, device) -> Distribution``.
        event_size: Dimension ``D`` of θ.
        link: Bijection from ℝᴰ onto the prior's support.
        shift: Standardisation location in unconstrained space, shape ``[D]``.
        scale: Standardisation scale in unconstrained space, shape ``[D]``.
        context_size: Size ``L`` of the context for a conditional family (0: unconditional).
        num_transforms: Number of flow transforms (flows only).
        hidden_features: Hidden width (flows, conditional Gaussians).
        direction: ``"sample"`` or ``"density"`` — which pass of a flow is one network pass.
        parameters: Trainable tensors of a user distribution.
        modules: Modules of a user distribution.
        device: Device of the family.
        embedding_net: Network applied to the context first (named families only); the
            family then reads its output of size ``context_size``.
        context_layers: Hidden layers of a conditional Gaussian's context network (0: a
            linear head on the context, e.g. on an encoder's features).

    Returns:
        The family, on ``device``.

    Raises:
        ValueError: If ``q`` is an unknown name.
        TypeError: If ``q`` is of an unsupported type.

    Example:
        >>> family = build_family("gaussian_diag", event_size=2)
        >>> family().sample((3,)).shape
        torch.Size([3, 2])
    """
    if isinstance(q, Family):
        return q.to(device)
    if embedding_net is not None and not isinstance(q, str):
        raise TypeError("`embedding_net` applies to the named families only.")
    if isinstance(q, str):
        if q not in FAMILIES:
            raise ValueError(
                f"`q` must be one of {', '.join(map(repr, FAMILY_NAMES))}, a Distribution or "
                f"a callable; got {q!r}."
            )
        kwargs: dict = {
            "context_size": context_size,
            "hidden_features": hidden_features,
            "embedding_net": embedding_net,
        }
        if q in FLOW_BUILDERS:
            kwargs.update(num_transforms=num_transforms, direction=direction)
        else:
            kwargs.update(context_layers=context_layers)
        return FAMILIES[q](event_size, link, shift, scale, **kwargs).to(device)
    if isinstance(q, Distribution):
        return DistributionFamily(q, parameters, modules, link)
    if callable(q):
        return BuilderFamily(q, event_size, link, device, parameters, modules)
    raise TypeError(
        "`q` must be a family name, a Family, a torch Distribution or a callable "
        f"(event_shape, link_transform, device) -> Distribution; got {type(q).__name__}."
    )
