"""``AutoFlow``: a normalizing flow (zuko, through the engine) over the global latents."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sbi_vi.ppl.infer.autoguides.base import AutoGuide
from sbi_vi.ppl.infer.init import init_to_median
from sbi_vi.vi.families import FlowFamily
from sbi_vi.vi.families.flows import FLOW_BUILDERS

__all__ = ["AutoFlow"]


class AutoFlow(AutoGuide):
    """A normalizing-flow guide over the flat unconstrained vector of all latents.

    The family is the engine's :class:`~sbi_vi.vi.families.FlowFamily` (a zuko flow) in the
    one-pass *sampling* direction, standardised to start at N(init_loc, init_scale² I).
    Models with latent sites inside a subsampled plate are refused.

    Args:
        model: The model.
        flow: A zuko flow name of the engine: ``"nsf"``, ``"maf"``, ``"naf"``, ``"unaf"``,
            ``"nice"``, ``"sospf"``, ``"gf"``.
        num_transforms: Number of flow transforms.
        hidden_features: Width of the conditioners' two hidden layers.
        init_loc_fn: Initial values (default: median of 15 prior draws).
        init_scale: Scale of the standardisation in unconstrained space.
        **flow_kwargs: Passed to the zuko constructor (e.g. ``bins=8`` for NSF).
    """

    def __init__(
        self,
        model: Any,
        flow: str = "nsf",
        *,
        num_transforms: int = 3,
        hidden_features: int = 32,
        init_loc_fn: Any = init_to_median,
        init_scale: float = 1.0,
        **flow_kwargs: Any,
    ) -> None:
        super().__init__(model, init_loc_fn=init_loc_fn, init_scale=init_scale)
        if flow not in FLOW_BUILDERS:
            raise ValueError(
                f"`flow` must be one of {', '.join(map(repr, FLOW_BUILDERS))}; got {flow!r}."
            )
        self.flow = flow
        self.num_transforms = num_transforms
        self.hidden_features = hidden_features
        self.flow_kwargs = flow_kwargs

    def _build(self, init_loc: Tensor) -> None:
        if self.latent_dim < 1:
            raise ValueError("AutoFlow needs at least one global latent coordinate.")
        self.family = FlowFamily(
            self.flow,
            self.latent_dim,
            shift=init_loc.detach(),
            scale=torch.full_like(init_loc, self.init_scale),
            num_transforms=self.num_transforms,
            hidden_features=self.hidden_features,
            direction="sample",
            **self.flow_kwargs,
        )

    def named_site_params(self) -> dict[str, Tensor]:
        """The flow's parameters as ``auto_flow$$${path}``."""
        self._require_setup()
        return {f"auto_flow$$${n}": p.detach() for n, p in self.family.named_parameters()}
