"""B independent copies of a family as one family: q_1(θ), ..., q_B(θ) in one pass.

A *batchable* family (``Family.batchable = True``) computes its distribution from its
parameters by broadcasting: given parameters with an extra leading dim ``B``, ``family()``
is a distribution with batch shape ``[B]`` whose element ``b`` is the q of parameter row
``b``. The Gaussian families are batchable (a location and a Cholesky factor per row);
zuko's flows are not (their linear layers take one weight matrix), so they are refused by
name rather than vectorised by ``torch.func.vmap``, whose per-step overhead at the sizes of
single-observation VI would eat the gain of one run over a loop.

The contract a batched family keeps, on which per-observation clipping, convergence
masking and :func:`member_of` rely: **every parameter has leading dim B and row b belongs
to q_b alone**, so the gradient of ``Σ_b loss_b`` reaching row b is that of ``loss_b``.
"""

from __future__ import annotations

import copy

from torch import nn

from sbi_vi.vi.families.base import Family

__all__ = ["batch_family", "batchable_names", "member_of"]


def batchable_names() -> tuple[str, ...]:
    """The names of :data:`~sbi_vi.vi.families.FAMILIES` whose families are batchable."""
    from sbi_vi.vi.families import FAMILIES

    return tuple(name for name, ctor in FAMILIES.items() if getattr(ctor, "batchable", False))


def _check_batchable(family: nn.Module) -> None:
    if not getattr(family, "batchable", False):
        names = ", ".join(map(repr, batchable_names()))
        raise ValueError(
            f"The family {type(family).__name__} cannot fit a batch of observations in one "
            f"run (its parameters do not broadcast over a batch dim); use one of q={names} for "
            "train(x) with several observations, or call train() once per observation."
        )


def batch_family(family: Family, batch_size: int) -> Family:
    """A copy of ``family`` holding ``batch_size`` independent copies of its parameters.

    Args:
        family: An unconditional batchable family (its current parameters start every row).
        batch_size: The number ``B`` of copies.

    Returns:
        A family whose parameters have a leading dim ``B`` and whose ``forward()`` is a
        distribution with batch shape ``[B]``.

    Raises:
        ValueError: If the family is not batchable (the message names those that are).

    Example:
        >>> from sbi_vi.vi.families import Gaussian
        >>> batch_family(Gaussian(3), 4)().sample((5,)).shape
        torch.Size([5, 4, 3])
    """
    _check_batchable(family)
    out = copy.deepcopy(family)
    for module in out.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            row = p.detach().unsqueeze(0)
            expanded = row.expand(batch_size, *p.shape).clone()
            setattr(module, name, nn.Parameter(expanded, requires_grad=p.requires_grad))
    return out


def member_of(family: Family, index: int) -> Family:
    """Row ``index`` of a batched family as an ordinary (unbatched) family, a copy.

    Args:
        family: A family made by :func:`batch_family`.
        index: Which member, ``0 ≤ index < B``.

    Returns:
        The family of q_index, whose parameters have their unbatched shapes.
    """
    _check_batchable(family)
    out = copy.deepcopy(family)
    for module in out.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            row = p.detach()[index].clone()
            setattr(module, name, nn.Parameter(row, requires_grad=p.requires_grad))
    return out
