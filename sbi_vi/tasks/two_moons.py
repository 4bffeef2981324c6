r"""Two moons: a 2-D problem with a crescent-shaped, bimodal posterior.

.. math::

    \theta &\sim \mathcal U([-1, 1]^2), \qquad a \sim \mathcal U(-\pi/2, \pi/2), \qquad
    r \sim \mathcal N(0.1, 0.01^2), \\
    p &= (r\cos a + 0.25,\; r \sin a), \qquad
    x = p + \big(-|\theta_1 + \theta_2| / \sqrt 2,\; (-\theta_1 + \theta_2) / \sqrt 2\big).

The likelihood is the density of :math:`p = x - f(\theta)`. Writing
:math:`p - (0.25, 0) = \rho (\cos\varphi, \sin\varphi)`, the polar change of variables gives

.. math::

    p(x \mid \theta) = \mathcal N(\rho; 0.1, 0.01^2)\, \frac{1}{\pi}\, \frac{1}{\rho}
    \quad \text{if } p_1 > 0.25, \text{ else } 0.

sbibm's ``_likelihood`` keeps only the first factor; the Jacobian :math:`1/(\pi\rho)` makes
this the density the simulator samples from (and the one its reference posteriors follow).
The half-plane :math:`p_1 \le 0.25` holds the draws with :math:`r < 0`, of probability
:math:`\approx 10^{-23}`, and is given density zero, as in sbibm.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_vi.priors import BoxUniform
from sbi_vi.tasks.base import Task

__all__ = ["TwoMoons"]

_R_LOC = 0.1
_R_SCALE = 0.01
_OFFSET = 0.25
_LOG_NORM = -0.5 * math.log(2 * math.pi * _R_SCALE**2) - math.log(math.pi)


class TwoMoons(Task):
    r"""Two moons task of sbibm: ``D = L = 2``, prior ``U(-1, 1)²``.

    Example:
        >>> task = TwoMoons()
        >>> theta = torch.tensor([[0.3, -0.2]])
        >>> x = task.simulator(theta, seed=0)
        >>> bool(task.log_likelihood(theta, x).isfinite())
        True
    """

    name = "two_moons"
    dim_theta = 2
    dim_x = 2

    def _build_prior(self) -> Distribution:
        return BoxUniform(-torch.ones(self.dim_theta), torch.ones(self.dim_theta))

    @staticmethod
    def _shift(theta: Tensor) -> Tensor:
        """The mean-free displacement of ``x`` caused by ``theta`` (``[*, 2]`` to ``[*, 2]``)."""
        z1 = (theta[..., 0] + theta[..., 1]) / math.sqrt(2)
        z2 = (theta[..., 1] - theta[..., 0]) / math.sqrt(2)
        return torch.stack((-z1.abs(), z2), dim=-1)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        n = theta.shape[0]
        kw = {"generator": generator, "dtype": theta.dtype, "device": theta.device}
        a = math.pi * (torch.rand(n, **kw) - 0.5)
        r = _R_LOC + _R_SCALE * torch.randn(n, **kw)
        p = torch.stack((r * torch.cos(a) + _OFFSET, r * torch.sin(a)), dim=-1)
        return p + self._shift(theta)

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        p = x - self._shift(theta)
        u = p[..., 0] - _OFFSET
        v = p[..., 1]
        inside = u > 0
        # Evaluate only inside the half-plane: keeps rho > 0 and gradients finite.
        rho = torch.hypot(torch.where(inside, u, torch.ones_like(u)), v)
        log_p = _LOG_NORM - 0.5 * ((rho - _R_LOC) / _R_SCALE).square() - torch.log(rho)
        return torch.where(inside, log_p, -math.inf)
