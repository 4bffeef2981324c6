r"""Classifiers for NRE: logits of (θ, x) pairs, read as log-ratios.

:class:`RatioClassifier` z-scores θ and x, embeds them, concatenates the embeddings and
passes them through a network with one output. ``log_ratio(theta, x)`` is that output: at
the optimum of the NRE losses it is :math:`\log p(x \mid \theta) / p(x)` (NRE-A, NRE-C) or
that log-ratio up to a function of x (NRE-B), which the posterior does not see.

:func:`classifier_nn` is the ``sbi`` builder factory (``linear``, ``mlp``, ``resnet``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from sbi_vi._checks import check_choice, check_positive_int
from sbi_vi.estimators.embedding import embedding_output_dim
from sbi_vi.estimators.flows import _flatten_pair
from sbi_vi.estimators.zscore import Standardize, ZScore, standardizers

__all__ = [
    "CLASSIFIER_NAMES",
    "ClassifierNetBuilder",
    "RatioClassifier",
    "ResidualNet",
    "classifier_nn",
]

ClassifierName = Literal["linear", "mlp", "resnet"]
CLASSIFIER_NAMES = ("linear", "mlp", "resnet")


class _ResidualBlock(nn.Module):
    def __init__(self, features: int, dropout_probability: float):
        super().__init__()
        self.linear1 = nn.Linear(features, features)
        self.linear2 = nn.Linear(features, features)
        self.dropout = nn.Dropout(dropout_probability)
        # Start each block near the identity, as nflows' residual blocks do.
        nn.init.uniform_(self.linear2.weight, -1e-3, 1e-3)
        nn.init.uniform_(self.linear2.bias, -1e-3, 1e-3)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.linear2(self.dropout(torch.relu(self.linear1(torch.relu(h)))))


class ResidualNet(nn.Module):
    """Linear → ``num_blocks`` residual blocks (ReLU, linear, ReLU, linear) → linear.

    Args:
        in_features: Input features.
        out_features: Output features.
        hidden_features: Width of the blocks.
        num_blocks: Number of residual blocks.
        dropout_probability: Dropout inside the blocks.

    Example:
        >>> ResidualNet(4, 1, 16)(torch.randn(3, 4)).shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 50,
        num_blocks: int = 2,
        dropout_probability: float = 0.0,
    ):
        super().__init__()
        self.initial = nn.Linear(in_features, hidden_features)
        self.blocks = nn.Sequential(
            *(_ResidualBlock(hidden_features, dropout_probability) for _ in range(num_blocks))
        )
        self.final = nn.Linear(hidden_features, out_features)

    def forward(self, h: Tensor) -> Tensor:
        return self.final(self.blocks(self.initial(h)))


class RatioClassifier(nn.Module):
    """Logit of a (θ, x) pair: ``net([e_θ(z-scored θ), e_x(z-scored x)])``.

    Args:
        net: Network ``[B, E_θ + E_x] -> [B, 1]``.
        theta_norm: Standardisation of θ ``[*, D]``.
        x_norm: Standardisation of x ``[*, L]``.
        embedding_net_theta: Embedding of standardised θ (default identity).
        embedding_net_x: Embedding of standardised x (default identity).

    Example:
        >>> theta, x = torch.randn(100, 2), torch.randn(100, 3)
        >>> r = classifier_nn("mlp")(theta, x)
        >>> r.log_ratio(theta[:4], x[:4]).shape
        torch.Size([4])
    """

    def __init__(
        self,
        net: nn.Module,
        theta_norm: Standardize,
        x_norm: Standardize,
        embedding_net_theta: nn.Module | None = None,
        embedding_net_x: nn.Module | None = None,
    ):
        super().__init__()
        self.net = net
        self.theta_norm = theta_norm
        self.x_norm = x_norm
        self.embedding_net_theta = embedding_net_theta or nn.Identity()
        self.embedding_net_x = embedding_net_x or nn.Identity()
        self.theta_dim = int(theta_norm.mean.shape[0])
        self.x_dim = int(x_norm.mean.shape[0])

    def embed_theta(self, theta: Tensor) -> Tensor:
        """Features of θ ``[B, D]``: ``[B, E_θ]``."""
        return self.embedding_net_theta(self.theta_norm(theta))

    def embed_x(self, x: Tensor) -> Tensor:
        """Features of x ``[B, L]``: ``[B, E_x]``."""
        return self.embedding_net_x(self.x_norm(x))

    def logits_from_features(self, theta_features: Tensor, x_features: Tensor) -> Tensor:
        """Logits ``[B]`` of pre-embedded pairs ``[B, E_θ]``, ``[B, E_x]`` (training path)."""
        return self.net(torch.cat((theta_features, x_features), dim=-1)).squeeze(-1)

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits ``[B]`` of pairs θ ``[B, D]``, x ``[B, L]``."""
        return self.logits_from_features(self.embed_theta(theta), self.embed_x(x))

    def log_ratio(self, theta: Tensor, x: Tensor) -> Tensor:
        """log r(θ, x) for θ ``[*, D]`` and x ``[*, L]`` (broadcast), shape ``[*]``.

        Raises:
            ValueError: If the last dims are not ``D`` and ``L``.
        """
        theta, x, batch = _flatten_pair(theta, x, "theta", "x", self.theta_dim, self.x_dim)
        return self(theta, x).reshape(batch)


@dataclass(frozen=True)
class ClassifierNetBuilder:
    """Picklable builder ``(batch_theta [N, D], batch_x [N, L]) -> RatioClassifier``.

    Made by :func:`classifier_nn`; its fields are that function's arguments.
    """

    model: ClassifierName = "resnet"
    z_score_theta: ZScore = "independent"
    z_score_x: ZScore = "independent"
    hidden_features: int = 50
    num_blocks: int = 2
    dropout_probability: float = 0.0
    embedding_net_theta: nn.Module | None = field(default=None, compare=False)
    embedding_net_x: nn.Module | None = field(default=None, compare=False)

    def __call__(self, batch_theta: Tensor, batch_x: Tensor) -> RatioClassifier:
        theta_norm, x_norm = standardizers(
            batch_theta, batch_x, self.z_score_theta, self.z_score_x
        )
        device = batch_theta.device
        # Copies: the builder stays a template, so `retrain_from_scratch` starts afresh.
        e_theta = copy.deepcopy(self.embedding_net_theta or nn.Identity()).to(device)
        e_x = copy.deepcopy(self.embedding_net_x or nn.Identity()).to(device)
        features = embedding_output_dim(e_theta, theta_norm(batch_theta))
        features += embedding_output_dim(e_x, x_norm(batch_x))
        h = self.hidden_features
        if self.model == "linear":
            net: nn.Module = nn.Linear(features, 1)
        elif self.model == "mlp":
            net = nn.Sequential(
                *(nn.Linear(features, h), nn.LayerNorm(h), nn.ReLU()),
                *(nn.Linear(h, h), nn.LayerNorm(h), nn.ReLU()),
                nn.Linear(h, 1),
            )
        else:
            net = ResidualNet(features, 1, h, self.num_blocks, self.dropout_probability)
        return RatioClassifier(net, theta_norm, x_norm, e_theta, e_x).to(
            device=device, dtype=batch_theta.dtype
        )


def classifier_nn(
    model: ClassifierName = "resnet",
    z_score_theta: ZScore = "independent",
    z_score_x: ZScore = "independent",
    hidden_features: int = 50,
    embedding_net_theta: nn.Module | None = None,
    embedding_net_x: nn.Module | None = None,
    num_blocks: int = 2,
    dropout_probability: float = 0.0,
) -> ClassifierNetBuilder:
    """A builder of a (θ, x) classifier for NRE (the ``sbi`` factory).

    Args:
        model: ``linear``, ``mlp`` (two hidden layers with LayerNorm, as ``sbi``) or
            ``resnet`` (``num_blocks`` residual blocks).
        z_score_theta: Standardisation of θ: ``independent``, ``structured`` or ``none``.
        z_score_x: Standardisation of x, same options.
        hidden_features: Width of the hidden layers.
        embedding_net_theta: Embedding of θ, ``[B, D] -> [B, E_θ]``.
        embedding_net_x: Embedding of x, ``[B, L] -> [B, E_x]``.
        num_blocks: Residual blocks (``resnet`` only).
        dropout_probability: Dropout in the residual blocks (``resnet`` only).

    Returns:
        A picklable builder ``(batch_theta [N, D], batch_x [N, L]) -> RatioClassifier``.

    Raises:
        ValueError: For an unknown option or a non-positive size.

    Example:
        >>> build = classifier_nn("resnet", hidden_features=16)
        >>> r = build(torch.randn(50, 2), torch.randn(50, 3))
        >>> r.log_ratio(torch.zeros(7, 2), torch.zeros(3)).shape
        torch.Size([7])
    """
    check_choice("model", model, CLASSIFIER_NAMES)
    check_choice("z_score_theta", z_score_theta, ("none", "independent", "structured"))
    check_choice("z_score_x", z_score_x, ("none", "independent", "structured"))
    check_positive_int("hidden_features", hidden_features)
    check_positive_int("num_blocks", num_blocks, allow_zero=True)
    if not (isinstance(dropout_probability, int | float) and 0 <= dropout_probability < 1):
        raise ValueError(f"`dropout_probability` must lie in [0, 1), got {dropout_probability!r}.")
    embeddings = {"embedding_net_theta": embedding_net_theta, "embedding_net_x": embedding_net_x}
    for name, net in embeddings.items():
        if net is not None and not isinstance(net, nn.Module):
            raise TypeError(f"`{name}` must be an nn.Module, got {type(net).__name__}.")
    return ClassifierNetBuilder(
        model,
        z_score_theta,
        z_score_x,
        hidden_features,
        num_blocks,
        float(dropout_probability),
        embedding_net_theta,
        embedding_net_x,
    )
