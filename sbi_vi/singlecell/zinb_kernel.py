r"""The ZINB log-likelihood of scVI's decoder without gradients, as one compiled CPU kernel.

:func:`~sbi_vi.singlecell.softmax_nb.softmax_nb_log_likelihood` evaluates, per row of
decoder logits ``a`` and zero-inflation logits ``π``,

.. math::

    \sum_g \Big[ [x_g > 0] \big(L_g - x_g \log(θ_g + μ_g)\big)
        + [x_g = 0]\, \mathrm{logaddexp}(π_g, L_g) - \mathrm{softplus}(π_g) + x_g a_g \Big]
        + n (\log ℓ - \mathrm{lse}(a)),

with ``μ = ℓ softmax(a)``, ``L = θ log θ − θ log(θ + μ)`` (log NB(0)) and ``n = Σ_g x_g``
(the gamma terms are the caller's). Through torch, without gradients, that is about twenty
passes over ``[draws, cells, genes]`` buffers, each reading and writing memory; here it is
one numba kernel that reads each row of ``a`` and ``π`` twice while it is in the L1 cache:
once for the softmax's maximum and sum, once for everything else. The marginal LL of scVI
is mostly this sum (and the decoder's matrix products).

Per entry it needs five transcendental functions. In the stable form used,

.. math::

    \mathrm{logaddexp}(π, L) - \mathrm{softplus}(π) = \max(π, L) - \max(π, 0)
        + \log \frac{1 + e^{-|π - L|}}{1 + e^{-|π|}}, \qquad
    -\mathrm{softplus}(π) = -\max(π, 0) + \log \frac{1}{1 + e^{-|π|}},

they are ``e^{a − max a}``, ``log(θ + μ)``, ``e^{−|π|}``, ``e^{−|π − L|}`` and one ``log``,
every exponent non-positive, so no range check or fallback is needed for finite inputs.
numba has no vectorised ``exp``/``log`` without Intel's SVML, and calling the C library's
scalar ones would keep LLVM from vectorising the loop (and cost about 5 ns each), so both are
written out as Cephes' single-precision polynomials (``expf``, ``logf``: relative error
below 2e-7, as torch's own vectorised ``exp``/``log``), branch-free, which LLVM vectorises
across genes. Terms are summed in float32 over blocks of 128 genes and the blocks in
float64, so the sum is at least as accurate as torch's float32 reduction.

The kernel serves float32 tensors on the CPU; rows are split over torch's intra-op threads
(the kernel releases the GIL). Anything else — another dtype or device, shapes it does not
cover, numba missing — returns ``None`` and the caller uses its torch form, as it does for
rows with a non-finite input (they come back NaN here).
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

__all__ = ["zinb_log_likelihood_cpu"]

_MIN_ROWS_PER_THREAD = 16  # below this many rows a thread is not worth starting
_EPS = 1e-8  # as in distributions and softmax_nb: log(θ + μ + ε), log(θ + ε)


def _kernel():
    """The compiled kernel (numba imported, and the kernel read from numba's disk cache or
    compiled, on first use)."""
    from sbi_vi.singlecell._zinb_numba import zinb_rows

    return zinb_rows


def _as_rows(t: Tensor, n_rows: int, n_genes: int) -> tuple[np.ndarray, int] | None:
    """``t`` (``[*, G]``, row-major rows of ``G`` contiguous values, as a slice of a wider
    matrix such as ``out[:, G:]``) as ``(matrix [R, W], first column)``, without a copy."""
    if t.stride(-1) != 1 or t.numel() != n_rows * n_genes:
        return None
    flat = t.reshape(n_rows, n_genes)  # a view when the rows are evenly spaced
    if flat.data_ptr() != t.data_ptr() or (n_rows > 1 and flat.stride(0) < n_genes):
        return None
    width = flat.stride(0) if n_rows > 1 else n_genes
    column = flat.storage_offset() % width
    start = flat.storage_offset() - column
    if start + n_rows * width > flat.untyped_storage().nbytes() // flat.element_size():
        return None
    matrix = torch.as_strided(flat, (n_rows, width), (width, 1), start)
    return matrix.numpy(), column


def _theta_rows(theta: Tensor, lead: torch.Size, n_genes: int) -> Tensor:
    """θ broadcast to ``lead + [G]`` as ``[T, G]`` whose row ``r % T`` serves row ``r``."""
    expanded = theta.expand(*lead, n_genes)
    dims = 0
    while dims < len(lead) and expanded.stride(dims) == 0:
        dims += 1
    core = expanded[(0,) * dims] if dims else expanded
    return core.reshape(-1, n_genes).contiguous()


@functools.cache
def _executor(n_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="sbi_vi_zinb")


def zinb_log_likelihood_cpu(
    x: Tensor, logits: Tensor, log_library: Tensor, theta: Tensor, zi_logits: Tensor
) -> Tensor | None:
    """The ZINB sum of :func:`~sbi_vi.singlecell.softmax_nb.softmax_nb_log_likelihood` by
    the compiled kernel, or ``None`` where it does not apply.

    Args:
        x: Counts ``[B, G]`` (whole numbers).
        logits: Decoder logits ``[*S, B, G]``.
        log_library: ``log ℓ``, broadcastable to ``[*S, B]``.
        theta: Inverse dispersion, broadcastable to ``logits``.
        zi_logits: Zero-inflation logits, the shape of ``logits``.

    Returns:
        ``[*S, B]`` without the gamma terms, NaN in rows with a non-finite input; ``None``
        for tensors off the CPU, not float32, with gradients, or shapes other than these.

    Example:
        >>> from sbi_vi.singlecell.softmax_nb import _zinb_forward
        >>> x, a = torch.tensor([[0.0, 3.0]]), torch.tensor([[[0.2, -0.1]]])
        >>> args = (x, a, torch.tensor([1.5]), torch.ones(2), torch.zeros(1, 1, 2))
        >>> bool(torch.allclose(zinb_log_likelihood_cpu(*args), _zinb_forward(*args)))
        True
    """
    tensors = (x, logits, log_library, theta, zi_logits)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    if logits.dim() < 2 or logits.shape != zi_logits.shape or x.shape != logits.shape[-2:]:
        return None
    n_genes, lead = logits.shape[-1], logits.shape[:-1]
    n_rows = lead.numel()
    if n_rows == 0 or n_genes == 0:
        return None
    a, pi = _as_rows(logits, n_rows, n_genes), _as_rows(zi_logits, n_rows, n_genes)
    if a is None or pi is None:
        return None
    try:
        kernel = _kernel()
    except ImportError:  # pragma: no cover - numba is a dependency of the singlecell extra
        return None
    theta_rows = _theta_rows(theta.detach(), lead, n_genes)
    theta_log_theta = theta_rows * (theta_rows + _EPS).log()
    library = _theta_rows(log_library.detach().unsqueeze(-1), lead, 1).reshape(-1)
    out = torch.empty(n_rows, dtype=torch.float32)
    arrays = (
        *a,
        *pi,
        x.detach().contiguous().numpy(),
        theta_rows.numpy(),
        theta_log_theta.numpy(),
        library.numpy(),
        out.numpy(),
    )
    n_threads = min(torch.get_num_threads(), n_rows // _MIN_ROWS_PER_THREAD)
    if n_threads <= 1:
        kernel(*arrays, 0, n_rows)
    else:
        bounds = np.linspace(0, n_rows, n_threads + 1).astype(np.int64)
        jobs = [
            _executor(n_threads).submit(kernel, *arrays, int(lo), int(hi))
            for lo, hi in itertools.pairwise(bounds)
        ]
        for job in jobs:
            job.result()
    return out.reshape(lead)
