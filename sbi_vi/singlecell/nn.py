"""The fully connected blocks of the encoder and decoder, with covariate injection.

A categorical covariate enters a layer as a one-hot vector concatenated to its input
(scVI's convention); :class:`FCLayers` computes the same thing without building the one-hot
matrix: ``Linear([h, onehot(c)]) = Linear(h) + W_c[c]``, an embedding lookup added to the
linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["FCLayers"]


class _InjectedLinear(nn.Module):
    """``Linear`` of ``[h, onehot(c_1), ..., onehot(c_k), cont]`` without the one-hots."""

    def __init__(self, n_in: int, n_out: int, n_cats: Sequence[int], n_cont: int):
        super().__init__()
        self.linear = nn.Linear(n_in + n_cont, n_out)
        self.embeddings = nn.ModuleList(nn.Embedding(n, n_out) for n in n_cats)
        for emb in self.embeddings:  # as the one-hot columns of the linear layer
            bound = 1.0 / (n_in + n_cont + sum(n_cats)) ** 0.5
            nn.init.uniform_(emb.weight, -bound, bound)

    def forward(self, h: Tensor, cats: Sequence[Tensor], cont: Tensor | None) -> Tensor:
        if cont is not None and cont.shape[-1]:
            h = torch.cat((h, cont), -1)
        out = self.linear(h)
        for emb, code in zip(self.embeddings, cats, strict=True):
            out = out + emb(code)
        return out


class FCLayers(nn.Module):
    """``n_layers`` of ``Linear → BatchNorm/LayerNorm → ReLU → Dropout`` with covariates.

    Args:
        n_in: Input features.
        n_out: Output features of every layer (the hidden width).
        n_cats: Number of categories of each categorical covariate (one-hot injected).
        n_cont: Number of continuous covariates (concatenated to the input).
        n_layers: Number of layers.
        dropout_rate: Dropout after each layer (0: none).
        use_batch_norm: Batch normalisation (scVI: momentum 0.01, eps 1e-3).
        use_layer_norm: Layer normalisation (without affine parameters, as scVI).
        inject_covariates: Covariates enter every layer; otherwise the first only.

    Example:
        >>> fc = FCLayers(5, 8, n_cats=[3])
        >>> fc(torch.zeros(4, 5), [torch.tensor([0, 1, 2, 0])]).shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        n_cont: int = 0,
        *,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
    ):
        super().__init__()
        n_cats = [int(n) for n in n_cats]
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.inject = []
        for i in range(n_layers):
            inject = i == 0 or inject_covariates
            self.inject.append(inject)
            self.layers.append(
                _InjectedLinear(
                    n_in if i == 0 else n_out,
                    n_out,
                    n_cats if inject else (),
                    n_cont if inject else 0,
                )
            )
            if use_batch_norm:
                self.norms.append(nn.BatchNorm1d(n_out, momentum=0.01, eps=1e-3))
            elif use_layer_norm:
                self.norms.append(nn.LayerNorm(n_out, elementwise_affine=False))
            else:
                self.norms.append(nn.Identity())
        self.n_cats = n_cats
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()

    def forward(
        self, h: Tensor, cats: Sequence[Tensor] = (), cont: Tensor | None = None
    ) -> Tensor:
        """``h`` ``[N, n_in]``, codes ``cats`` each ``[N]``, ``cont`` ``[N, n_cont]``."""
        for layer, norm, inject in zip(self.layers, self.norms, self.inject, strict=True):
            h = layer(h, cats if inject else (), cont if inject else None)
            h = self.dropout(self.activation(norm(h)))
        return h
