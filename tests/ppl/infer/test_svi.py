"""SVI on the engine: closed-form posteriors for every divergence, resuming, errors."""

from __future__ import annotations

import math

import pytest
import torch
from ppl_infer_models import (
    correlated_data,
    correlated_model,
    correlated_posterior,
    gaussian_data,
    gaussian_model,
    gaussian_posterior,
    local_model,
)
from torch.distributions import Normal, constraints

from sbi_vi.ppl import param, plate, sample
from sbi_vi.ppl.infer import SVI, AutoDelta, AutoMultivariateNormal, AutoNormal
from sbi_vi.vi.divergences import ReverseKL

DIVERGENCES = [
    ("rKL", {}, 8, 600),
    ("IW", {"K": 4, "dreg": True}, 4, 1000),
    ("alpha", {"alpha": 0.5}, 16, 600),
    ("fKL", {}, 32, 600),
]


@pytest.mark.parametrize(("divergence", "options", "n_particles", "steps"), DIVERGENCES)
def test_autonormal_recovers_the_conjugate_gaussian_posterior(
    divergence, options, n_particles, steps
):
    x = gaussian_data()
    mean, sd = gaussian_posterior(x)
    svi = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05, divergence=divergence,
              n_particles=n_particles, **options)  # fmt: skip
    result = svi.run(steps, x, seed=0, show_progress_bar=False)
    assert abs(float(result.params["mu_auto_loc"]) - mean) < 0.2 * sd
    assert abs(float(result.params["mu_auto_scale"]) / sd - 1) < 0.15
    assert result.losses.shape == (steps,) and bool(torch.isfinite(result.losses).all())


@pytest.mark.slow
@pytest.mark.parametrize(("divergence", "options", "n_particles", "steps"), DIVERGENCES)
def test_full_rank_guide_recovers_a_correlated_posterior(divergence, options, n_particles, steps):
    y = correlated_data()
    mean, cov = correlated_posterior(y)
    svi = SVI(correlated_model, AutoMultivariateNormal(correlated_model), lr=0.05,
              divergence=divergence, n_particles=n_particles, **options)  # fmt: skip
    result = svi.run(steps, y, seed=1, show_progress_bar=False)
    tril = result.params["auto_scale_tril"]
    sd = cov.diagonal().sqrt()
    assert bool(((result.params["auto_loc"] - mean).abs() < 0.3 * sd).all())
    assert torch.allclose(tril @ tril.T, cov, atol=0.1)


def test_map_with_autodelta_finds_the_posterior_mode():
    x = gaussian_data()
    mean, _ = gaussian_posterior(x)
    result = SVI(gaussian_model, AutoDelta(gaussian_model), lr=0.05).run(
        500, x, seed=0, show_progress_bar=False
    )
    assert abs(float(result.params["mu_auto_loc"]) - mean) < 1e-2


def test_run_resumes_and_step_continues():
    x = gaussian_data()
    svi = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05)
    first = svi.run(100, x, seed=0, show_progress_bar=False)
    optimizer = svi.optimizer
    second = svi.run(100, x, seed=1, show_progress_bar=False)
    assert svi.optimizer is optimizer and optimizer.state  # same optimiser, same state
    assert float(second.losses[-20:].mean()) < float(first.losses[:20].mean())
    loss = svi.step(x)
    assert math.isfinite(loss) and svi.losses.shape == (201,)
    assert not torch.equal(first.params["mu_auto_loc"], second.params["mu_auto_loc"])


def test_the_same_seed_gives_the_same_fit():
    x = gaussian_data()
    runs = [
        SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05).run(
            20, x, seed=3, show_progress_bar=False
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].losses, runs[1].losses)


def test_optimizer_class_factory_and_scheduler():
    x = gaussian_data()
    svi = SVI(gaussian_model, AutoNormal(gaussian_model), optimizer=torch.optim.SGD, lr=0.01)
    svi.run(2, x, show_progress_bar=False)
    assert isinstance(svi.optimizer, torch.optim.SGD)
    svi = SVI(gaussian_model, AutoNormal(gaussian_model),
              optimizer=lambda params: torch.optim.Adam(params, lr=0.2),
              scheduler=torch.optim.lr_scheduler.StepLR,
              scheduler_kwargs={"step_size": 1, "gamma": 0.5})  # fmt: skip
    svi.run(3, x, show_progress_bar=False)
    assert svi.optimizer.param_groups[0]["lr"] == pytest.approx(0.2 / 8)
    constant = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.01)
    constant.run(5, x, show_progress_bar=False)
    assert constant.optimizer.param_groups[0]["lr"] == 0.01


def test_user_written_guide_with_params_and_a_local_plate(local_data):
    n = local_data.shape[0]

    def guide(y, subsample_size=4):
        loc = param("mu_loc", torch.tensor(0.0))
        sample(
            "mu",
            Normal(loc, param("mu_scale", torch.tensor(0.5), constraint=constraints.positive)),
        )
        sample("tau", torch.distributions.LogNormal(param("tau_loc", torch.tensor(0.0)), 0.3))
        sample(
            "w",
            torch.distributions.Dirichlet(
                param("w_conc", torch.ones(3), constraint=constraints.positive)
            ),
        )
        with plate("groups", n, subsample_size=subsample_size):
            theta_loc = param("theta_loc", torch.zeros(n), event_dim=0)
            sample("theta", Normal(theta_loc, 0.3))

    svi = SVI(local_model, guide, lr=0.05)
    result = svi.run(300, local_data, seed=0, show_progress_bar=False)
    assert {"mu_loc", "mu_scale", "tau_loc", "w_conc", "theta_loc"} <= set(result.params)
    assert result.params["theta_loc"].shape == (n,)
    # the local locations follow their data points
    corr = torch.corrcoef(torch.stack([result.params["theta_loc"], local_data]))[0, 1]
    assert float(corr) > 0.9
    assert float(result.params["mu_scale"]) > 0


def test_user_guide_supports_every_divergence_without_subsampling():
    x = gaussian_data()
    mean, sd = gaussian_posterior(x)

    def guide(x):
        loc = param("loc", torch.tensor(0.0))
        scale = param("scale", torch.tensor(0.5), constraint=constraints.positive)
        sample("mu", Normal(loc, scale))

    settings = [
        ("IW", {"K": 4, "dreg": True}, 2, 0.1, 300),
        ("alpha", {"alpha": 0.5}, 8, 0.1, 250),
        ("fKL", {}, 32, 0.05, 400),
    ]
    for divergence, options, p, lr, steps in settings:
        svi = SVI(gaussian_model, guide, lr=lr, divergence=divergence, n_particles=p, **options)
        result = svi.run(steps, x, seed=0, show_progress_bar=False)
        assert abs(float(result.params["loc"]) - mean) < 0.35 * sd, divergence
    stl = SVI(gaussian_model, guide, lr=0.05, stick_the_landing=True, n_particles=4)
    result = stl.run(400, x, seed=0, show_progress_bar=False)
    assert abs(float(result.params["scale"]) / sd - 1) < 0.15


def test_divergences_that_need_full_data_refuse_subsampling(local_data):
    for divergence, options in [("fKL", {}), ("IW", {"K": 2}), ("alpha", {"alpha": 0.5})]:
        svi = SVI(local_model, AutoNormal(local_model), divergence=divergence, **options)
        with pytest.raises(ValueError, match=r"subsamples plate\(s\) \['groups'\].*rKL"):
            svi.run(1, local_data, show_progress_bar=False)
    # without subsampling they run, locals included
    svi = SVI(local_model, AutoNormal(local_model), divergence="IW", K=2)
    svi.run(2, local_data, None, show_progress_bar=False)
    with pytest.raises(ValueError, match="point mass"):
        SVI(gaussian_model, AutoDelta(gaussian_model), divergence="fKL").run(
            1, gaussian_data(), show_progress_bar=False
        )


def test_bad_arguments():
    guide = AutoNormal(gaussian_model)
    with pytest.raises(TypeError, match="model"):
        SVI(1, guide)
    with pytest.raises(TypeError, match="guide"):
        SVI(gaussian_model, None)
    with pytest.raises(TypeError, match="optimizer instance"):
        SVI(
            gaussian_model, guide, optimizer=torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        )
    with pytest.raises(ValueError, match="lr"):
        SVI(gaussian_model, guide, lr=-1.0)
    with pytest.raises(ValueError, match="n_particles"):
        SVI(gaussian_model, guide, n_particles=0)
    with pytest.raises(ValueError, match="vi_method"):
        SVI(gaussian_model, guide, divergence="KL")
    with pytest.raises(TypeError, match="Unknown option"):
        SVI(gaussian_model, guide, K2=3)
    with pytest.raises(TypeError, match="already configured"):
        SVI(gaussian_model, guide, divergence=ReverseKL(), stick_the_landing=True)
    with pytest.raises(ValueError, match="num_steps"):
        SVI(gaussian_model, guide).run(0, gaussian_data())

    def incomplete(x):
        pass

    with pytest.raises(ValueError, match=r"does not sample the model's latent site\(s\) \['mu'\]"):
        SVI(gaussian_model, incomplete).run(1, gaussian_data(), show_progress_bar=False)


def test_minibatch_elbo_gradient_is_unbiased(local_data):
    """E[∇ surrogate] on minibatches of 3 equals E[∇ surrogate] on all 12 data points."""
    svi = SVI(local_model, AutoNormal(local_model, init_scale=0.3))
    svi.setup(local_data, 3)
    params = list(svi.guide.parameters())
    everything = {"groups": torch.arange(12)}

    def mean_grad(indices_fn, reps=400):
        torch.manual_seed(0)
        grads = []
        for _ in range(reps):
            indices = indices_fn()
            draw = svi.guide.draw(1, indices)
            log_p = svi.objective.run_model(draw.values, 1, (local_data, 3), {}, indices)
            loss = svi.divergence.from_log_densities(log_p, draw.log_q).loss
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        g = torch.stack(grads)
        return g.mean(0), g.std(0) / math.sqrt(reps)

    sub, sub_se = mean_grad(svi.objective.info.draw_indices)
    full, full_se = mean_grad(lambda: everything)
    z = (sub - full) / (sub_se.square() + full_se.square()).sqrt().clamp(min=1e-6)
    assert float(z.abs().max()) < 4.5, z
    # the check has power: the local gradients are large and nonzero on average
    assert float(full.abs().max()) > 10 * float(full_se.max())


def test_model_parameters_are_learnt_with_the_guide():
    torch.manual_seed(0)
    x = 2.0 + 0.7 * torch.randn(400)

    def model(x):
        mu = sample("mu", Normal(0.0, 10.0))
        noise = param("noise", torch.tensor(1.0), constraint=constraints.positive)
        with plate("data", x.shape[0], subsample_size=100) as idx:
            sample("x", Normal(mu, noise), obs=x[idx])

    svi = SVI(model, AutoNormal(model), lr=0.05)
    result = svi.run(600, x, seed=0, show_progress_bar=False)
    assert abs(float(result.params["noise"]) - 0.7) < 0.1
    assert abs(float(result.params["mu_auto_loc"]) - float(x.mean())) < 0.15
    from sbi_vi.ppl.infer import Predictive

    draws = Predictive(model, guide=result.guide, num_samples=200)(x, seed=0)
    assert abs(float(draws["x"].std()) - 0.7) < 0.1  # the learnt noise, from the SVI's store
