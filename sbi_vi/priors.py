"""Priors and the map between a prior's support and unconstrained space.

Variational inference runs in unconstrained space: a family q(z) over z ∈ ℝᴰ is pushed
through ``link_transform`` (the inverse of :func:`theta_transform`) onto the prior's support,
so every sample lands inside the support and densities carry the log-determinant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    Uniform,
    biject_to,
    constraints,
)
from torch.distributions.transforms import IndependentTransform, Transform, identity_transform

from sbi_vi._checks import as_tensor

__all__ = [
    "BoxUniform",
    "MultipleIndependent",
    "link_transform",
    "process_prior",
    "theta_transform",
]


class BoxUniform(Independent):
    r"""A uniform distribution on the box :math:`\prod_d [\mathrm{low}_d, \mathrm{high}_d)`.

    Args:
        low: Lower bounds, shape ``[D]``.
        high: Upper bounds, shape ``[D]``; every entry larger than ``low``.
        device: Device of the bounds (default: the device of ``low``).

    Example:
        >>> prior = BoxUniform(torch.zeros(2), torch.ones(2))
        >>> prior.sample((3,)).shape
        torch.Size([3, 2])
    """

    def __init__(self, low: Tensor, high: Tensor, device: str | torch.device | None = None):
        low = as_tensor("low", low)
        high = as_tensor("high", high)
        if device is not None:
            low, high = low.to(device), high.to(device)
        if low.ndim != 1 or high.shape != low.shape:
            raise ValueError(
                "`low` and `high` must be 1-D tensors of one shape [D]; got shapes "
                f"{tuple(low.shape)} and {tuple(high.shape)}."
            )
        if not bool((high > low).all()):
            raise ValueError("`high` must be larger than `low` in every dimension.")
        super().__init__(Uniform(low, high, validate_args=False), 1, validate_args=False)

    @property
    def low(self) -> Tensor:
        return self.base_dist.low

    @property
    def high(self) -> Tensor:
        return self.base_dist.high

    def __repr__(self) -> str:
        return f"BoxUniform(low: {self.low.shape}, high: {self.high.shape})"


class MultipleIndependent(Distribution):
    r"""A joint prior of independent distributions, concatenated along the last dim.

    Each part has event shape ``()`` (univariate) or ``[D_i]``; the joint has event
    shape ``[sum D_i]``.

    Args:
        dists: The independent parts, each with empty batch shape.

    Example:
        >>> from torch.distributions import Gamma, Normal
        >>> prior = MultipleIndependent([Normal(0.0, 1.0), Gamma(2.0, 1.0)])
        >>> prior.sample((5,)).shape
        torch.Size([5, 2])
    """

    arg_constraints: dict = {}  # noqa: RUF012
    has_rsample = False

    def __init__(self, dists: Sequence[Distribution], validate_args: bool | None = None):
        if not isinstance(dists, Sequence) or len(dists) == 0:
            raise ValueError("`dists` must be a non-empty list of torch Distributions.")
        parts, sizes = [], []
        for i, d in enumerate(dists):
            if not isinstance(d, Distribution):
                raise TypeError(f"`dists[{i}]` must be a torch Distribution, got {type(d)}.")
            if d.batch_shape != torch.Size() and len(d.event_shape) == 0:
                d = Independent(d, len(d.batch_shape))
            if d.batch_shape != torch.Size() or len(d.event_shape) > 1:
                raise ValueError(
                    f"`dists[{i}]` must have empty batch shape and event shape () or [D]; got "
                    f"batch {tuple(d.batch_shape)}, event {tuple(d.event_shape)}."
                )
            parts.append(d)
            sizes.append(1 if len(d.event_shape) == 0 else d.event_shape[0])
        self.dists = parts
        self.sizes = sizes
        self.has_rsample = all(d.has_rsample for d in parts)
        super().__init__(torch.Size(), torch.Size([sum(sizes)]), validate_args=False)

    def _split(self, value: Tensor) -> list[Tensor]:
        chunks = torch.split(value, self.sizes, dim=-1)
        return [
            c.squeeze(-1) if len(d.event_shape) == 0 else c
            for c, d in zip(chunks, self.dists, strict=True)
        ]

    def _join(self, values: list[Tensor]) -> Tensor:
        return torch.cat(
            [
                v.unsqueeze(-1) if len(d.event_shape) == 0 else v
                for v, d in zip(values, self.dists, strict=True)
            ],
            dim=-1,
        )

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self._join([d.sample(sample_shape) for d in self.dists])

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self._join([d.rsample(sample_shape) for d in self.dists])

    def log_prob(self, value: Tensor) -> Tensor:
        return sum(d.log_prob(v) for d, v in zip(self.dists, self._split(value), strict=True))

    @property
    def support(self) -> constraints.Constraint:
        return _CatSupport(
            [d.support for d in self.dists],
            self.sizes,
            [len(d.event_shape) == 0 for d in self.dists],
        )

    @property
    def mean(self) -> Tensor:
        return self._join([d.mean for d in self.dists])

    @property
    def variance(self) -> Tensor:
        return self._join([d.variance for d in self.dists])

    def __repr__(self) -> str:
        return f"MultipleIndependent({', '.join(repr(d) for d in self.dists)})"


class _CatSupport(constraints.Constraint):
    """Support of a :class:`MultipleIndependent`: each block in its own support."""

    event_dim = 1

    def __init__(self, parts, sizes, scalar):
        self.parts, self.sizes, self.scalar = parts, sizes, scalar
        super().__init__()

    @property
    def is_discrete(self) -> bool:
        return any(c.is_discrete for c in self.parts)

    def check(self, value: Tensor) -> Tensor:
        ok = []
        for c, v, s in zip(
            self.parts, torch.split(value, self.sizes, -1), self.scalar, strict=True
        ):
            r = c.check(v.squeeze(-1) if s else v)
            if r.ndim == v.ndim:  # element-wise check of a vector block
                r = r.all(-1)
            ok.append(r)
        return torch.stack(ok, -1).all(-1)


class _CatTransform(Transform):
    """Block-wise bijection from unconstrained space to a :class:`_CatSupport`."""

    bijective = True

    def __init__(self, support: _CatSupport):
        super().__init__(cache_size=0)
        self.sizes = support.sizes
        self.scalar = support.scalar
        self.parts = [biject_to(c) for c in support.parts]
        self.domain = constraints.independent(constraints.real, 1)
        self.codomain = support

    def _apply(self, fns, x: Tensor) -> Tensor:
        out = []
        for f, v, s in zip(fns, torch.split(x, self.sizes, -1), self.scalar, strict=True):
            out.append(f(v.squeeze(-1)).unsqueeze(-1) if s else f(v))
        return torch.cat(out, -1)

    def _call(self, x: Tensor) -> Tensor:
        return self._apply(self.parts, x)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._apply([t.inv for t in self.parts], y)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        total = 0.0
        xs, ys = torch.split(x, self.sizes, -1), torch.split(y, self.sizes, -1)
        for t, xv, yv, s in zip(self.parts, xs, ys, self.scalar, strict=True):
            if s:
                total = total + t.log_abs_det_jacobian(xv.squeeze(-1), yv.squeeze(-1))
            else:
                ladj = t.log_abs_det_jacobian(xv, yv)
                total = total + (ladj.sum(-1) if ladj.ndim == xv.ndim else ladj)
        return total


@biject_to.register(_CatSupport)
def _biject_cat(constraint: _CatSupport) -> Transform:
    return _CatTransform(constraint)


def process_prior(prior: object) -> Distribution:
    """Check a user prior and return it as a distribution with event shape ``[D]``.

    Accepts any torch ``Distribution`` with ``sample`` and ``log_prob``. A prior with batch
    shape ``[D]`` and empty event shape (e.g. ``Normal(zeros(D), ones(D))``) is reinterpreted
    as one event of size ``D``.

    Raises:
        TypeError: If ``prior`` lacks ``sample``/``log_prob``.
        ValueError: If its shapes cannot be read as one ``[D]`` event.
    """
    if not (
        callable(getattr(prior, "sample", None)) and callable(getattr(prior, "log_prob", None))
    ):
        raise TypeError(
            "`prior` must have `sample(sample_shape)` and `log_prob(theta)` methods (e.g. a torch "
            f"Distribution), got {type(prior).__name__}."
        )
    if not isinstance(prior, Distribution):
        return prior  # duck-typed prior; shapes are checked where it is used
    if len(prior.event_shape) == 0 and len(prior.batch_shape) == 1:
        prior = Independent(prior, 1)
    if len(prior.event_shape) == 0 and len(prior.batch_shape) == 0:
        raise ValueError(
            "`prior` is a scalar distribution (batch and event shape ()); give it shape [1], "
            "e.g. `Normal(torch.zeros(1), torch.ones(1))`."
        )
    if len(prior.event_shape) != 1 or len(prior.batch_shape) != 0:
        raise ValueError(
            "`prior` must have event shape [D] and empty batch shape; got event "
            f"{tuple(prior.event_shape)} and batch {tuple(prior.batch_shape)}."
        )
    return prior


def _support(prior: object) -> constraints.Constraint | None:
    try:
        return prior.support  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        return None


class _SupportLink(Transform):
    """A bijection ℝᴰ → support that knows its exact codomain (torch's composites forget it)."""

    bijective = True

    def __init__(self, transform: Transform, support: constraints.Constraint):
        super().__init__(cache_size=0)
        self.transform = transform
        self.domain = constraints.independent(constraints.real, 1)
        self.codomain = support if support.event_dim == 1 else constraints.independent(support, 1)

    def _call(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def _inverse(self, y: Tensor) -> Tensor:
        return self.transform.inv(y)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.transform.log_abs_det_jacobian(x, y)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SupportLink) and other.transform == self.transform

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"Link({self.transform!r}, codomain={self.codomain})"


def theta_transform(prior: object) -> Transform:
    """The bijection from the prior's support to unconstrained space.

    ``theta_transform(prior)(theta)`` is unconstrained; ``.inv`` maps back onto the support
    (this inverse is the *link transform* of the variational families). Priors without a
    ``support`` are taken to live on ℝᴰ (identity).

    Example:
        >>> prior = BoxUniform(torch.zeros(2), torch.ones(2))
        >>> t = theta_transform(prior)
        >>> theta = prior.sample((4,))
        >>> torch.allclose(t.inv(t(theta)), theta, atol=1e-5)
        True
    """
    support = _support(prior)
    if support is None:
        return identity_transform
    transform = biject_to(support)
    if transform.codomain.event_dim == 0:
        transform = IndependentTransform(transform, 1)
    return _SupportLink(transform, support).inv


def link_transform(prior: object) -> Transform:
    """The bijection from unconstrained space onto the prior's support.

    The inverse of :func:`theta_transform`; the link transform of every family.
    """
    return theta_transform(prior).inv
