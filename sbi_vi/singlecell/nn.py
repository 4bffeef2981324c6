"""The blocks of the encoder and decoder: fully connected layers with covariate injection,
the encoder body that reads covariate codes from its context, and scVI's variance head.

A categorical covariate enters a layer as a one-hot vector concatenated to its input
(scVI's convention); :class:`FCLayers` computes the same thing without building the one-hot
matrix: ``Linear([h, onehot(c)]) = Linear(h) + W_c[c]``, an embedding lookup added to the
linear layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_vi._checks import check_positive_float, check_positive_int
from sbi_vi.vi.families import DiagonalGaussian, build_family
from sbi_vi.vi.families.gaussian import DiagonalGaussianDistribution

__all__ = [
    "ActivatedDiagonalGaussian",
    "CovariateBody",
    "EmbeddingKeyError",
    "EmbeddingModuleMixin",
    "FCLayers",
    "StackedHeads",
    "batch_embedding",
    "decoder_options",
    "encoder_family",
    "encoder_options",
]

# The keys of scvi-tools' Encoder / DecoderSCVI / FCLayers that its VAE does not set itself
# (the others — n_layers, n_hidden, dropout_rate, use_batch_norm, ... — are SCVI arguments).
_FC_KEYS = ("activation_fn", "bias", "use_activation")
_ENCODER_KEYS = (*_FC_KEYS, "var_eps")


class _InjectedLinear(nn.Module):
    """``Linear`` of ``[h, onehot(c_1), ..., onehot(c_k), cont]`` without the one-hots."""

    def __init__(self, n_in: int, n_out: int, n_cats: Sequence[int], n_cont: int, bias: bool):
        super().__init__()
        self.linear = nn.Linear(n_in + n_cont, n_out, bias=bias)
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


def _norm(n_out: int, use_batch_norm: bool, use_layer_norm: bool) -> nn.Module:
    """BatchNorm then LayerNorm, as scVI stacks them when both are asked for."""
    batch_norm = nn.BatchNorm1d(n_out, momentum=0.01, eps=1e-3) if use_batch_norm else None
    layer_norm = nn.LayerNorm(n_out, elementwise_affine=False) if use_layer_norm else None
    if batch_norm is not None and layer_norm is not None:
        return nn.Sequential(batch_norm, layer_norm)
    return batch_norm or layer_norm or nn.Identity()


class FCLayers(nn.Module):
    """``n_layers`` of ``Linear → BatchNorm → LayerNorm → activation → Dropout`` with
    covariates (scvi-tools' ``FCLayers``).

    Args:
        n_in: Input features.
        n_out: Output features of every layer (the hidden width).
        n_cats: Number of categories of each categorical covariate (one-hot injected).
        n_cont: Number of continuous covariates (concatenated to the input).
        n_layers: Number of layers.
        dropout_rate: Dropout after each layer (0: none).
        use_batch_norm: Batch normalisation (scVI: momentum 0.01, eps 1e-3).
        use_layer_norm: Layer normalisation (without affine parameters, as scVI); after the
            batch normalisation when both are used.
        inject_covariates: Covariates enter every layer; otherwise the first only.
        activation_fn: The activation's ``nn.Module`` class (one instance per layer).
        bias: Learn the linear layers' biases.
        use_activation: Apply the activation (False: affine layers, then norms and dropout).

    Raises:
        TypeError: If ``activation_fn`` is not an ``nn.Module`` class.

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
        activation_fn: type[nn.Module] = nn.ReLU,
        bias: bool = True,
        use_activation: bool = True,
    ):
        super().__init__()
        if not (isinstance(activation_fn, type) and issubclass(activation_fn, nn.Module)):
            raise TypeError(
                "`activation_fn` must be an nn.Module class such as torch.nn.ReLU (called once "
                f"per layer), got {activation_fn!r}."
            )
        n_cats = [int(n) for n in n_cats]
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.activations = nn.ModuleList()
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
                    bool(bias),
                )
            )
            self.norms.append(_norm(n_out, use_batch_norm, use_layer_norm))
            self.activations.append(activation_fn() if use_activation else nn.Identity())
        self.n_cats = n_cats
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()

    def forward(
        self, h: Tensor, cats: Sequence[Tensor] = (), cont: Tensor | None = None
    ) -> Tensor:
        """``h`` ``[N, n_in]``, codes ``cats`` each ``[N]``, ``cont`` ``[N, n_cont]``."""
        blocks = zip(self.layers, self.norms, self.activations, self.inject, strict=True)
        for layer, norm, activation, inject in blocks:
            h = layer(h, cats if inject else (), cont if inject else None)
            h = self.dropout(activation(norm(h)))
        return h


class StackedHeads:
    """Linear output layers over one input evaluated as one matrix product, biases folded in.

    ``[h, 1] @ [[W_1, b_1], [W_2, b_2], ...]ᵀ`` gives every layer's output at once: one
    pass of the weights through the cache instead of one per layer, and no separate pass
    that broadcasts each bias into its output before the product (``addmm``'s first step,
    about a third of its time for scVI's ``[384, 128] × [128, 2500]`` heads). The outputs
    are column blocks (views) of one ``[N, Σ out]`` tensor. The weights are copied when the
    object is made and carry no gradient: it serves inference over layers that do not change
    meanwhile; make a new one after the layers change.

    Args:
        layers: ``nn.Linear`` layers with the same ``in_features``.

    Example:
        >>> layers = [nn.Linear(4, 3), nn.Linear(4, 2)]
        >>> h = torch.randn(5, 4)
        >>> a, b = StackedHeads(layers)(h)
        >>> bool(torch.allclose(a, layers[0](h), atol=1e-6)), b.shape
        (True, torch.Size([5, 2]))
    """

    def __init__(self, layers: Sequence[nn.Linear]):
        with torch.no_grad():
            blocks = []
            for layer in layers:
                n_out = layer.out_features
                bias = layer.weight.new_zeros(n_out) if layer.bias is None else layer.bias
                blocks.append(torch.cat([layer.weight, bias.reshape(n_out, 1)], 1))
            self.weight = torch.cat(blocks)  # [Σ out, in + 1]
        self.sizes = [layer.out_features for layer in layers]

    def __call__(self, h: Tensor) -> tuple[Tensor, ...]:
        """``h`` ``[N, in]`` → each layer's output ``[N, out_i]``."""
        ones = h.new_ones(*h.shape[:-1], 1)
        return torch.cat([h, ones], -1).matmul(self.weight.T).split(self.sizes, -1)


class CovariateBody(nn.Module):
    """The encoder body with covariates: :class:`FCLayers` over a packed context.

    An engine family hands its embedding net one context tensor, so the categorical codes
    travel as its last ``len(n_cats)`` columns (small integers, exact in float32) and enter
    every layer as in scVI's encoder with ``encode_covariates``.

    Args:
        n_features: Leading columns of the context (expression and continuous covariates).
        n_out: Hidden width.
        n_cats: Categories of each code column.
        **fc_kwargs: Options of :class:`FCLayers`.

    Example:
        >>> body = CovariateBody(5, 8, n_cats=[3])
        >>> body(torch.cat([torch.zeros(4, 5), torch.tensor([[0.0], [1], [2], [0]])], -1)).shape
        torch.Size([4, 8])
    """

    def __init__(self, n_features: int, n_out: int, n_cats: Sequence[int], **fc_kwargs: Any):
        super().__init__()
        self.n_features = int(n_features)
        self.fc = FCLayers(self.n_features, n_out, n_cats, **fc_kwargs)

    def forward(self, context: Tensor) -> Tensor:
        """``context`` ``[N, n_features + n_codes]`` → features ``[N, n_out]``."""
        features = context[..., : self.n_features]
        codes = context[..., self.n_features :].long().unbind(-1)
        return self.fc(features, codes)


class ActivatedDiagonalGaussian(DiagonalGaussian):
    """The diagonal Gaussian encoder with scVI's variance head.

    scVI's ``Encoder`` makes its variance ``var_activation(v) + var_eps`` from the raw output
    ``v`` and draws with standard deviation ``sqrt(var)``; the engine's
    :class:`~sbi_vi.vi.families.DiagonalGaussian` (the default) reads ``v`` as ``log sd``.

    Args:
        *args: As :class:`~sbi_vi.vi.families.DiagonalGaussian`.
        var_activation: Positive map of the raw variance output (``torch.exp``,
            ``torch.nn.functional.softplus``, ...).
        var_eps: Floor added to the variance.
        **kwargs: As :class:`~sbi_vi.vi.families.DiagonalGaussian`.
    """

    def __init__(
        self,
        *args: Any,
        var_activation: Callable[[Tensor], Tensor] = torch.exp,
        var_eps: float = 1e-4,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if not callable(var_activation):
            raise TypeError(
                "`var_activation` must be a callable tensor -> tensor (e.g. torch.exp), got "
                f"{type(var_activation).__name__}."
            )
        self.var_activation = var_activation
        self.var_eps = check_positive_float("var_eps", var_eps, allow_zero=True)

    def base(self, context: Tensor | None = None) -> Distribution:
        raw = self._raw(context)
        d = self.event_size
        var = self.var_activation(raw[..., d:]) + self.var_eps
        return DiagonalGaussianDistribution(raw[..., :d], var.sqrt())


def _split_options(where: str, options: Mapping[str, Any] | None, known: Sequence[str]) -> dict:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"`{where}` must be a dict, got {type(options).__name__}.")
    options = dict(options)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"`{where}` got unexpected key(s) {', '.join(map(repr, unknown))}; accepted: "
            f"{', '.join(known)}. Widths, depths, dropout and norms are SCVI arguments "
            "(n_hidden, n_layers, dropout_rate, use_batch_norm, use_layer_norm, ...)."
        )
    return options


def encoder_options(extra_encoder_kwargs: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """``extra_encoder_kwargs`` split into ``(FCLayers options, variance options)``.

    Raises:
        TypeError: For keys scvi-tools' ``Encoder`` would not take from this dict (naming
            them and the accepted ones).
    """
    options = _split_options("extra_encoder_kwargs", extra_encoder_kwargs, _ENCODER_KEYS)
    variance = {"var_eps": options.pop("var_eps")} if "var_eps" in options else {}
    return options, variance


def decoder_options(extra_decoder_kwargs: Mapping[str, Any] | None) -> dict:
    """``extra_decoder_kwargs`` as :class:`FCLayers` options.

    Raises:
        TypeError: For keys scvi-tools' ``DecoderSCVI`` would not take from this dict.
    """
    return _split_options("extra_decoder_kwargs", extra_decoder_kwargs, _FC_KEYS)


class EmbeddingKeyError(KeyError, ValueError):
    """A missing or duplicate embedding key: scvi-tools' ``KeyError``, and a ``ValueError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EmbeddingModuleMixin:
    """scvi-tools' ``EmbeddingModuleMixin``: named embeddings of a module (the batch one of
    ``batch_representation="embedding"`` under the key ``"batch"``).

    The module must set ``self._embeddings_dict = nn.ModuleDict()`` in its constructor.
    """

    _embeddings_dict: nn.ModuleDict

    @property
    def embeddings_dict(self) -> nn.ModuleDict:
        """The embeddings by key."""
        return self._embeddings_dict

    def add_embedding(self, key: str, embedding: nn.Embedding, overwrite: bool = False) -> None:
        """Add ``embedding`` under ``key``.

        Raises:
            EmbeddingKeyError: If ``key`` exists and ``overwrite`` is False.
        """
        if key in self._embeddings_dict and not overwrite:
            raise EmbeddingKeyError(f"Embedding {key!r} already exists; pass `overwrite=True`.")
        self._embeddings_dict[key] = embedding

    def remove_embedding(self, key: str) -> None:
        """Remove the embedding ``key``.

        Raises:
            EmbeddingKeyError: If there is none.
        """
        self.get_embedding(key)
        del self._embeddings_dict[key]

    def get_embedding(self, key: str) -> nn.Embedding:
        """The embedding ``key``.

        Raises:
            EmbeddingKeyError: If there is none.
        """
        if key not in self._embeddings_dict:
            raise EmbeddingKeyError(
                f"Embedding {key!r} not found (embeddings: {list(self._embeddings_dict)})."
            )
        return self._embeddings_dict[key]

    def init_embedding(
        self, key: str, num_embeddings: int, embedding_dim: int = 5, **kwargs: Any
    ) -> None:
        """Add a new ``nn.Embedding(num_embeddings, embedding_dim, **kwargs)`` under ``key``."""
        self.add_embedding(key, nn.Embedding(num_embeddings, embedding_dim, **kwargs))

    def compute_embedding(self, key: str, indices: Tensor) -> Tensor:
        """The embedding ``key`` of ``indices`` (``[N]`` or ``[N, 1]``), ``[N, dim]``."""
        indices = indices.flatten() if indices.ndim > 1 else indices
        return self.get_embedding(key)(indices)


_EMBEDDING_KEYS = ("embedding_dim", "max_norm", "norm_type", "scale_grad_by_freq")


def batch_embedding(n_batch: int, options: dict[str, Any] | None) -> nn.Embedding:
    """scvi-tools' batch embedding: ``nn.Embedding(n_batch, embedding_dim=5, ...)``.

    Raises:
        TypeError: For keys other than ``embedding_dim``, ``max_norm``, ``norm_type``,
            ``scale_grad_by_freq``.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(_EMBEDDING_KEYS))
    if unknown:
        raise TypeError(
            f"`batch_embedding_kwargs` got unexpected key(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(_EMBEDDING_KEYS)}."
        )
    dim = check_positive_int(
        "batch_embedding_kwargs['embedding_dim']", options.pop("embedding_dim", 5)
    )
    return nn.Embedding(n_batch, dim, **options)


def encoder_family(
    q: str,
    q_kwargs: dict[str, Any] | None,
    latent_size: int,
    n_hidden: int,
    body: nn.Module,
    shift: Tensor,
    var_activation: Callable[[Tensor], Tensor] | None,
    variance: dict[str, Any],
) -> nn.Module:
    """The encoder: the engine family ``q`` on the body's features (scVI's variance head
    with ``var_activation`` or ``var_eps``).

    Raises:
        ValueError: A variance head on a family other than ``"gaussian_diag"``.
        TypeError: Unknown ``q_kwargs``.
    """
    q_kwargs = dict(q_kwargs or {})
    options = {
        "num_transforms": q_kwargs.pop("num_transforms", 3),
        "hidden_features": q_kwargs.pop("hidden_features", n_hidden),
        "direction": q_kwargs.pop("direction", "sample"),
    }
    if q_kwargs:
        raise TypeError(f"Unknown `q_kwargs`: {sorted(q_kwargs)}.")
    if var_activation is None and not variance:
        return build_family(
            q,
            event_size=latent_size,
            shift=shift,
            context_size=n_hidden,
            embedding_net=body,
            context_layers=0,
            **options,
        )
    if q != "gaussian_diag":
        raise ValueError(
            "`var_activation` and `extra_encoder_kwargs['var_eps']` shape the variance of "
            f"the diagonal Gaussian encoder (q='gaussian_diag'); got q={q!r}."
        )
    return ActivatedDiagonalGaussian(
        latent_size,
        shift=shift,
        context_size=n_hidden,
        hidden_features=options["hidden_features"],
        context_layers=0,
        embedding_net=body,
        var_activation=torch.exp if var_activation is None else var_activation,
        **variance,
    )
