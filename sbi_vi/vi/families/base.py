"""The family contract: a module whose ``forward(context=None)`` returns a fresh q.

A family is a ``torch.nn.Module``. ``family()`` gives q(θ) for one observation;
``family(x)`` with ``x`` of shape ``[B, L]`` gives q(θ | x) with batch shape ``[B]``. There
is no mode flag: the conditional case only passes a context.

Families parametrise a density over unconstrained ``u ∈ ℝᴰ`` and push it through a link
transform onto the prior's support (:class:`LinkedDistribution`), so samples always lie in
the support and ``log_prob`` carries the log-determinant.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints
from torch.distributions.transforms import Transform, identity_transform

__all__ = ["Family", "LinkedDistribution", "rsample_and_log_prob"]


def rsample_and_log_prob(
    q: Distribution, sample_shape: Size | tuple = ()
) -> tuple[Tensor, Tensor]:
    """Draw reparametrised samples of ``q`` and their log densities in one pass if possible.

    Args:
        q: A distribution with ``rsample`` (and ideally ``rsample_and_log_prob``).
        sample_shape: Leading sample shape ``S``.

    Returns:
        ``theta`` of shape ``[*S, *batch, D]`` and ``log_q`` of shape ``[*S, *batch]``.
    """
    method = getattr(q, "rsample_and_log_prob", None)
    if method is not None:
        return method(Size(sample_shape))
    theta = q.rsample(Size(sample_shape))
    return theta, q.log_prob(theta)


class LinkedDistribution(Distribution):
    r"""The push-forward of a base density on ℝᴰ through a link transform.

    With :math:`\theta = T(u)`, :math:`\log q(\theta) = \log q_u(u) - \log|\det J_T(u)|`.
    ``log_prob`` returns ``-inf`` for θ outside the link's codomain.

    Args:
        base: Density over unconstrained ``u``, event shape ``[D]``.
        link: Bijection from ℝᴰ onto the support (event dim 1 or 0).
    """

    has_rsample = True
    arg_constraints: dict = {}  # noqa: RUF012

    def __init__(self, base: Distribution, link: Transform = identity_transform):
        self.base = base
        self.link = link
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return self.link.codomain

    def _ladj(self, u: Tensor, theta: Tensor) -> Tensor:
        ladj = self.link.log_abs_det_jacobian(u, theta)
        if ladj.ndim == u.ndim:  # element-wise transform: sum over the event dim
            ladj = ladj.sum(-1)
        return ladj

    def rsample_and_log_prob(self, sample_shape: Size | tuple = ()) -> tuple[Tensor, Tensor]:
        u, log_q = rsample_and_log_prob(self.base, sample_shape)
        theta = self.link(u)
        return theta, log_q - self._ladj(u, theta)

    def rsample(self, sample_shape: Size | tuple = ()) -> Tensor:
        return self.link(self.base.rsample(Size(sample_shape)))

    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, theta: Tensor) -> Tensor:
        if self.link is identity_transform:
            return self.base.log_prob(theta)
        inside = self.link.codomain.check(theta)
        if inside.ndim == theta.ndim:
            inside = inside.all(-1)
        safe = torch.where(inside.unsqueeze(-1), theta, self._inner_point(theta))
        u = self.link.inv(safe)
        log_q = self.base.log_prob(u) - self._ladj(u, safe)
        return torch.where(inside, log_q, torch.full_like(log_q, float("-inf")))

    def expand(self, batch_shape: Size | tuple, _instance: Any = None) -> LinkedDistribution:
        """The same density with batch shape ``batch_shape`` (independent copies).

        Bases without ``expand`` of their own (zuko flows) may still gain leading batch
        dimensions: their draws then get those dims as extra sample dims.
        """
        batch_shape = Size(batch_shape)
        try:
            base = self.base.expand(batch_shape)
        except NotImplementedError:
            base = _LeadingExpand(self.base, batch_shape)
        return LinkedDistribution(base, self.link)

    def _inner_point(self, theta: Tensor) -> Tensor:
        zero = torch.zeros(theta.shape[-1], dtype=theta.dtype, device=theta.device)
        return self.link(zero).detach().expand_as(theta)

    def __repr__(self) -> str:
        return f"LinkedDistribution(base={self.base!r}, link={self.link!r})"


class _LeadingExpand(Distribution):
    """``base`` with leading batch dimensions prepended (independent, identical copies)."""

    has_rsample = True
    arg_constraints: dict = {}  # noqa: RUF012

    def __init__(self, base: Distribution, batch_shape: Size):
        extra = len(batch_shape) - len(base.batch_shape)
        if extra < 0 or batch_shape[extra:] != base.batch_shape:
            raise NotImplementedError(
                f"cannot expand batch shape {tuple(base.batch_shape)} to {tuple(batch_shape)}."
            )
        self.base = base
        self._lead = batch_shape[:extra]
        super().__init__(batch_shape, base.event_shape, validate_args=False)

    def rsample_and_log_prob(self, sample_shape: Size | tuple = ()) -> tuple[Tensor, Tensor]:
        return rsample_and_log_prob(self.base, Size(sample_shape) + self._lead)

    def rsample(self, sample_shape: Size | tuple = ()) -> Tensor:
        return self.base.rsample(Size(sample_shape) + self._lead)

    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value)


class Family(nn.Module, abc.ABC):
    """Base class of variational families: ``forward(context=None) -> Distribution``.

    Subclasses implement :meth:`base` (the density over unconstrained ``u``); the family
    owns the standardisation ``u ↦ shift + scale·u`` and the link onto the support.

    Args:
        event_size: The dimension ``D`` of θ.
        link: Bijection from ℝᴰ onto the prior's support.
        shift: Location of the standardisation in unconstrained space, shape ``[D]``.
        scale: Scale of the standardisation in unconstrained space, shape ``[D]``.
        embedding_net: Network applied to the context before the family reads it (its
            parameters are the family's, so stick-the-landing and DReG detach them too);
            ``context_size`` of a conditional family is then the size of its output.
    """

    #: Whether ``log_prob`` of arbitrary θ is as cheap as sampling (for divergence choice).
    direction: str = "both"
    #: Whether parameters with an extra leading dim B give a batch of B independent q's
    #: (:func:`~sbi_vi.vi.families.batched.batch_family`: several observations in one run).
    batchable: bool = False

    def __init__(
        self,
        event_size: int,
        link: Transform = identity_transform,
        shift: Tensor | None = None,
        scale: Tensor | None = None,
        *,
        embedding_net: nn.Module | None = None,
    ):
        super().__init__()
        self.event_size = int(event_size)
        self.embedding_net = embedding_net
        self.link = link
        self.register_buffer(
            "shift", torch.zeros(event_size) if shift is None else torch.as_tensor(shift).clone()
        )
        self.register_buffer(
            "scale", torch.ones(event_size) if scale is None else torch.as_tensor(scale).clone()
        )

    @property
    def event_shape(self) -> Size:
        return Size([self.event_size])

    @abc.abstractmethod
    def base(self, context: Tensor | None = None) -> Distribution:
        """The standardised density over unconstrained ``u`` (before shift/scale and link)."""

    def forward(self, context: Tensor | None = None) -> Distribution:
        """Return q(θ) (``context=None``) or q(θ | context) with batch shape ``context[:-1]``."""
        from torch.distributions.transforms import AffineTransform, ComposeTransform

        affine = AffineTransform(self.shift, self.scale, event_dim=1)
        link = (
            ComposeTransform([affine, self.link])
            if self.link is not identity_transform
            else affine
        )
        if context is not None and self.embedding_net is not None:
            context = self.embedding_net(context)
        return LinkedDistribution(self.base(context), link)
