"""Neural estimators: NLE (conditional flows) and NRE (classifiers), one training loop.

Each estimator stores simulations (``append_simulations``), trains a network with the
shared loop of :mod:`sbi_vi.estimators.training` (``train``, arguments and defaults of
``sbi`` 0.27) and wraps it into a :class:`~sbi_vi.posteriors.VIPosterior`
(``build_posterior``).

Example:
    >>> import torch
    >>> from sbi_vi import BoxUniform
    >>> prior = BoxUniform(-torch.ones(2), torch.ones(2))
    >>> theta = prior.sample((200,))
    >>> x = theta + 0.1 * torch.randn_like(theta)
    >>> nle = NLE(prior, density_estimator="nsf", show_progress_bars=False)
    >>> _ = nle.append_simulations(theta, x).train(max_num_epochs=1, seed=0)
    >>> posterior = nle.build_posterior(vi_parameters={"q": "gaussian"})
    >>> type(posterior).__name__
    'VIPosterior'
"""

from sbi_vi.estimators.base import NeuralEstimator
from sbi_vi.estimators.classifiers import (
    ClassifierNetBuilder,
    RatioClassifier,
    ResidualNet,
    classifier_nn,
)
from sbi_vi.estimators.embedding import FCEmbedding, IdentityEmbedding
from sbi_vi.estimators.flows import ConditionalFlow, LikelihoodNetBuilder, likelihood_nn
from sbi_vi.estimators.nle import NLE, NLELoss
from sbi_vi.estimators.nre import NRE, NRE_A, NRE_B, NRE_C, ContrastiveLoss, LogitRatio
from sbi_vi.estimators.training import TrainConfig, TrainState, train_loop
from sbi_vi.estimators.zscore import Standardize
from sbi_vi.vi.families.splines import RQSTransform

__all__ = [
    "NLE",
    "NRE",
    "NRE_A",
    "NRE_B",
    "NRE_C",
    "ClassifierNetBuilder",
    "ConditionalFlow",
    "ContrastiveLoss",
    "FCEmbedding",
    "IdentityEmbedding",
    "LikelihoodNetBuilder",
    "LogitRatio",
    "NLELoss",
    "NeuralEstimator",
    "RQSTransform",
    "RatioClassifier",
    "ResidualNet",
    "Standardize",
    "TrainConfig",
    "TrainState",
    "classifier_nn",
    "likelihood_nn",
    "train_loop",
]
