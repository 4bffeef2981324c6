"""sbi_vi: simulation-based inference with variational posteriors.

The few names a user imports; everything else lives in its subpackage.
"""

from sbi_vi.posteriors import VIPosterior
from sbi_vi.potentials import (
    likelihood_estimator_based_potential,
    ratio_estimator_based_potential,
)
from sbi_vi.priors import BoxUniform, MultipleIndependent, process_prior
from sbi_vi.simulate import simulate

__version__ = "0.1.0"

__all__ = [
    "BoxUniform",
    "MultipleIndependent",
    "VIPosterior",
    "likelihood_estimator_based_potential",
    "process_prior",
    "ratio_estimator_based_potential",
    "simulate",
]
