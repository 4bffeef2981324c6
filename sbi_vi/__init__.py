"""sbi_vi: simulation-based inference with variational posteriors.

The few names a user imports; everything else lives in its subpackage.
"""

from sbi_vi.estimators import (
    NLE,
    NRE,
    NRE_A,
    NRE_B,
    NRE_C,
    FCEmbedding,
    classifier_nn,
    likelihood_nn,
)
from sbi_vi.inference import infer
from sbi_vi.posteriors import VIPosterior
from sbi_vi.potentials import (
    likelihood_estimator_based_potential,
    ratio_estimator_based_potential,
)
from sbi_vi.priors import BoxUniform, MultipleIndependent, process_prior
from sbi_vi.simulate import simulate

__version__ = "0.1.0"

__all__ = [
    "NLE",
    "NRE",
    "NRE_A",
    "NRE_B",
    "NRE_C",
    "BoxUniform",
    "FCEmbedding",
    "MultipleIndependent",
    "VIPosterior",
    "classifier_nn",
    "infer",
    "likelihood_estimator_based_potential",
    "likelihood_nn",
    "process_prior",
    "ratio_estimator_based_potential",
    "simulate",
]
