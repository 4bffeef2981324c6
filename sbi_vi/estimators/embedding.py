"""Embedding networks: learnable summaries applied before a network sees its input.

Any ``nn.Module`` mapping ``[B, F]`` to ``[B, E]`` serves as an embedding; these are the
common ones. For NLE the embedding acts on θ (the condition; x is the modelled variable and
cannot be summarised), for NRE on x (and, optionally, on θ), as in ``sbi``.
"""

from __future__ import annotations

from torch import Tensor, nn

from sbi_vi._checks import check_positive_int

__all__ = ["FCEmbedding", "IdentityEmbedding", "embedding_output_dim"]


class IdentityEmbedding(nn.Identity):
    """The default embedding: passes its input through unchanged.

    Example:
        >>> import torch
        >>> IdentityEmbedding()(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """


class FCEmbedding(nn.Module):
    """A fully connected network used as an embedding (the ``sbi`` name and defaults).

    ``num_layers`` linear layers (at least 2) of width ``num_hiddens``, each followed by an
    activation (the last one too, as in ``sbi``).

    Args:
        input_dim: Features of the input, ``F``.
        output_dim: Features of the embedding, ``E``.
        num_layers: Number of linear layers, ``>= 2``.
        num_hiddens: Width of the hidden layers.
        enable_layer_norm: Put a ``LayerNorm`` after each hidden linear layer.
        activation: Activation class (instantiated without arguments).

    Example:
        >>> import torch
        >>> FCEmbedding(input_dim=10, output_dim=4)(torch.randn(3, 10)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 20,
        num_layers: int = 2,
        num_hiddens: int = 50,
        enable_layer_norm: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        input_dim = check_positive_int("input_dim", input_dim)
        output_dim = check_positive_int("output_dim", output_dim)
        num_hiddens = check_positive_int("num_hiddens", num_hiddens)
        if check_positive_int("num_layers", num_layers) < 2:
            raise ValueError(f"`num_layers` must be at least 2, got {num_layers}.")
        norm = nn.LayerNorm if enable_layer_norm else nn.Identity
        layers: list[nn.Module] = [nn.Linear(input_dim, num_hiddens), norm(num_hiddens)]
        layers.append(activation())
        for _ in range(num_layers - 2):
            layers += [nn.Linear(num_hiddens, num_hiddens), norm(num_hiddens), activation()]
        layers += [nn.Linear(num_hiddens, output_dim), activation()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` of shape ``[B, F]`` into ``[B, E]``."""
        return self.net(x)


def embedding_output_dim(embedding_net: nn.Module, batch: Tensor) -> int:
    """The number of features ``embedding_net`` produces for rows of ``batch`` ``[N, F]``.

    Raises:
        ValueError: If the embedding does not return a ``[n, E]`` tensor for ``n`` rows.
    """
    import torch

    with torch.no_grad():
        out = embedding_net(batch[:2])
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != batch[:2].shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"`embedding_net` must map [n, {batch.shape[-1]}] to [n, E]; got {shape}."
        )
    return int(out.shape[-1])
