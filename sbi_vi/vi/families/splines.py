r"""A monotonic rational-quadratic spline with fewer tensor operations than zuko's.

The neural spline flows of :mod:`sbi_vi.estimators.flows` (NLE) and of the ``"nsf"``
variational family (:mod:`sbi_vi.vi.families.flows`) are zuko's masked autoregressive flow
with this univariate transform passed in (zuko's ``NSF`` is exactly that flow with
``zuko.transforms.MonotonicRQSTransform``). The parametrisation, the bound and the minimum
slope are zuko's; only the evaluation is rearranged for training speed.

The forward direction (:meth:`RQSTransform.call_and_ladj`) is one autograd node with a
hand-written backward. It is the density of an NLE flow, which training and the potentials
evaluate, and the sampling of the variational family, which is arranged so that sampling is
the forward pass. From the packed unconstrained parameters ``[*, 3K - 1]`` it normalises
widths and heights together, finds the bin with one comparison against the cumulative
widths, gathers the six quantities of that bin and evaluates the spline and its
log-derivative; the backward uses the closed-form softmax gradient (the gathered bin only
touches ``K`` entries through a mask). Against the same computation left to autograd this
is about 2-3x faster in a training step of a 5-transform NSF; tests check the values
against zuko and the gradients with ``gradcheck``. The inverse keeps plain autograd
operations.

Reference: Durkan et al. (2019), *Neural Spline Flows*, arXiv:1906.04032.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.distributions import Transform, constraints

__all__ = ["PackedSpline", "RQSTransform", "spline_call_and_ladj"]

_CACHE: dict[tuple, Tensor] = {}


def _constant(kind: str, bins: int, c: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Cached constants: ``scales [3K - 1]``, the soft-bound factors (``c`` on widths and
    heights, ``c / 2`` on derivatives, zuko's choice); ``prefix [K, K + 1]``, the matrix of
    exclusive prefix sums (``v @ prefix = [0, v_0, v_0 + v_1, ..., Σ v]``); ``cumsum
    [K + 1, K]``, that of inclusive ones over the first K entries. Sums as small matmuls:
    torch's CPU reductions and scans over a last dimension of ~10 are several times slower."""
    key = (kind, bins, c, dtype, device)
    value = _CACHE.get(key)
    if value is None:
        if kind == "scales":
            value = torch.full((3 * bins - 1,), c, dtype=dtype, device=device)
            value[2 * bins :] = 0.5 * c
        elif kind == "prefix":
            value = torch.ones(bins, bins + 1, dtype=dtype, device=device).triu(1)
        else:
            value = torch.ones(bins + 1, bins, dtype=dtype, device=device).triu()
        _CACHE[key] = value
    return value


def _normalised(phi: Tensor, bins: int, bound: float, c: float):
    """The shared start of both directions: ``r = 1 / (1 + |c φ|)``, ``e = exp(φ r)``, the
    exclusive prefix sums ``C [*, 2, K + 1]`` of the exponentiated widths and heights, and
    the factors ``scale [*, 2]`` that make each sum ``2B``."""
    r = (phi * _constant("scales", bins, c, phi.dtype, phi.device)).abs_().add_(1).reciprocal_()
    e = (phi * r).exp_()
    wh = e[..., : 2 * bins].unflatten(-1, (2, bins))
    # 2-D: a strided batch of small matrices would go to a slow batched matmul.
    prefix = (wh.reshape(-1, bins) @ _constant("prefix", bins, c, phi.dtype, phi.device)).view(
        *wh.shape[:-1], bins + 1
    )
    scale = (2 * bound) / prefix[..., bins]
    return r, e, wh, prefix, scale


class _SplineForward(torch.autograd.Function):
    """``(y, log|dy/dx|)`` of the spline with packed parameters ``phi [*, 3K-1]`` at ``x [*]``
    (same leading shape), with an analytic backward."""

    @staticmethod
    def forward(ctx, phi: Tensor, x: Tensor, bins: int, bound: float, c: float):  # type: ignore[override]
        r, e, wh, prefix, scale = _normalised(phi, bins, bound, c)
        # Bin index: inner knots (cumulative widths − B) strictly below x, as searchsorted.
        knots = prefix[..., 0, 1:bins] * scale[..., :1]
        k = (knots < (x + bound).unsqueeze(-1)).sum(-1)
        index = k.unsqueeze(-1).unsqueeze(-1).expand(*k.shape, 2, 1)
        low = prefix.gather(-1, index).squeeze(-1) * scale  # [*, 2]: x0 + B, y0 + B
        whk = wh.gather(-1, index).squeeze(-1) * scale  # [*, 2]: bin width and height
        d = F.pad(e[..., 2 * bins :], (1, 1), value=1.0)  # slope 1 at ±B, [*, K + 1]
        d0, d1 = d.gather(-1, torch.stack((k, k + 1), -1)).unbind(-1)
        w, h = whk.unbind(-1)
        x0 = low[..., 0] - bound
        y0 = low[..., 1] - bound
        s = h / w
        zr = (x - x0) / w
        z = zr.clamp(0, 1)  # clamped outside [-B, B]: finite, then masked
        omz = 1 - z
        q = z * omz
        z2 = z * z
        dsum = d0 + d1 - 2 * s
        inv_den = torch.addcmul(s, dsum, q).reciprocal_()
        pd = torch.addcmul(s * z2, d0, q) * inv_den  # (y - y0) / h
        y = torch.addcmul(y0, h, pd)
        m = torch.addcmul(torch.addcmul(d0 * omz * omz, d1, z2), 2 * s, q)
        ladj = (m * (s * inv_den).square()).log()
        inside = x.abs() < bound
        ctx.save_for_backward(
            r, e, k, scale, low, whk, d0, d1, s, z, omz, q, z2, dsum, inv_den, pd, m, zr, inside
        )
        ctx.spline = (bins, bound, c)
        return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: Tensor | None, gl: Tensor | None):  # type: ignore[override]
        (r, e, k, scale, low, whk, d0, d1, s, z, omz, q, z2, dsum, inv_den, pd, m, zr, inside) = (
            ctx.saved_tensors
        )
        bins, bound, c = ctx.spline
        if gy is None:
            gy = torch.zeros_like(z)
        if gl is None:
            gl = torch.zeros_like(z)
        w, h = whk.unbind(-1)
        ins = inside.to(z.dtype)
        # The spline at fixed bin: gradients with respect to z, s = h / w, and the bin's
        # (x0, w, y0, h, d0, d1).
        one_m2z = 1 - 2 * z
        one_m2q = 1 - 2 * q
        inv_m = m.reciprocal()
        dden_dz = dsum * one_m2z
        gy_r = gy * h * inv_den
        two_gl = 2 * gl
        g_z = gy_r * (2 * s * z + d0 * one_m2z - pd * dden_dz) + two_gl * (
            (d1 * z + s * one_m2z - d0 * omz) * inv_m - dden_dz * inv_den
        )
        g_z = g_z * ((zr >= 0) & (zr <= 1)).to(z.dtype)
        g_s = gy_r * (z2 - pd * one_m2q) + two_gl * (
            q * inv_m + s.reciprocal() - one_m2q * inv_den
        )
        q_den = 2 * q * inv_den
        g_d0 = (gy_r * q * (1 - pd) + gl * (omz * omz * inv_m - q_den)) * ins
        g_d1 = (gl * (z2 * inv_m - q_den) - gy_r * pd * q) * ins
        inv_w = w.reciprocal()
        g_zw = g_z * inv_w
        g_x = torch.where(inside, g_zw, gy)
        g_low = torch.stack((-g_zw, gy), -1) * ins.unsqueeze(-1)  # d/d(x0 + B), d/d(y0 + B)
        g_whk = torch.stack((-(g_zw * z + g_s * s * inv_w), g_s * inv_w + gy * pd), -1)
        g_whk = g_whk * ins.unsqueeze(-1)  # d/dw, d/dh
        # Widths and heights: with W = scale · exp(u) and x0 + B = Σ_{j<k} W_j, w = W_k,
        # dL/du_j = W_j (g_low [j<k] + g_whk [j=k] − a), a = Σ_j W_j dL/dW_j / (2B). The
        # bracket is piecewise constant in j: three scattered steps, summed up by a matmul.
        a = (g_low * low + g_whk * whk) * (1 / (2 * bound))
        kk = k.unsqueeze(-1).unsqueeze(-1).expand(*k.shape, 2, 1)
        steps = torch.zeros(*k.shape, 2, bins + 1, dtype=z.dtype, device=z.device)
        steps.scatter_add_(
            -1,
            torch.cat((torch.zeros_like(kk), kk, kk + 1), -1),
            torch.stack((g_low - a, g_whk - g_low, -g_whk), -1) * scale.unsqueeze(-1),
        )
        wh = e[..., : 2 * bins].unflatten(-1, (2, bins))
        cumsum = _constant("cumsum", bins, c, z.dtype, z.device)
        g_wh = (steps.view(-1, bins + 1) @ cumsum).view(wh.shape) * wh
        # Derivatives: D_k = exp(u_{k-1}) and D_{k+1} = exp(u_k) at the inner knots.
        g_dk = torch.zeros(*k.shape, bins + 1, dtype=z.dtype, device=z.device)
        g_dk.scatter_(-1, torch.stack((k, k + 1), -1), torch.stack((g_d0, g_d1), -1))
        g_d = g_dk[..., 1:bins] * e[..., 2 * bins :]
        g_phi = torch.cat((g_wh.flatten(-2), g_d), -1) * (r * r)
        return g_phi, g_x, None, None, None


def spline_call_and_ladj(
    phi: Tensor, x: Tensor, bins: int, bound: float = 5.0, c: float = -2.0 / math.log(1e-3)
) -> tuple[Tensor, Tensor]:
    """``(y, log|dy/dx|)`` of the spline with packed parameters ``phi [*, 3K - 1]`` at
    ``x [*]`` (same leading shape); ``c = -2 / log(slope)``."""
    return _SplineForward.apply(phi, x, bins, bound, c)


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
        derivatives: Tensor | None = None,
        bound: float = 5.0,
        slope: float = 1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if derivatives is None:  # packed: heights is the bin count
            phi, bins = widths, int(heights)
        else:
            shape = torch.broadcast_shapes(
                widths.shape[:-1], heights.shape[:-1], derivatives.shape[:-1]
            )
            bins = widths.shape[-1]
            phi = torch.cat(
                (
                    widths.expand(*shape, bins),
                    heights.expand(*shape, bins),
                    derivatives.expand(*shape, bins - 1),
                ),
                -1,
            )
        if phi.shape[-1] != 3 * bins - 1:
            raise ValueError(
                f"Packed spline parameters need 3 * {bins} - 1 = {3 * bins - 1} entries; got "
                f"{phi.shape[-1]}."
            )
        self.phi = phi
        self.bins = bins
        self.bound = float(bound)
        self.c = -2.0 / math.log(slope)
        self._tables: tuple[Tensor, ...] | None = None

    @classmethod
    def packed(cls, phi: Tensor, bound: float = 5.0, slope: float = 1e-3) -> RQSTransform:
        """The spline of packed parameters ``[*, 3K - 1]`` = ``[widths, heights,
        derivatives]`` (the layout of zuko's ``unpack`` with shapes ``K, K, K - 1``)."""
        bins, rest = divmod(phi.shape[-1] + 1, 3)
        if rest or bins < 2:
            raise ValueError(f"Packed spline parameters need 3K - 1 entries; got {phi.shape[-1]}.")
        return cls(phi, bins, None, bound=bound, slope=slope)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bins={self.bins})"

    def _table(self) -> tuple[Tensor, ...]:
        """Widths, heights, left and bottom knots, and the knot derivatives (differentiable)."""
        if self._tables is None:
            # The arithmetic of the forward pass, so that inverse and forward round alike.
            k, bound = self.bins, self.bound
            _, e, wh, prefix, scale = _normalised(self.phi, k, bound, self.c)
            low = prefix[..., :k] * scale.unsqueeze(-1) - bound
            wh = wh * scale.unsqueeze(-1)
            d = F.pad(e[..., 2 * k :], (1, 1), value=1.0)
            widths, heights = wh.unbind(-2)
            left, bottom = low.unbind(-2)
            self._tables = (widths, heights, left, bottom, d[..., :-1], d[..., 1:])
        return self._tables

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        phi = self.phi
        shape = torch.broadcast_shapes(x.shape, phi.shape[:-1])
        if x.shape != shape:
            x = x.expand(shape)
        if phi.shape[:-1] != shape:
            phi = phi.expand(*shape, phi.shape[-1])
        return _SplineForward.apply(phi, x, self.bins, self.bound, self.c)

    def _call(self, x: Tensor) -> Tensor:
        return self.call_and_ladj(x)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.call_and_ladj(x)[1]

    def _inverse(self, y: Tensor) -> Tensor:
        widths, heights, left, bottom, d0, d1 = self._table()
        bins = widths.shape[-1]
        shape = torch.broadcast_shapes(y.shape, bottom.shape[:-1])
        inner = bottom[..., 1:].expand(*shape, bins - 1).contiguous()
        k = torch.searchsorted(inner, y.expand(shape).unsqueeze(-1).contiguous())
        table = torch.stack((left, widths, bottom, heights, d0, d1), dim=-1).expand(
            *shape, bins, 6
        )
        x0, w, y0, h, d0, d1 = (
            table.gather(-2, k.unsqueeze(-1).expand(*shape, 1, 6)).squeeze(-2).unbind(-1)
        )
        s = h / w
        u = torch.minimum((y - y0).clamp(min=0), h)
        a = h * (s - d0) + u * (d0 + d1 - 2 * s)
        b = h * d0 - u * (d0 + d1 - 2 * s)
        c = -s * u
        z = 2 * c / (-b - (b * b - 4 * a * c).clamp(min=0).sqrt())
        return torch.where(y.abs() < self.bound, x0 + z * w, y)


class PackedSpline:
    """Picklable constructor ``(*phi) -> RQSTransform`` for zuko's ``univariate`` argument:
    one packed tensor ``[*, 3K - 1]`` (zuko ``shapes=[(3K - 1,)]``), or widths, heights and
    derivatives as three tensors.

    Args:
        bound: The spline's (co)domain bound.
        slope: The minimum slope.
    """

    def __init__(self, bound: float = 5.0, slope: float = 1e-3):
        self.bound = bound
        self.slope = slope

    def __call__(self, *phi: Tensor) -> RQSTransform:
        if len(phi) == 1:
            return RQSTransform.packed(phi[0], bound=self.bound, slope=self.slope)
        return RQSTransform(*phi, bound=self.bound, slope=self.slope)

    def __setstate__(self, state: dict) -> None:  # pickles from before `slope` existed
        self.__dict__.update({"slope": 1e-3, **state})

    def __repr__(self) -> str:
        return f"RQSTransform(bound={self.bound})"
