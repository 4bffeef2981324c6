"""Potentials: unnormalised log posteriors θ ``[*, D]`` → ``[*]`` with ``set_x``/``x_o``."""

from sbi_vi.potentials.base import BasePotential, CustomPotential
from sbi_vi.potentials.custom import CallablePotential
from sbi_vi.potentials.foreign import SbiStylePotential, is_sbi_style_potential
from sbi_vi.potentials.likelihood import (
    LikelihoodBasedPotential,
    likelihood_estimator_based_potential,
)
from sbi_vi.potentials.ratio import RatioBasedPotential, ratio_estimator_based_potential

__all__ = [
    "BasePotential",
    "CallablePotential",
    "CustomPotential",
    "LikelihoodBasedPotential",
    "RatioBasedPotential",
    "SbiStylePotential",
    "is_sbi_style_potential",
    "likelihood_estimator_based_potential",
    "ratio_estimator_based_potential",
]
