"""Distributions that Stan-style and Pyro example models need beyond ``torch.distributions``.

Each is a torch ``Distribution`` with a correct ``support`` (so the autoguides reach it by
``biject_to(support)`` from unconstrained space), ``expand`` (so plates and the particle
dim broadcast it) and ``log_prob``; all but :class:`ImproperUniform` have ``rsample``.

- :class:`ImproperUniform`: a flat (improper) prior over a support, log density 0: a Stan
  parameter declared without a prior. It cannot be sampled; autoguides initialise it
  without sampling (see :mod:`sbi_vi.ppl.infer.init`).
- :class:`FoldedDistribution`: ``|X|`` for a univariate ``X``; :class:`HalfStudentT` is the
  folded Student-t (Stan's ``student_t`` on a ``<lower=0>`` scale parameter).
- :class:`TruncatedNormal`: a normal restricted to ``[low, high]``; either bound may be
  infinite (Stan's ``normal(...) T[low, high]``, or a normal prior on a bounded parameter).
- Re-exported from torch, which has them with the right supports: :class:`HalfCauchy`,
  :class:`HalfNormal`, :class:`LKJCholesky` (a ``cholesky_factor_corr`` parameter; the
  autoguides use torch's map with a stable log-determinant), :class:`InverseGamma`.

Example:
    >>> import torch
    >>> from torch.distributions import constraints
    >>> flat = ImproperUniform(constraints.positive, batch_shape=(3,))
    >>> flat.log_prob(torch.ones(3))
    tensor([0., 0., 0.])
    >>> TruncatedNormal(0.0, 1.0, low=0.0).support
    GreaterThan(lower_bound=0.0)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    HalfCauchy,
    HalfNormal,
    InverseGamma,
    LKJCholesky,
    StudentT,
    constraints,
)
from torch.distributions.constraints import Constraint
from torch.distributions.utils import broadcast_all

__all__ = [
    "FoldedDistribution",
    "HalfCauchy",
    "HalfNormal",
    "HalfStudentT",
    "ImproperUniform",
    "InverseGamma",
    "LKJCholesky",
    "TruncatedNormal",
]

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _size(name: str, shape: Any) -> torch.Size:
    try:
        size = torch.Size(shape)
    except TypeError:
        raise TypeError(f"`{name}` must be a tuple of ints, got {shape!r}.") from None
    if any(s < 0 for s in size):
        raise ValueError(f"`{name}` must have non-negative sizes, got {tuple(size)}.")
    return size


class ImproperUniform(Distribution):
    """A flat improper density over ``support``: ``log p(θ) = 0`` for every θ in it.

    A Stan parameter without a prior statement has this density (``real beta;`` is flat
    on ℝ, ``real<lower=0> sigma;`` flat on the positive reals). The posterior is proper
    only if the likelihood makes it so. It cannot be sampled, so prior predictive checks
    need a proper prior; inference initialises such sites without drawing them.

    Args:
        support: The support, a continuous torch ``Constraint`` (``constraints.real``,
            ``constraints.positive``, ``constraints.interval(a, b)``, ``constraints.simplex``,
            ...). If it has fewer event dims than ``event_shape``, it is made
            ``constraints.independent`` over the rest.
        batch_shape: The batch shape.
        event_shape: The event shape.
        validate_args: torch's argument and sample validation (``None``: torch's default).

    Raises:
        TypeError: If ``support`` is not a ``Constraint`` or a shape is not a tuple of ints.
        ValueError: If ``support`` is discrete or has more event dims than ``event_shape``.

    Example:
        >>> import torch
        >>> from torch.distributions import constraints
        >>> ImproperUniform(constraints.real, event_shape=(2,)).log_prob(torch.zeros(4, 2))
        tensor([0., 0., 0., 0.])
    """

    arg_constraints: dict = {}  # noqa: RUF012
    has_rsample = False

    def __init__(
        self,
        support: Constraint,
        batch_shape: tuple[int, ...] | torch.Size = (),
        event_shape: tuple[int, ...] | torch.Size = (),
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(support, Constraint):
            raise TypeError(
                "`support` must be a torch.distributions.constraints.Constraint such as "
                f"constraints.positive, got {type(support).__name__} {support!r}."
            )
        if support.is_discrete:
            raise ValueError(
                f"`support` must be continuous, got the discrete {support}: an improper "
                "uniform over a discrete set cannot be a latent of an autoguide."
            )
        batch_shape = _size("batch_shape", batch_shape)
        event_shape = _size("event_shape", event_shape)
        extra = len(event_shape) - support.event_dim
        if extra < 0:
            raise ValueError(
                f"`support` {support} has {support.event_dim} event dim(s), but `event_shape` "
                f"{tuple(event_shape)} has {len(event_shape)}: give an event_shape with at "
                "least as many dims as the support's events."
            )
        self._support = constraints.independent(support, extra) if extra else support
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @property
    def support(self) -> Constraint:  # type: ignore[override]
        """The support given at construction (made independent over the event)."""
        return self._support

    def expand(self, batch_shape: Any, _instance: Any = None) -> ImproperUniform:
        new = self._get_checked_instance(ImproperUniform, _instance)
        new._support = self._support
        Distribution.__init__(new, torch.Size(batch_shape), self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        """Zero, with shape ``broadcast(value.shape[:-event_dim], batch_shape)``."""
        if self._validate_args:
            self._validate_sample(value)
        batch = value.shape[: value.dim() - len(self.event_shape)]
        own = self.batch_shape
        shape = batch if not own or own == batch else torch.broadcast_shapes(batch, own)
        return torch.zeros((), dtype=value.dtype, device=value.device).expand(shape)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        """Not possible: raises ``NotImplementedError`` with the remedy."""
        raise NotImplementedError(
            f"ImproperUniform({self._support}) is an improper flat prior and cannot be "
            "sampled. Inference initialises it without drawing it (the autoguides fall back "
            "to `init_to_feasible`; pass `init_loc_fn=init_to_value(values={...})` to choose "
            "the start). Prior predictive draws need a proper prior instead."
        )

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        """Not possible: raises ``NotImplementedError`` with the remedy."""
        return self.sample(sample_shape)

    def __repr__(self) -> str:
        return (
            f"ImproperUniform(support={self._support}, batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )


class FoldedDistribution(Distribution):
    """The distribution of ``|X|`` for a univariate ``X`` (``p(y) = p_X(y) + p_X(-y)``).

    Args:
        base: The distribution of ``X``; its event shape must be ``()``.
        validate_args: torch's sample validation (``None``: torch's default).

    Raises:
        TypeError: If ``base`` is not a torch ``Distribution``.
        ValueError: If ``base`` is not univariate.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> folded = FoldedDistribution(Normal(1.0, 1.0))
        >>> bool(folded.sample((100,)).min() >= 0)
        True
    """

    arg_constraints: dict = {}  # noqa: RUF012
    support = constraints.nonnegative

    def __init__(self, base: Distribution, validate_args: bool | None = None) -> None:
        if not isinstance(base, Distribution):
            raise TypeError(
                f"`base` must be a torch.distributions.Distribution, got {type(base).__name__}."
            )
        if base.event_shape:
            raise ValueError(
                f"`base` must be univariate (event_shape ()), got event_shape "
                f"{tuple(base.event_shape)}."
            )
        self.base = base
        super().__init__(base.batch_shape, validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        """Whether the base distribution has a reparameterised sampler."""
        return self.base.has_rsample

    def expand(self, batch_shape: Any, _instance: Any = None) -> FoldedDistribution:
        new = self._get_checked_instance(type(self), _instance)
        new.base = self.base.expand(batch_shape)
        Distribution.__init__(new, new.base.batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: Any = ()) -> Tensor:
        with torch.no_grad():
            return self.base.sample(sample_shape).abs()

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        return self.base.rsample(sample_shape).abs()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base})"

    def _folded_log_prob(self, value: Tensor) -> Tensor:
        return torch.logaddexp(self.base.log_prob(value), self.base.log_prob(-value))

    def log_prob(self, value: Tensor) -> Tensor:
        """``log(p_X(y) + p_X(-y))`` for ``y ≥ 0``, ``-inf`` below 0."""
        if self._validate_args:
            self._validate_sample(value)
        lp = self._folded_log_prob(value)
        return torch.where(value >= 0, lp, float("-inf"))


class HalfStudentT(FoldedDistribution):
    """The Student-t with location 0 folded onto ``[0, ∞)``: ``2 t_ν(y; 0, s)``, ``y ≥ 0``.

    Stan writes it ``real<lower=0> tau; tau ~ student_t(nu, 0, s);``.

    Args:
        df: Degrees of freedom ν (positive).
        scale: Scale s (positive).
        validate_args: torch's argument and sample validation (``None``: torch's default).

    Example:
        >>> import torch
        >>> d = HalfStudentT(3.0, 2.0)
        >>> d
        HalfStudentT(df: 3.0, scale: 2.0)
        >>> bool(d.log_prob(torch.tensor(1.0)) > d.log_prob(torch.tensor(5.0)))
        True
    """

    arg_constraints = {"df": constraints.positive, "scale": constraints.positive}  # noqa: RUF012

    def __init__(
        self, df: Tensor | float, scale: Tensor | float = 1.0, validate_args: bool | None = None
    ) -> None:
        df, scale = broadcast_all(df, scale)
        base = StudentT(df, torch.zeros_like(scale), scale, validate_args=validate_args)
        super().__init__(base, validate_args=validate_args)

    @property
    def df(self) -> Tensor:
        """Degrees of freedom."""
        return self.base.df

    @property
    def scale(self) -> Tensor:
        """Scale."""
        return self.base.scale

    def __repr__(self) -> str:
        df, scale = self.df, self.scale
        show = (lambda t: t.item()) if df.dim() == 0 else (lambda t: t.size())
        return f"HalfStudentT(df: {show(df)}, scale: {show(scale)})"

    def _folded_log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value) + _LOG_2  # the base is symmetric about 0

    @property
    def mean(self) -> Tensor:
        """``2 s √ν Γ((ν+1)/2) / (√π (ν−1) Γ(ν/2))`` for ν > 1, else ``inf``."""
        df, scale = self.df, self.scale
        log_m = (
            torch.lgamma((df + 1) / 2)
            - torch.lgamma(df / 2)
            + 0.5 * torch.log(df)
            - 0.5 * math.log(math.pi)
            - torch.log((df - 1).clamp(min=1e-30))
        )
        return torch.where(df > 1, 2 * scale * log_m.exp(), float("inf"))

    @property
    def variance(self) -> Tensor:
        """``s² ν/(ν−2) − mean²`` for ν > 2, ``inf`` for 1 < ν ≤ 2, else ``nan``."""
        df = self.df
        second = self.scale**2 * df / (df - 2).clamp(min=1e-30)
        var = torch.where(df > 2, second - self.mean**2, float("inf"))
        return torch.where(df > 1, var, float("nan"))


def _log_ndtr_masked(z: Tensor, inf_value: float) -> Tensor:
    """``log Φ(z)``, with ``inf_value`` where ``z`` is infinite and finite gradients."""
    finite = torch.isfinite(z)
    return torch.where(finite, torch.special.log_ndtr(torch.where(finite, z, 0.0)), inf_value)


def _log_diff_ndtr(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Φ(hi) − Φ(lo))`` for ``lo ≤ hi``, as ``log(Φ(−lo) − Φ(−hi))`` where ``lo > 0``
    (two numbers near 1 would cancel; two in the left tail keep their digits)."""
    flip = lo > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_lo = _log_ndtr_masked(lo, -math.inf)
    log_hi = _log_ndtr_masked(hi, 0.0)
    return log_hi + _log1mexp(log_lo - log_hi)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x ≤ 0``, accurate at both ends."""
    near = x > -_LOG_2
    return torch.where(
        near,
        torch.log(-torch.expm1(torch.where(near, x, -1.0))),
        torch.log1p(-torch.exp(torch.where(near, -1.0, x))),
    )


class TruncatedNormal(Distribution):
    """``Normal(loc, scale)`` restricted to ``[low, high]``; either bound may be infinite.

    The normaliser ``Z = Φ(β) − Φ(α)`` (``α, β`` the standardised bounds) is computed in
    log space, on the tail side where it loses no digits, so bounds far out in a tail keep
    a finite log density; sampling inverts the CDF, so ``rsample`` is reparameterised in
    ``loc``, ``scale`` and the bounds.

    Args:
        loc: Location of the untruncated normal.
        scale: Its scale (positive).
        low: Lower bound (``-inf``: none). A tensor must be all finite or all ``-inf``.
        high: Upper bound (``inf``: none), above ``low``. A tensor must be all finite or all
            ``inf``.
        validate_args: torch's argument and sample validation (``None``: torch's default).

    Raises:
        ValueError: If a bound mixes finite and infinite entries, ``low`` is ``+inf`` or
            ``high`` is ``-inf``, or (with validation) ``low >= high``.

    Example:
        >>> import torch
        >>> d = TruncatedNormal(0.0, 1.0, low=0.0)
        >>> round(float(d.mean), 4)  # the half-normal mean √(2/π)
        0.7979
    """

    arg_constraints = {  # noqa: RUF012
        "loc": constraints.real,
        "scale": constraints.positive,
        "low": constraints.real,  # `real` admits ±inf (it only rejects NaN)
        "high": constraints.real,
    }
    has_rsample = True

    def __init__(
        self,
        loc: Tensor | float,
        scale: Tensor | float,
        low: Tensor | float = -math.inf,
        high: Tensor | float = math.inf,
        validate_args: bool | None = None,
    ) -> None:
        self.loc, self.scale, self.low, self.high = broadcast_all(loc, scale, low, high)
        _check_bound("low", self.low, -math.inf)
        _check_bound("high", self.high, math.inf)
        super().__init__(self.loc.shape, validate_args=validate_args)
        if self._validate_args and not bool((self.low < self.high).all()):
            raise ValueError(
                f"`low` must be below `high`, got low={self.low.tolist()} and "
                f"high={self.high.tolist()}."
            )

    def expand(self, batch_shape: Any, _instance: Any = None) -> TruncatedNormal:
        new = self._get_checked_instance(TruncatedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("loc", "scale", "low", "high"):
            setattr(new, name, getattr(self, name).expand(batch_shape))
        Distribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> Constraint:
        """``real``, ``greater_than(low)``, ``less_than(high)`` or ``interval(low, high)``."""
        has_low = bool(torch.isfinite(self.low).any())
        has_high = bool(torch.isfinite(self.high).any())
        if has_low and has_high:
            return constraints.interval(self.low, self.high)
        if has_low:
            return constraints.greater_than(self.low)
        if has_high:
            return constraints.less_than(self.high)
        return constraints.real

    def _standardise(self, bound: Tensor) -> Tensor:
        # An infinite bound stays a constant: (inf - loc) / scale would pass 0 * inf = nan
        # to the gradients of loc and scale.
        finite = torch.isfinite(bound)
        z = (torch.where(finite, bound, 0.0) - self.loc) / self.scale
        return torch.where(finite, z, bound)

    def _bounds(self) -> tuple[Tensor, Tensor]:
        return self._standardise(self.low), self._standardise(self.high)

    @property
    def log_normalizer(self) -> Tensor:
        """``log Z = log(Φ(β) − Φ(α))``, shape ``batch_shape``."""
        alpha, beta = self._bounds()
        return _log_diff_ndtr(alpha, beta)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        lp = -0.5 * z**2 - _HALF_LOG_2PI - torch.log(self.scale) - self.log_normalizer
        inside = (value >= self.low) & (value <= self.high)
        return torch.where(inside, lp, float("-inf"))

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.icdf(u)

    def cdf(self, value: Tensor) -> Tensor:
        """``(Φ(z) − Φ(α)) / Z``, computed in log space on the accurate tail side."""
        alpha, beta = self._bounds()
        z = torch.minimum(torch.maximum((value - self.loc) / self.scale, alpha), beta)
        return torch.exp(_log_diff_ndtr(alpha, z) - self.log_normalizer)

    def icdf(self, value: Tensor) -> Tensor:
        """The quantile function; where ``α > 0`` it inverts the mirrored (left-tail) CDF,
        so bounds far out in the right tail keep their precision too."""
        alpha, beta = self._bounds()
        flip = alpha > 0
        lo = torch.where(flip, -beta, alpha)
        q = torch.where(flip, 1 - value, value)
        tiny = torch.finfo(q.dtype).tiny
        log_p = torch.logaddexp(
            _log_ndtr_masked(lo, -math.inf), torch.log(q.clamp(min=tiny)) + self.log_normalizer
        )
        z = torch.special.ndtri(log_p.exp().clamp(max=1.0 - torch.finfo(q.dtype).eps / 2))
        z = torch.where(flip, -z, z)
        z = torch.minimum(torch.maximum(z, alpha), beta)  # round-off must not leave the support
        return self.loc + self.scale * z

    def _phi_terms(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(φ(α) − φ(β)) / Z``, ``(α φ(α) − β φ(β)) / Z`` (0 at infinite bounds), Z."""
        alpha, beta = self._bounds()

        def pdf_and_moment(t: Tensor) -> tuple[Tensor, Tensor]:
            finite = torch.isfinite(t)
            t0 = torch.where(finite, t, 0.0)
            pdf = torch.where(finite, torch.exp(-0.5 * t0**2 - _HALF_LOG_2PI), 0.0)
            return pdf, t0 * pdf

        pa, ma = pdf_and_moment(alpha)
        pb, mb = pdf_and_moment(beta)
        z = self.log_normalizer.exp()
        return (pa - pb) / z, (ma - mb) / z, z

    @property
    def mean(self) -> Tensor:
        """``loc + scale (φ(α) − φ(β)) / Z``."""
        d, _, _ = self._phi_terms()
        return self.loc + self.scale * d

    @property
    def variance(self) -> Tensor:
        """``scale² (1 + (α φ(α) − β φ(β)) / Z − ((φ(α) − φ(β)) / Z)²)``."""
        d, m, _ = self._phi_terms()
        return self.scale**2 * (1 + m - d**2)


def _check_bound(name: str, bound: Tensor, allowed_inf: float) -> None:
    infinite = torch.isinf(bound)
    if bool((infinite & (bound != allowed_inf)).any()):
        raise ValueError(f"`{name}` may be infinite only as {allowed_inf}, got {bound.tolist()}.")
    if bool(infinite.any()) and not bool(infinite.all()):
        raise ValueError(
            f"`{name}` must be all finite or all {allowed_inf} (the support of a latent site "
            f"must be one constraint), got {bound.tolist()}. Split the site in two."
        )
