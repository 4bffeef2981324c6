r"""Gaussian linear: a 10-D Gaussian mean under a Gaussian prior.

.. math::

    \theta \sim \mathcal N(0, 0.1 I_{10}), \quad x \mid \theta \sim \mathcal N(\theta, 0.1 I_{10}).

The posterior is Gaussian in closed form (:meth:`GaussianLinear.true_posterior`), which makes
the task a check of exactness.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from sbi_vi.tasks.base import Task

__all__ = ["GaussianLinear"]


class GaussianLinear(Task):
    r"""Gaussian linear task of sbibm: ``D = L = 10``, prior and noise variance 0.1.

    Example:
        >>> task = GaussianLinear()
        >>> theta = task.prior.sample((4,))
        >>> task.simulator(theta, seed=1).shape
        torch.Size([4, 10])
    """

    name = "gaussian_linear"
    dim_theta = 10
    dim_x = 10
    prior_variance: float = 0.1
    noise_variance: float = 0.1

    def _build_prior(self) -> Distribution:
        scale = math.sqrt(self.prior_variance) * torch.ones(self.dim_theta)
        return Independent(Normal(torch.zeros(self.dim_theta), scale), 1)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(
            theta.shape, generator=generator, dtype=theta.dtype, device=theta.device
        )
        return theta + math.sqrt(self.noise_variance) * noise

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        sq = (x - theta).square().sum(-1)
        return -0.5 * sq / self.noise_variance - 0.5 * self.dim_x * math.log(
            2 * math.pi * self.noise_variance
        )

    def true_posterior(self, x_o: Tensor) -> MultivariateNormal:
        r"""The exact posterior :math:`p(\theta \mid x_o)`.

        With :math:`n` rows of :math:`x_o`, the posterior is
        :math:`\mathcal N\big(\tfrac{\sigma_0^2}{\sigma^2 + n\sigma_0^2} \sum_i x_i,\,
        \tfrac{\sigma_0^2\sigma^2}{\sigma^2 + n\sigma_0^2} I\big)` with prior variance
        :math:`\sigma_0^2` and noise variance :math:`\sigma^2`.

        Args:
            x_o: The observation, shape ``[L]`` or ``[N_iid, L]`` (independent rows).

        Returns:
            A ``MultivariateNormal`` with event shape ``[D]``.

        Raises:
            ValueError: If ``x_o`` is not ``[L]`` or ``[N_iid, L]``.

        Example:
            >>> task = GaussianLinear()
            >>> posterior = task.true_posterior(task.get_observation(1))
            >>> round(posterior.covariance_matrix[0, 0].item(), 6)
            0.05
        """
        try:
            x_o = self._check_x(x_o)
        except ValueError as err:
            raise ValueError(str(err).replace("`x`", "`x_o`")) from None
        n = x_o.shape[0]
        s0, s = self.prior_variance, self.noise_variance
        loc = x_o.sum(0) * (s0 / (s + n * s0))
        variance = s0 * s / (s + n * s0)
        eye = torch.eye(self.dim_theta, dtype=x_o.dtype, device=x_o.device)
        return MultivariateNormal(loc, covariance_matrix=variance * eye)
