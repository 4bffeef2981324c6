"""Write the reference posteriors of ``test_reference.py`` to ``data/reference.npz``.

Two models, each with an essentially exact reference computed once in float64:

- **logistic regression** (200 observations, 3 features and an intercept): importance
  sampling from a multivariate-t proposal centred at the posterior mode with the Laplace
  covariance, 200,000 draws, Pareto-smoothed (PSIS k-hat stored; it must be < 0.5);
- **eight schools, non-centred** (mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_tilde_j ~ N(0, 1),
  y_j ~ N(mu + tau theta_tilde_j, sigma_j)): the school effects integrate out analytically, so
  p(mu, tau | y) is evaluated on a 1,500 x 1,500 grid (tau on a log scale) and every moment
  of (mu, tau, theta_tilde) follows by quadrature.

Run from the repository root: ``python tests/ppl/infer/make_reference.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "data" / "reference.npz"
SCHOOLS_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SCHOOLS_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def logistic_regression() -> dict[str, np.ndarray]:
    from sbi_vi.diagnostics import psis

    g = torch.Generator().manual_seed(0)
    n, d = 200, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(x @ w_true + 0.3), generator=g)
    xb = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)

    def log_post(z: torch.Tensor) -> torch.Tensor:
        logits = z @ xb.T
        lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y.expand_as(logits), reduction="none"
        )
        return lik.sum(-1) - 0.5 * z.square().sum(-1)

    z = torch.zeros(d + 1, dtype=torch.float64)
    for _ in range(50):
        p = torch.sigmoid(xb @ z)
        grad = xb.T @ (y - p) - z
        hess = -(xb.T * (p * (1 - p))) @ xb - torch.eye(d + 1, dtype=torch.float64)
        z = z - torch.linalg.solve(hess, grad)
    cov = torch.linalg.inv(-hess)
    proposal = torch.distributions.MultivariateNormal(z, covariance_matrix=cov)
    df = 5.0
    chi2 = torch.distributions.Chi2(torch.tensor(df, dtype=torch.float64))
    torch.manual_seed(1)
    normal = proposal.sample((200_000,)) - z
    scale = (chi2.sample((200_000,)) / df).sqrt()
    draws = z + normal / scale[:, None]
    # multivariate t log density
    l_inv = torch.linalg.inv(torch.linalg.cholesky(cov))
    maha = (draws - z) @ l_inv.T
    k = d + 1
    log_t = (
        math.lgamma((df + k) / 2)
        - math.lgamma(df / 2)
        - 0.5 * k * math.log(df * math.pi)
        - torch.log(torch.diagonal(torch.linalg.cholesky(cov))).sum()
        - 0.5 * (df + k) * torch.log1p(maha.square().sum(-1) / df)
    )
    result = psis(log_post(draws) - log_t)
    assert result.khat < 0.5, result.khat
    weights = result.log_weights.exp()
    mean = (weights[:, None] * draws).sum(0)
    sd = (weights[:, None] * (draws - mean).square()).sum(0).sqrt()
    return {
        "logreg_x": x.float().numpy(),
        "logreg_y": y.float().numpy(),
        "logreg_mean": mean.numpy(),
        "logreg_sd": sd.numpy(),
        "logreg_khat": np.array(result.khat),
    }


def eight_schools(grid: int = 1500) -> dict[str, np.ndarray]:
    y = torch.tensor(SCHOOLS_Y, dtype=torch.float64)
    sigma = torch.tensor(SCHOOLS_SIGMA, dtype=torch.float64)
    mu = torch.linspace(-25.0, 35.0, grid, dtype=torch.float64)
    log_tau = torch.linspace(-9.0, 5.5, grid, dtype=torch.float64)
    m, lt = torch.meshgrid(mu, log_tau, indexing="ij")
    tau = lt.exp()
    var = tau[..., None] ** 2 + sigma**2  # y_j | mu, tau ~ N(mu, tau² + sigma_j²)
    loglik = (-0.5 * (y - m[..., None]) ** 2 / var - 0.5 * var.log()).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 5.0).log_prob(m) + torch.distributions.HalfCauchy(
        5.0
    ).log_prob(tau)
    log_post = loglik + log_prior + lt  # + log tau: the grid is uniform in log tau
    w = torch.softmax(log_post.reshape(-1), 0).reshape(grid, grid)
    edge = float(w[0].sum() + w[-1].sum() + w[:, 0].sum() + w[:, -1].sum())
    assert edge < 1e-4, edge
    # theta_j | mu, tau, y ~ N(c_j, v_j); theta_tilde_j = (theta_j - mu) / tau
    v = 1 / (1 / tau[..., None] ** 2 + 1 / sigma**2)
    c = v * (m[..., None] / tau[..., None] ** 2 + y / sigma**2)
    tilde_mean = (c - m[..., None]) / tau[..., None]
    tilde_var = v / tau[..., None] ** 2

    def moments(mean: torch.Tensor, var: torch.Tensor | None = None) -> tuple:
        ww = w if mean.dim() == 2 else w[..., None]
        e1 = (ww * mean).sum((0, 1))
        e2 = (ww * (mean**2 + (0 if var is None else var))).sum((0, 1))
        return e1.numpy(), (e2 - e1**2).sqrt().numpy()

    mu_m, mu_s = moments(m)
    tau_m, tau_s = moments(tau)
    tilde_m, tilde_s = moments(tilde_mean, tilde_var)
    return {
        "schools_y": y.float().numpy(),
        "schools_sigma": sigma.float().numpy(),
        "schools_mu": np.array([mu_m, mu_s]),
        "schools_tau": np.array([tau_m, tau_s]),
        "schools_theta_tilde_mean": tilde_m,
        "schools_theta_tilde_sd": tilde_s,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    data = {**logistic_regression(), **eight_schools()}
    np.savez_compressed(OUT, **data)
    for key, value in data.items():
        if value.size <= 8:
            print(key, np.round(value, 3))


if __name__ == "__main__":
    main()
