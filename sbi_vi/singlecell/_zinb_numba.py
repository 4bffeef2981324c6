"""The numba code of :mod:`sbi_vi.singlecell.zinb_kernel` (imported on first use: numba takes
a moment to import). Module-level functions, so that numba's disk cache can keep the kernel.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

BLOCK_GENES = 128  # genes summed in float32 before the float64 row sum

_f32 = np.float32
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no nnan / ninf: NaN survives
_inline = numba.njit(inline="always", error_model="numpy", fastmath=_FASTMATH)


@intrinsic
def _bits_to_float(typingctx, bits):  # reinterpret an int32 as a float32
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _float_to_bits(typingctx, value):  # reinterpret a float32 as an int32
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@_inline
def exp32(v):  # pragma: no cover - compiled
    """Cephes' ``expf``, branch-free; ``v`` is clamped to [-87, 88] (e^-87 ≈ 1.6e-38)."""
    v = min(max(v, _f32(-87.0)), _f32(88.0))
    y = v * _f32(1.44269504088896341)
    k = np.int32(y + (_f32(0.5) if y >= _f32(0.0) else _f32(-0.5)))  # round to nearest
    n = _f32(k)
    r = v - n * _f32(0.693359375) + n * _f32(2.12194440e-4)
    p = _f32(1.9875691500e-4)
    p = p * r + _f32(1.3981999507e-3)
    p = p * r + _f32(8.3334519073e-3)
    p = p * r + _f32(4.1665795894e-2)
    p = p * r + _f32(1.6666665459e-1)
    p = p * r + _f32(5.0000001201e-1)
    p = p * r * r + r + _f32(1.0)
    return p * _bits_to_float((k + np.int32(127)) << np.int32(23))  # × 2^k


@_inline
def log32(v):  # pragma: no cover - compiled
    """Cephes' ``logf``, branch-free, for normal positive ``v`` (smaller ``v`` is clamped)."""
    bits = _float_to_bits(max(v, _f32(1.17549435e-38)))
    e = _f32(((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(126))
    m = _bits_to_float((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000))  # [0.5, 1)
    low = m < _f32(0.707106781186547524)
    e = e - _f32(1.0) if low else e
    m = m + m - _f32(1.0) if low else m - _f32(1.0)
    z = m * m
    p = _f32(7.0376836292e-2)
    p = p * m - _f32(1.1514610310e-1)
    p = p * m + _f32(1.1676998740e-1)
    p = p * m - _f32(1.2420140846e-1)
    p = p * m + _f32(1.4249322787e-1)
    p = p * m - _f32(1.6668057665e-1)
    p = p * m + _f32(2.0000714765e-1)
    p = p * m - _f32(2.4999993993e-1)
    p = p * m + _f32(3.3333331174e-1)
    y = p * m * z - e * _f32(2.12194440e-4) - _f32(0.5) * z
    return m + y + e * _f32(0.693359375)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH)
def zinb_rows(
    a, a_col, pi, pi_col, x, theta, theta_log_theta, log_library, out, r0, r1
):  # pragma: no cover
    """Rows ``r0 .. r1`` of the ZINB sum into ``out``.

    Row ``r`` reads ``a[r, a_col + g]`` and ``pi[r, pi_col + g]`` (``[R, *]``), the counts
    of cell ``r % B`` (``x`` ``[B, G]``), θ and ``θ log(θ + ε)`` from row ``r % T``
    (``[T, G]``) and ``log_library[r % len]``.
    """
    n_genes = x.shape[1]
    n_cells, n_theta, n_lib = x.shape[0], theta.shape[0], log_library.shape[0]
    scaled = np.empty(n_genes, dtype=np.float32)
    eps, one, zero = _f32(1e-8), _f32(1.0), _f32(0.0)
    for r in range(r0, r1):
        ar, pr, xr = a[r], pi[r], x[r % n_cells]
        tr, cr = theta[r % n_theta], theta_log_theta[r % n_theta]
        lib = log_library[r % n_lib]
        top = ar[a_col]
        for g in range(n_genes):
            top = max(top, ar[a_col + g])
        total = zero
        for g in range(n_genes):
            e = exp32(ar[a_col + g] - top)
            scaled[g] = e
            total += e
        scale = _f32(math.exp(lib)) / total
        acc, count = 0.0, 0.0
        for g0 in range(0, n_genes, BLOCK_GENES):
            part, part_count = zero, zero
            for g in range(g0, min(g0 + BLOCK_GENES, n_genes)):
                ag, pg, xg, tg = ar[a_col + g], pr[pi_col + g], xr[g], tr[g]
                log_theta_mu = log32(tg + eps + scaled[g] * scale)
                nb_zero = cr[g] - tg * log_theta_mu  # L = log NB(0)
                positive = xg > zero
                t = exp32(-abs(pg))
                d = exp32(-abs(pg - nb_zero))
                ratio = (one + (zero if positive else d)) / (one + t)
                head = nb_zero - xg * log_theta_mu if positive else max(pg, nb_zero)
                term = head - max(pg, zero) + log32(ratio) + xg * ag
                part += term + zero * pg  # 0 · π: a NaN π reaches the sum
                part_count += xg
            acc += part
            count += part_count
        out[r] = acc + count * (lib - top - math.log(total))
