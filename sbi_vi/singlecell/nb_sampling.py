r"""Exact negative-binomial and zero-inflated NB draws on the CPU, by sequential inversion.

Single-cell counts are mostly small: at a typical depth most entries of ``μ`` lie below 1.
For those, inverting the NB's cumulative distribution function with one uniform per entry,

.. math::

    p_0 = \Bigl(\frac{\theta}{\theta + \mu}\Bigr)^{\theta}, \qquad
    p_k = p_{k-1}\, \frac{k - 1 + \theta}{k}\, \frac{\mu}{\theta + \mu}, \qquad
    X = \min\{k : u \le p_0 + \dots + p_k\},

costs a handful of multiplications (``E[X] = μ`` steps), where the Gamma–Poisson mixture
draws a gamma variate and a Poisson variate, each with its own rejection loop. ``p₀`` is
computed for every entry by torch's vectorised ``log1p``/``exp``; the search runs in numba
kernels (compiled on first use and cached on disk) on uniforms drawn in blocks by numpy's
generator. It is vectorised rather than a loop per entry, whose exit branch the processor
mispredicts at almost every entry: one pass adds the first four terms of every entry's
cdf and counts those below ``u`` without branches, SIMD across genes; the entries whose
count is still open (``X ≥ 4``) are moved to the front of cache-sized state arrays, and
passes of four more terms over them repeat until none is left. Entries with ``μ ≥ 32``
fall back to the Gamma–Poisson mixture (there ``p₀ ≈ e^{-μ}`` nears the float32 range, and
the search would take longer than the two draws). With zero-inflation probability ``π``
the same uniform decides the extra zero: ``u < π`` gives 0, else ``(u − π) / (1 − π)`` is
inverted.

The only approximation is ``p₀`` in the parameters' floating-point type (a relative error of
about 1e-7 in float32): the distribution of the draws is off by at most that much, far below
what any number of draws can resolve.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Size, Tensor

__all__ = ["nb_sample", "numpy_generator"]

INVERSION_MAX_MEAN = 32.0  # entries with μ at or above this use the Gamma–Poisson mixture
_STEPS = 4  # inversion steps per vectorised pass
_BLOCK = 1 << 20  # entries per kernel call: one array of uniforms from numpy's generator
_CHUNK = 1 << 14  # entries per pass inside a call: the state arrays stay in cache
_UNDERFLOW = 1e-300  # a pmf term below this, past the mode: the search stops there


def numpy_generator() -> np.random.Generator:
    """A numpy generator (SFC64) seeded by one draw from torch's default generator, so that
    ``torch.manual_seed`` reproduces whatever it draws."""
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return np.random.Generator(np.random.SFC64(seed))


@functools.cache
def _inversion_kernel():
    import numba  # imported on first use: it takes a moment and only sampling needs it

    # error_model="numpy": a float division never raises, so the passes have no branches
    # and LLVM vectorises them across genes / entries.
    jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    steps, underflow = _STEPS, _UNDERFLOW

    @jit
    def first_pass(mu, theta, zi, p0, u, row0, out, state, max_mean):
        # The first `steps` terms of every entry's cdf; u becomes the uniform left for the
        # NB after zero inflation (-1 where the draw is already decided). out: the number of
        # cdf terms below u (`steps`: not decided yet), NaN for a NaN or negative mean and
        # -1 for a mean left to the Gamma-Poisson mixture. state rows: p, cdf, q, θ, count.
        n_rows, n_genes = mu.shape
        for r in range(n_rows):
            th, zr = theta[(row0 + r) % theta.shape[0]], zi[(row0 + r) % zi.shape[0]]
            mr, pr, orow, i0, i1 = mu[r], p0[r], out[r], r * n_genes, (r + 1) * n_genes
            ur, ps, cs = u[i0:i1], state[0, i0:i1], state[1, i0:i1]
            qs, ts = state[2, i0:i1], state[3, i0:i1]
            for g in range(n_genes):  # bitwise | and & (no short circuit): no branches
                m, t, pi = np.float64(mr[g]), np.float64(th[g]), np.float64(zr[g])
                v = ur[g]
                zero, nan, left = v < pi, not m >= 0.0, m >= max_mean
                v = -1.0 if zero | nan | left else (v - pi) / (1.0 - pi)
                q = m / (t + m)
                p = np.float64(pr[g])
                cdf = p
                c = np.float64(v > cdf)
                for j in range(1, steps):
                    p *= q * (j - 1 + t) / j
                    cdf += p
                    c += v > cdf
                c = np.nan if nan & ~zero else c
                orow[g] = -1.0 if left & ~zero else c
                ur[g], ps[g], cs[g], qs[g], ts[g] = v, p, cdf, q, t

    @jit
    def gather(n, index, v, state):
        # Entry index[i] of v and of the state moves to place i (index[i] >= i: in place).
        for i in range(n):
            j = index[i]
            v[i] = v[j]
            for k in range(4):
                state[k, i] = state[k, j]

    @jit
    def next_pass(n, base, v, state):
        # The cdf terms base .. base + steps - 1 of the first n entries; the count of those
        # below v goes to state[4].
        ps, cs, qs, ts, counts = state[0], state[1], state[2], state[3], state[4]
        reciprocal = np.empty(steps)
        for j in range(steps):
            reciprocal[j] = 1.0 / (base + j)
        for i in range(n):
            p, cdf, q, t, vi = ps[i], cs[i], qs[i], ts[i], v[i]
            c = 0.0
            for j in range(steps):
                p *= q * (base + j - 1 + t) * reciprocal[j]
                cdf += p
                c += vi > cdf
            ps[i], cs[i], counts[i] = p, cdf, c

    @jit
    def compact(n, base, index, v, state, flat):
        # Writes the draws of the first n entries and moves those still undecided to the
        # front, in place and without branches; returns how many they are.
        m = 0
        for i in range(n):
            flat[index[i]] = base + state[4, i]
            index[m], v[m] = index[i], v[i]
            for k in range(4):
                state[k, m] = state[k, i]
            m += (state[4, i] == steps) & (state[0, i] >= underflow)
        return m

    @jit
    def kernel(mu, theta, zi, p0, u, row0, out, max_mean, chunk):  # pragma: no cover
        # mu, p0, out: [R, G]; u: R * G uniforms; theta: [Rt, G], zi: [Rz, G] (one row of
        # zeros for no zero inflation), row r uses row (row0 + r) % Rt (a trailing
        # broadcast). Returns how many entries are left to the Gamma-Poisson mixture.
        n_rows, n_genes = mu.shape
        rows = max(1, chunk // n_genes)
        state, index = np.empty((5, rows * n_genes)), np.empty(rows * n_genes, dtype=np.int64)
        n_left = 0
        for r0 in range(0, n_rows, rows):
            r1 = min(n_rows, r0 + rows)
            flat, v = out[r0:r1].reshape(-1), u[r0 * n_genes : r1 * n_genes]
            first_pass(mu[r0:r1], theta, zi, p0[r0:r1], v, row0 + r0, out[r0:r1], state, max_mean)
            n = 0
            for i in range(flat.size):  # branch-free list of the undecided entries
                index[n] = i
                n += flat[i] == steps
                n_left += flat[i] == -1.0
            gather(n, index, v, state)
            base = steps
            while n > 0:
                next_pass(n, base, v, state)
                n = compact(n, base, index, v, state, flat)
                base += steps
        return n_left

    return kernel


def _trailing_rows(value: Tensor, shape: Size) -> np.ndarray:
    """``value`` broadcast to ``shape`` as a ``[rows, G]`` array holding only its trailing,
    non-broadcast dims: row ``r`` of the flattened ``shape`` reads row ``r % rows``."""
    expanded = value.expand(shape)
    lead = 0
    while lead < len(shape) - 1 and expanded.stride(lead) == 0:
        lead += 1
    core = expanded[(0,) * lead] if lead else expanded
    return core.contiguous().reshape(-1, shape[-1]).numpy()


def nb_sample(
    mu: Tensor,
    theta: Tensor,
    zi_probs: Tensor | None = None,
    sample_shape: Size | tuple = (),
) -> Tensor:
    """Draws of NB(``mu``, ``theta``), zero-inflated with probability ``zi_probs`` if given.

    Args:
        mu: NB means, shape ``[*, G]``, non-negative (a NaN mean gives a NaN draw).
        theta: Inverse dispersions, broadcastable to ``mu``, positive and finite.
        zi_probs: Zero-inflation probabilities in [0, 1], broadcastable to ``mu``.
        sample_shape: Leading shape of independent draws.

    Returns:
        Counts as floats in ``mu``'s dtype, shape ``sample_shape + broadcast shape``.
        ``torch.manual_seed`` reproduces them. On other devices than the CPU, torch's
        Gamma–Poisson sampler is used. No gradient.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> draws = nb_sample(torch.tensor([0.5, 4.0]), torch.tensor([2.0, 2.0]), None, (50_000,))
        >>> [round(v, 1) for v in draws.mean(0).tolist()], round(draws[:, 1].var().item())
        ([0.5, 4.0], 12)
    """
    params = (mu, theta) if zi_probs is None else (mu, theta, zi_probs)
    shape = Size(sample_shape) + torch.broadcast_shapes(*(p.shape for p in params))
    with torch.no_grad():
        if mu.device.type != "cpu" or len(shape) == 0 or shape.numel() == 0:
            return _gamma_poisson_sample(mu, theta, zi_probs, shape)
        dtype = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float64
        mu_b = mu.to(dtype).expand(shape)
        theta_b = theta.to(dtype)
        p0 = torch.log1p(mu_b / theta_b).mul_(-theta_b).exp_().reshape(-1, shape[-1]).numpy()
        mu_rows = mu_b.contiguous().reshape(-1, shape[-1]).numpy()
        theta_rows = _trailing_rows(theta_b, shape)
        if zi_probs is None:
            zi_rows = np.zeros((1, shape[-1]), dtype=mu_rows.dtype)
        else:
            zi_rows = _trailing_rows(zi_probs.to(dtype), shape)
        generator = numpy_generator()
        out = np.empty_like(mu_rows)
        kernel, n_genes = _inversion_kernel(), shape[-1]
        block_rows = max(1, _BLOCK // n_genes)
        uniforms = np.empty(min(len(mu_rows), block_rows) * n_genes)
        n_left = 0
        for r0 in range(0, len(mu_rows), block_rows):
            r1 = min(len(mu_rows), r0 + block_rows)
            u = uniforms[: (r1 - r0) * n_genes]
            generator.random(out=u)
            n_left += kernel(
                mu_rows[r0:r1],
                theta_rows,
                zi_rows,
                p0[r0:r1],
                u,
                r0,
                out[r0:r1],
                INVERSION_MAX_MEAN,
                _CHUNK,
            )
        if n_left:
            flat = out.reshape(-1)
            left = np.flatnonzero(flat < 0)
            rows, genes = np.divmod(left, shape[-1])
            left_theta = theta_rows[rows % theta_rows.shape[0], genes]
            rate = generator.standard_gamma(left_theta, dtype=out.dtype)
            rate *= mu_rows.reshape(-1)[left] / left_theta
            flat[left] = torch.poisson(torch.from_numpy(rate).clamp_(max=1e8)).numpy()
        return torch.from_numpy(out).reshape(shape)


def _gamma_poisson_sample(
    mu: Tensor, theta: Tensor, zi_probs: Tensor | None, shape: Size
) -> Tensor:
    """The Gamma–Poisson mixture with torch's samplers (any device)."""
    theta_b = theta.expand(shape).contiguous()
    rate = torch._standard_gamma(theta_b) * (mu / theta_b)
    counts = torch.poisson(rate.clamp(max=1e8))
    if zi_probs is not None:
        counts = counts.masked_fill(torch.rand_like(counts) < zi_probs.expand(shape), 0.0)
    return counts
