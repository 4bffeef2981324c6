"""Supports that Stan declares and torch lacks: ordered and positive ordered vectors.

Stan's ``ordered[K] c;`` (cut points of an ordinal regression, the locations of a mixture
whose labels must not switch) and ``positive_ordered[K] c;`` become the supports
:data:`ordered_vector` and :data:`positive_ordered_vector`, with the bijections that Stan
uses registered in ``torch.distributions.biject_to`` (new constraint types only, as
:mod:`sbi_vi.priors` does for its joint supports; no torch entry changes), so the
autoguides and ``init_to_feasible`` reach them.

Example:
    >>> import torch
    >>> from torch.distributions import biject_to
    >>> from sbi_vi.ppl.distributions import ImproperUniform
    >>> c = ImproperUniform(ordered_vector, event_shape=(3,))  # Stan: ordered[3] c;
    >>> biject_to(c.support)(torch.zeros(3))
    tensor([0., 1., 2.])
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform

__all__ = [
    "OrderedTransform",
    "PositiveOrderedTransform",
    "ordered_vector",
    "positive_ordered_vector",
]


class _OrderedVector(constraints.Constraint):
    """Real vectors whose entries increase strictly along the last dim."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        finite = torch.isfinite(value).all(-1)
        return finite & (value[..., 1:] > value[..., :-1]).all(-1)


class _PositiveOrderedVector(constraints.Constraint):
    """Positive vectors whose entries increase strictly along the last dim."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        return ordered_vector.check(value) & (value[..., :1] > 0).all(-1)


ordered_vector = _OrderedVector()
positive_ordered_vector = _PositiveOrderedVector()


class OrderedTransform(Transform):
    """ℝᴷ → ordered vectors: ``y₀ = x₀``, ``yᵢ = yᵢ₋₁ + exp(xᵢ)`` (Stan's map).

    ``log|det J| = Σ_{i≥1} xᵢ``.
    """

    domain = constraints.real_vector
    codomain = ordered_vector
    bijective = True
    sign = +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrderedTransform)

    def _call(self, x: Tensor) -> Tensor:
        return torch.cat([x[..., :1], x[..., 1:].exp()], -1).cumsum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.cat([y[..., :1], (y[..., 1:] - y[..., :-1]).log()], -1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return x[..., 1:].sum(-1)


class PositiveOrderedTransform(Transform):
    """ℝᴷ → positive ordered vectors: ``yᵢ = Σ_{j≤i} exp(xⱼ)``; ``log|det J| = Σ xᵢ``."""

    domain = constraints.real_vector
    codomain = positive_ordered_vector
    bijective = True
    sign = +1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PositiveOrderedTransform)

    def _call(self, x: Tensor) -> Tensor:
        return x.exp().cumsum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.cat([y[..., :1], y[..., 1:] - y[..., :-1]], -1).log()

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return x.sum(-1)


@biject_to.register(_OrderedVector)
def _biject_ordered(constraint: _OrderedVector) -> Transform:
    return OrderedTransform()


@biject_to.register(_PositiveOrderedVector)
def _biject_positive_ordered(constraint: _PositiveOrderedVector) -> Transform:
    return PositiveOrderedTransform()
