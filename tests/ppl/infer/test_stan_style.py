"""Stan-style models: improper flat priors, init strategies, and the distributions of
:mod:`sbi_vi.ppl.distributions` as latent sites of autoguides."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import (
    Independent,
    LogNormal,
    MultivariateNormal,
    Normal,
    Uniform,
    constraints,
)

from sbi_vi.ppl import param, plate, sample
from sbi_vi.ppl.distributions import (
    FoldedDistribution,
    HalfCauchy,
    HalfStudentT,
    ImproperUniform,
    LKJCholesky,
    TruncatedNormal,
)
from sbi_vi.ppl.infer import (
    SVI,
    AutoDelta,
    AutoMultivariateNormal,
    AutoNormal,
    Predictive,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_value,
)
from sbi_vi.ppl.infer.sites import inspect_model

N, P = 40, 3


def _regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.ones(N, 1), torch.randn(N, P - 1, generator=g)], 1)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.7 * torch.randn(N, generator=g)
    return x, y


def flat_regression(x: torch.Tensor, y: torch.Tensor) -> None:
    """Stan: ``vector[P] beta; real<lower=0> sigma; y ~ normal(X * beta, sigma);``."""
    beta = sample("beta", ImproperUniform(constraints.real, event_shape=(P,)))
    sigma = sample("sigma", ImproperUniform(constraints.positive))
    with plate("data", x.shape[0]):
        sample("y", Normal((x * beta).sum(-1), sigma), obs=y)


def _flat_regression_posterior(x: torch.Tensor, y: torch.Tensor) -> dict:
    """p(β, σ | y) ∝ σ^-n exp(-|y - Xβ|² / 2σ²): β | y is a multivariate t with ν = n - p - 1
    around the least-squares fit, and σ² | y is InvGamma((n - p - 1) / 2, RSS / 2)."""
    xd, yd = x.double().numpy(), y.double().numpy()
    xtx = xd.T @ xd
    bhat = np.linalg.solve(xtx, xd.T @ yd)
    rss = float(((yd - xd @ bhat) ** 2).sum())
    nu = N - P - 1
    cov = rss / (nu - 2) * np.linalg.inv(xtx)
    sigma2 = stats.invgamma(nu / 2, scale=rss / 2)
    return {
        "mean": bhat,
        "sd": np.sqrt(np.diag(cov)),
        # the mean-field optimum of a Gaussian posterior: sd_i = 1 / sqrt(precision_ii)
        "sd_mean_field": 1 / np.sqrt(np.diag(np.linalg.inv(cov))),
        "corr": cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))),
        "sigma_quantiles": np.sqrt(sigma2.ppf([0.05, 0.5, 0.95])),
    }


@pytest.mark.parametrize("guide_cls", [AutoNormal, AutoMultivariateNormal])
def test_flat_prior_regression_fits_the_analytic_posterior(guide_cls):
    x, y = _regression_data()
    ref = _flat_regression_posterior(x, y)
    steps = 800
    svi = SVI(
        flat_regression,
        guide_cls(flat_regression),  # default init_to_median falls back to init_to_feasible
        lr=0.05,
        n_particles=8,
        scheduler=torch.optim.lr_scheduler.ExponentialLR,
        scheduler_kwargs={"gamma": 0.02 ** (1 / steps)},
    )
    result = svi.run(steps, x, y, seed=0, show_progress_bar=False)
    summary = result.sample_posterior(num_samples=4000, seed=1, return_samples=True)
    mean, sd = summary["means"]["beta"], summary["stds"]["beta"]
    assert np.all(np.abs(mean - ref["mean"]) < 0.15 * ref["sd"])
    target_sd = ref["sd_mean_field"] if guide_cls is AutoNormal else ref["sd"]
    np.testing.assert_allclose(sd, target_sd, rtol=0.12)
    if guide_cls is AutoMultivariateNormal:
        corr = np.corrcoef(np.asarray(summary["posterior_samples"]["beta"]).T)
        np.testing.assert_allclose(corr, ref["corr"], atol=0.1)
    sigma = np.quantile(np.asarray(summary["posterior_samples"]["sigma"]), [0.05, 0.5, 0.95])
    np.testing.assert_allclose(sigma, ref["sigma_quantiles"], rtol=0.05)


def test_init_to_value_starts_an_improper_site_where_asked():
    x, y = _regression_data()
    init = init_to_value(values={"beta": torch.tensor([1.0, -2.0, 0.5]), "sigma": 0.7})
    guide = AutoMultivariateNormal(flat_regression, init_loc_fn=init).setup(x, y)
    torch.testing.assert_close(guide.median()["beta"], torch.tensor([1.0, -2.0, 0.5]))
    assert abs(float(guide.median()["sigma"]) - 0.7) < 1e-5


@pytest.mark.parametrize(
    "init", [init_to_median, init_to_mean, init_to_sample, init_to_feasible, init_to_value()]
)
def test_every_init_strategy_starts_improper_sites_at_the_feasible_point(init):
    def model():
        sample("a", ImproperUniform(constraints.real, event_shape=(2,)))
        sample("b", ImproperUniform(constraints.positive))
        sample("c", ImproperUniform(constraints.interval(-1.0, 3.0)))
        sample("d", ImproperUniform(constraints.simplex, event_shape=(3,)))
        sample("e", Normal(5.0, 1e-3))  # a proper site keeps its own initialisation

    info = inspect_model(model, (), {}, init_loc_fn=init)
    inits = {name: site.init for name, site in info.latent.items()}
    torch.testing.assert_close(inits["a"], torch.zeros(2))
    torch.testing.assert_close(inits["b"], torch.tensor(1.0))
    torch.testing.assert_close(inits["c"], torch.tensor(1.0))
    torch.testing.assert_close(inits["d"], torch.full((3,), 1 / 3))
    expected_e = 0.0 if init is init_to_feasible else 5.0  # zero in unconstrained space
    assert abs(float(inits["e"]) - expected_e) < 0.01


def test_local_improper_site_in_a_subsampled_plate_is_set_up_without_sampling():
    y = torch.randn(10)

    def model(y):
        scale = sample("scale", ImproperUniform(constraints.positive))
        with plate("obs", 10, subsample_size=4) as idx:
            mu = sample("mu", ImproperUniform(constraints.real))
            sample("y", Normal(mu, scale), obs=y[idx])

    guide = AutoNormal(model).setup(y)
    assert guide.info.latent["mu"].shape == (10,)
    torch.testing.assert_close(guide.info.latent["mu"].init, torch.zeros(10))
    result = SVI(model, guide, lr=0.05).run(5, y, seed=0, show_progress_bar=False)
    assert bool(torch.isfinite(result.losses).all())


def test_init_strategy_that_samples_an_improper_prior_is_refused_with_the_remedy():
    def sampling_init(msg):
        return msg.fn.sample()

    with pytest.raises(ValueError, match=r"'beta'.*sampling_init.*init_to_feasible"):
        AutoNormal(flat_regression, init_loc_fn=sampling_init).setup(*_regression_data())


def test_initial_values_outside_the_support_or_of_the_wrong_shape_are_refused():
    x, y = _regression_data()
    outside = init_to_value(values={"sigma": -1.0})
    with pytest.raises(ValueError, match=r"'sigma'.*not strictly inside the support"):
        AutoNormal(flat_regression, init_loc_fn=outside).setup(x, y)
    with pytest.raises(ValueError, match=r"'beta'.*has shape \(1, 2\).*\(1, 1, 3\)"):
        AutoNormal(flat_regression, init_loc_fn=lambda msg: torch.ones(1, 2)).setup(x, y)


def test_support_without_a_bijection_is_refused_naming_the_site():
    def model():
        sample("L", ImproperUniform(constraints.lower_cholesky, event_shape=(2, 2)))

    with pytest.raises(ValueError, match=r"'L'.*no bijection.*LowerCholesky"):
        AutoNormal(model).setup()


def test_posterior_predictive_of_an_improper_model_and_prior_predictive_refusal():
    x, y = _regression_data()
    guide = AutoDelta(flat_regression)
    SVI(flat_regression, guide, lr=0.05).run(50, x, y, seed=0, show_progress_bar=False)
    draws = Predictive(flat_regression, guide=guide, num_samples=7)(x, None, seed=0)
    assert draws["y"].shape == (7, N) and bool(torch.isfinite(draws["y"]).all())
    with pytest.raises(NotImplementedError, match="improper flat prior"):
        Predictive(flat_regression, num_samples=3)(x, None, seed=0)


def test_tensor_bounded_support_keeps_the_site_shape_in_unconstrained_space():
    def model():
        with plate("d", 3):
            sample("a", Uniform(torch.zeros(3), torch.arange(1.0, 4.0)))

    site = inspect_model(model, (), {}).latent["a"]
    assert site.shape == (3,) and site.unconstrained_shape == (3,)
    assert site.unconstrained_event_ndim == 0


@pytest.mark.parametrize(
    "fn",
    [
        TruncatedNormal(0.0, 1.0, low=-0.5, high=2.0),
        TruncatedNormal(1.0, 2.0, low=0.0),
        TruncatedNormal(1.0, 2.0, high=0.0),
        HalfStudentT(3.0, 1.0),
        HalfCauchy(1.0),
        FoldedDistribution(Normal(1.0, 1.0)),
        LKJCholesky(3, 2.0),
    ],
    ids=lambda fn: f"{type(fn).__name__}",
)
def test_autoguides_reach_every_support(fn):
    def model():
        with plate("g", 2):
            sample("z", fn)

    for guide_cls in (AutoNormal, AutoMultivariateNormal):
        guide = guide_cls(model).setup()
        draws = guide.sample(50)["z"]
        assert draws.shape == (50, 2, *fn.event_shape)
        assert bool(fn.support.check(draws).all())
        assert bool(torch.isfinite(fn.log_prob(draws)).all())


def test_truncated_normal_prior_alone_is_recovered():
    target = TruncatedNormal(1.0, 2.0, low=0.0, high=3.0)

    def model():
        sample("z", target)

    result = SVI(model, AutoNormal(model), lr=0.05, n_particles=16).run(
        400, seed=0, show_progress_bar=False
    )
    draws = result.sample_posterior(num_samples=4000, seed=1, return_samples=True)[
        "posterior_samples"
    ]["z"]
    draws = torch.as_tensor(np.asarray(draws))
    # a Gaussian in logit space is close to, not equal to, this target: moments within 5%
    assert abs(float(draws.mean()) - float(target.mean)) < 0.05 * float(target.stddev)
    assert abs(float(draws.std()) / float(target.stddev) - 1) < 0.1
    # (PSIS k-hat is large here, rightly: in logit space the target's tails are exponential
    # and q's Gaussian, so the importance weights are unbounded.)


def test_lkj_cholesky_correlation_is_recovered_with_autonormal():
    true_corr = torch.tensor([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]])
    g = torch.Generator().manual_seed(0)
    y = torch.randn(400, 3, generator=g) @ torch.linalg.cholesky(true_corr).T
    sample_corr = torch.corrcoef(y.T)

    def model(y):
        chol = sample("L", LKJCholesky(3, 2.0))
        with plate("data", y.shape[0]):
            sample("y", MultivariateNormal(torch.zeros(3), scale_tril=chol), obs=y)

    result = SVI(model, AutoNormal(model), lr=0.05, n_particles=4).run(
        600, y, seed=0, show_progress_bar=False
    )
    chol = torch.as_tensor(
        np.asarray(
            result.sample_posterior(num_samples=1000, seed=1, return_samples=True)[
                "posterior_samples"
            ]["L"]
        )
    )
    assert bool(LKJCholesky(3, 2.0).support.check(chol).all())
    corr = (chol @ chol.transpose(-1, -2)).mean(0)
    # posterior sd of each correlation is about (1 - r²) / √n ≤ 0.05
    torch.testing.assert_close(corr, sample_corr, atol=0.06, rtol=0)
    assert not math.isnan(float(result.losses[-1]))


def test_map_and_hand_written_guide_on_a_flat_prior_model():
    x, y = _regression_data()
    least_squares = torch.linalg.lstsq(x.double(), y.double()[:, None]).solution.squeeze(-1)
    guide = AutoDelta(flat_regression)
    SVI(flat_regression, guide, lr=0.05).run(600, x, y, seed=0, show_progress_bar=False)
    # the mode in β of p(β, σ | y) ∝ σ^-n exp(-|y - Xβ|² / 2σ²) is least squares, for any σ
    torch.testing.assert_close(guide.median()["beta"].double(), least_squares, atol=0.02, rtol=0)

    def hand_guide(x, y):
        loc = param("beta_loc", torch.zeros(P))
        sample("beta", Independent(Normal(loc, 0.1), 1))
        sample("sigma", LogNormal(param("log_sigma_loc", torch.tensor(0.0)), 0.1))

    result = SVI(flat_regression, hand_guide, lr=0.05).run(
        400, x, y, seed=0, show_progress_bar=False
    )
    assert bool(torch.isfinite(result.losses).all())
    torch.testing.assert_close(result.params["beta_loc"].double(), least_squares, atol=0.1, rtol=0)
