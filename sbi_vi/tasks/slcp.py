r"""SLCP: a simple likelihood with a complex (four-mode) posterior.

.. math::

    \theta &\sim \mathcal U([-3, 3]^5), \qquad m = (\theta_1, \theta_2), \qquad
    s_1 = \theta_3^2, \quad s_2 = \theta_4^2, \quad \rho = \tanh \theta_5, \\
    S &= \begin{pmatrix} s_1^2 + \epsilon & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 + \epsilon
    \end{pmatrix}, \qquad x = (x_1, \dots, x_4), \quad x_j \sim \mathcal N(m, S)
    \text{ i.i.d.}

with :math:`\epsilon = 10^{-6}`, the jitter sbibm adds to keep :math:`S` positive definite
(its reference posteriors include it). ``x`` is flattened to 8 numbers
``(x_{1,1}, x_{1,2}, x_{2,1}, ...)``. The likelihood depends on :math:`\theta_3, \theta_4` only
through their squares, hence four symmetric posterior modes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_vi.priors import BoxUniform
from sbi_vi.tasks.base import Task

__all__ = ["SLCP"]

_JITTER = 1e-6
_NUM_DRAWS = 4


def _cholesky_2x2(theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Entries ``(l11, l21, l22)`` of the Cholesky factor of ``S`` and ``log det S``.

    ``det S = s1² s2² (1 - ρ²) + ε (s1² + s2²) + ε²`` is formed without cancellation, with
    ``1 - ρ² = 1 / cosh²(θ5) = 4 e / (1 + e)²``, ``e = exp(-2|θ5|)`` (no overflow); it is at
    least ``ε² > 0``, so neither values nor gradients are NaN.
    """
    var1 = theta[..., 2] ** 4
    var2 = theta[..., 3] ** 4
    rho = torch.tanh(theta[..., 4])
    decay = torch.exp(-2 * theta[..., 4].abs())
    one_minus_rho2 = 4 * decay / (1 + decay).square()
    s11 = var1 + _JITTER
    s12 = rho * theta[..., 2].square() * theta[..., 3].square()
    det = var1 * var2 * one_minus_rho2 + _JITTER * (var1 + var2) + _JITTER**2
    l11 = s11.sqrt()
    l21 = s12 / l11
    l22 = (det / s11).sqrt()
    return l11, l21, l22, det.log()


class SLCP(Task):
    r"""SLCP task of sbibm: ``D = 5``, ``L = 8`` (four 2-D draws), prior ``U(-3, 3)⁵``.

    Example:
        >>> task = SLCP()
        >>> theta = task.prior.sample((3,))
        >>> task.simulator(theta, seed=0).shape
        torch.Size([3, 8])
    """

    name = "slcp"
    dim_theta = 5
    dim_x = 2 * _NUM_DRAWS

    def _build_prior(self) -> Distribution:
        return BoxUniform(-3.0 * torch.ones(self.dim_theta), 3.0 * torch.ones(self.dim_theta))

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        n = theta.shape[0]
        eps = torch.randn(
            n, _NUM_DRAWS, 2, generator=generator, dtype=theta.dtype, device=theta.device
        )
        l11, l21, l22, _ = (t.unsqueeze(-1) for t in _cholesky_2x2(theta))
        x1 = theta[:, 0:1] + l11 * eps[..., 0]
        x2 = theta[:, 1:2] + l21 * eps[..., 0] + l22 * eps[..., 1]
        return torch.stack((x1, x2), dim=-1).reshape(n, self.dim_x)

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        x = x.unflatten(-1, (_NUM_DRAWS, 2))  # [*, 4, 2]
        l11, l21, l22, log_det = (t.unsqueeze(-1) for t in _cholesky_2x2(theta))
        d1 = x[..., 0] - theta[..., 0:1]
        d2 = x[..., 1] - theta[..., 1:2]
        z1 = d1 / l11
        z2 = (d2 - l21 * z1) / l22
        log_p = -math.log(2 * math.pi) - 0.5 * log_det - 0.5 * (z1.square() + z2.square())
        return log_p.sum(-1)
