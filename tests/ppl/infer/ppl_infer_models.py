"""Models shared by the inference tests (closed-form posteriors where they exist)."""

from __future__ import annotations

import torch
from torch.distributions import Dirichlet, HalfNormal, Independent, Normal, constraints

from sbi_vi.ppl import deterministic, param, plate, sample

SIGMA_PRIOR, SIGMA = 2.0, 1.0


def gaussian_data(n: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) + 1.5


def gaussian_model(x: torch.Tensor) -> None:
    """mu ~ N(0, 2²), x_i ~ N(mu, 1)."""
    mu = sample("mu", Normal(0.0, SIGMA_PRIOR))
    with plate("data", x.shape[0]):
        sample("x", Normal(mu, SIGMA), obs=x)


def gaussian_posterior(x: torch.Tensor) -> tuple[float, float]:
    precision = 1 / SIGMA_PRIOR**2 + x.shape[0] / SIGMA**2
    return float(x.sum() / SIGMA**2 / precision), precision**-0.5


def gaussian_log_evidence(x: torch.Tensor) -> float:
    n = x.shape[0]
    cov = SIGMA**2 * torch.eye(n, dtype=torch.float64) + SIGMA_PRIOR**2
    return float(
        torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(
            x.double()
        )
    )


def correlated_data(n: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) + 1.0


def correlated_model(y: torch.Tensor) -> None:
    """theta ~ N(0, I₂), y_i ~ N(theta_1 + theta_2, 1): a strongly correlated posterior."""
    theta = sample("theta", Independent(Normal(torch.zeros(2), 1.0), 1))
    with plate("data", y.shape[0]):
        sample("y", Normal(theta.sum(-1), 1.0), obs=y)


def correlated_posterior(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.ones(2, 1, dtype=torch.float64)
    precision = torch.eye(2, dtype=torch.float64) + y.shape[0] * (a @ a.T)
    cov = torch.linalg.inv(precision)
    mean = cov @ (a[:, 0] * float(y.sum()))
    return mean.float(), cov.float()


def local_model(y: torch.Tensor, subsample_size: int | None = 4) -> None:
    """A random-intercept model with a global, an event-dim, a local and a deterministic site."""
    n = y.shape[0]
    mu = sample("mu", Normal(0.0, 3.0))
    tau = sample("tau", HalfNormal(2.0))
    weights = sample("w", Dirichlet(torch.ones(3)))
    with plate("groups", n, subsample_size=subsample_size) as idx:
        theta = sample("theta", Normal(mu, tau))
        deterministic("shifted", theta + weights[..., 0])
        sample("y", Normal(theta, 0.5), obs=y[idx])


def make_local_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return 1.0 + 1.5 * torch.randn(12, generator=g) + 0.5 * torch.randn(12, generator=g)


def gaussian_guide(x: torch.Tensor) -> None:
    """A hand-written guide of ``gaussian_model`` (module level, so that it pickles)."""
    loc = param("loc", torch.tensor(0.0))
    scale = param("scale", torch.tensor(0.5), constraint=constraints.positive)
    sample("mu", Normal(loc, scale))
