"""The variational-inference engine: families, divergences and the fit loop.

Everything here works on log densities of shape ``[particles, *batch]``.
"""

from sbi_vi.vi.divergences import (
    DIVERGENCES,
    Divergence,
    DivergenceOutput,
    ForwardKL,
    ImportanceWeighted,
    RenyiAlpha,
    ReverseKL,
    build_divergence,
)
from sbi_vi.vi.families import (
    FAMILIES,
    FAMILY_NAMES,
    DiagonalGaussian,
    Family,
    FlowFamily,
    Gaussian,
    build_family,
)
from sbi_vi.vi.fit import ConvergenceCheck, FitResult, fit, gradient_step, make_optimizer
from sbi_vi.vi.validation import ValidationStopping, common_random_numbers

__all__ = [
    "DIVERGENCES",
    "FAMILIES",
    "FAMILY_NAMES",
    "ConvergenceCheck",
    "DiagonalGaussian",
    "Divergence",
    "DivergenceOutput",
    "Family",
    "FitResult",
    "FlowFamily",
    "ForwardKL",
    "Gaussian",
    "ImportanceWeighted",
    "RenyiAlpha",
    "ReverseKL",
    "ValidationStopping",
    "build_divergence",
    "build_family",
    "common_random_numbers",
    "fit",
    "gradient_step",
    "make_optimizer",
]
