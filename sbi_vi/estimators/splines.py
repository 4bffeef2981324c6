r"""A monotonic rational-quadratic spline with fewer tensor operations than zuko's.

The neural spline flow of :mod:`sbi_vi.estimators.flows` is zuko's masked autoregressive
flow with this univariate transform passed in (zuko's ``NSF`` is exactly that flow with
``zuko.transforms.MonotonicRQSTransform``). The parametrisation, the bound and the minimum
slope are zuko's; only the evaluation is rearranged for training speed: batched
``searchsorted``, one ``gather`` for the six bin quantities, and a softmax written as
``exp / sum`` (torch's CPU softmax over a last dim of 10 is ~10x slower than over 16). In a
training step of a 5-transform NSF this halves the time; a test checks equality with zuko.

Reference: Durkan et al. (2019), *Neural Spline Flows*, arXiv:1906.04032.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Transform, constraints

__all__ = ["RQSTransform"]


class RQSTransform(Transform):
    r"""A monotonic rational-quadratic spline on :math:`[-B, B]`, identity outside.

    Args:
        widths: Unconstrained bin widths, shape ``[*, K]``.
        heights: Unconstrained bin heights, shape ``[*, K]``.
        derivatives: Unconstrained derivatives at the ``K - 1`` inner knots, ``[*, K - 1]``.
        bound: The bound :math:`B` of the spline's domain and codomain.
        slope: The minimum slope of the spline.

    Example:
        >>> t = RQSTransform(torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 7))
        >>> x = torch.randn(3)
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-5)
        True
    """

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(
        self,
        widths: Tensor,
        heights: Tensor,
        derivatives: Tensor,
        bound: float = 5.0,
        slope: float = 1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        c = -2.0 / math.log(slope)
        # Soft-bound the logits to |.| < -log(slope)/2 (zuko's choice): exp cannot overflow,
        # so the softmax needs no max-shift.
        w = (widths / (1 + (c * widths).abs())).exp()
        h = (heights / (1 + (c * heights).abs())).exp()
        d = derivatives / (1 + (0.5 * c * derivatives).abs())
        self.bound = bound
        self.widths = (2 * bound) * w / w.sum(-1, keepdim=True)
        self.heights = (2 * bound) * h / h.sum(-1, keepdim=True)
        self.left = torch.cumsum(self.widths, -1) - self.widths - bound  # x of left knots
        self.bottom = torch.cumsum(self.heights, -1) - self.heights - bound  # y of left knots
        d = F.pad(d, (1, 1)).exp()  # slope 1 at ±B
        self.d0, self.d1 = d[..., :-1], d[..., 1:]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bins={self.widths.shape[-1]})"

    def _bin(self, knots: Tensor, v: Tensor) -> tuple[Tensor, ...]:
        """The quantities of the bin that holds ``v`` (left/bottom knots sorted in ``knots``)."""
        bins = knots.shape[-1]
        shape = torch.broadcast_shapes(v.shape, knots.shape[:-1])
        inner = knots[..., 1:].expand(*shape, bins - 1).contiguous()
        k = torch.searchsorted(inner, v.expand(shape).unsqueeze(-1).contiguous())
        table = torch.stack(
            (self.left, self.widths, self.bottom, self.heights, self.d0, self.d1), dim=-1
        ).expand(*shape, bins, 6)
        index = k.unsqueeze(-1).expand(*shape, 1, 6)
        return table.gather(-2, index).squeeze(-2).unbind(-1)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x0, w, y0, h, d0, d1 = self._bin(self.left, x)
        s = h / w
        z = ((x - x0) / w).clamp(0, 1)  # clamped outside [-B, B]: finite, then masked
        one_minus_z = 1 - z
        zz = z * one_minus_z
        z2 = z * z
        two_s = 2 * s
        den = torch.addcmul(s, d0 + d1 - two_s, zz)
        y = y0 + h * torch.addcmul(s * z2, d0, zz) / den
        # dy/dx = s² (d1 z² + 2 s z(1-z) + d0 (1-z)²) / den²
        slope = torch.addcmul(torch.addcmul(d0 * one_minus_z.square(), d1, z2), two_s, zz)
        ladj = (slope * (s / den).square()).log()
        inside = x.abs() < self.bound
        return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)

    def _call(self, x: Tensor) -> Tensor:
        return self.call_and_ladj(x)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.call_and_ladj(x)[1]

    def _inverse(self, y: Tensor) -> Tensor:
        x0, w, y0, h, d0, d1 = self._bin(self.bottom, y)
        s = h / w
        u = torch.minimum((y - y0).clamp(min=0), h)
        a = h * (s - d0) + u * (d0 + d1 - 2 * s)
        b = h * d0 - u * (d0 + d1 - 2 * s)
        c = -s * u
        z = 2 * c / (-b - (b * b - 4 * a * c).clamp(min=0).sqrt())
        return torch.where(y.abs() < self.bound, x0 + z * w, y)
