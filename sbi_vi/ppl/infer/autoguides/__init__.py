"""Autoguides: guides built from a model's latent sites, as engine families.

- :class:`AutoNormal` — mean-field Gaussian; local latents per data point.
- :class:`AutoMultivariateNormal` — full-rank Gaussian over the global latents.
- :class:`AutoFlow` — a zuko normalizing flow over the global latents.
- :class:`AutoDelta` — a point mass (MAP); local latents per data point.
"""

from sbi_vi.ppl.infer.autoguides.base import AutoGuide, GuideDraw
from sbi_vi.ppl.infer.autoguides.delta import AutoDelta, PointMass
from sbi_vi.ppl.infer.autoguides.flow import AutoFlow
from sbi_vi.ppl.infer.autoguides.mvn import AutoMultivariateNormal, FullRankNormal
from sbi_vi.ppl.infer.autoguides.normal import AutoNormal, MeanFieldNormal

__all__ = [
    "AutoDelta",
    "AutoFlow",
    "AutoGuide",
    "AutoMultivariateNormal",
    "AutoNormal",
    "FullRankNormal",
    "GuideDraw",
    "MeanFieldNormal",
    "PointMass",
]
