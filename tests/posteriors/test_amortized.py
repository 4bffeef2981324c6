"""Amortised VI: q(θ | x) against the closed-form posterior of a conjugate model, the
shape rules of sample/log_prob/sample_batched, per-observation diagnostics, and errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from sbi_vi import BoxUniform, VIPosterior
from sbi_vi.diagnostics import check_sbc, run_sbc
from sbi_vi.errors import NotTrainedError
from sbi_vi.potentials import LikelihoodBasedPotential

PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
NOISE_SD = 0.5
SHRINK = 1 / (1 + NOISE_SD**2)  # posterior N(SHRINK x, SHRINK σ² I) of θ ~ N(0, I), x ~ N(θ, σ²)
POST_SD = (SHRINK * NOISE_SD**2) ** 0.5
X_TEST = torch.tensor([[0.0, 0.0], [1.5, -1.0], [-2.0, 0.5], [0.7, 2.2]])


def likelihood(theta, x):
    return Normal(theta, NOISE_SD).log_prob(x).sum(-1)


def simulate(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=g)
    return theta, theta + NOISE_SD * torch.randn(n, 2, generator=g)


def amortized(method: str = "rKL", flow_type: str = "gaussian", **kwargs) -> VIPosterior:
    theta, x = simulate(4000)
    potential = LikelihoodBasedPotential(likelihood, PRIOR)
    posterior = VIPosterior(potential, PRIOR, vi_method=method)
    kwargs.setdefault("n_particles", 64)
    kwargs.setdefault("batch_size", 128)
    kwargs.setdefault("max_num_iters", 600)
    kwargs.setdefault("stop_after_iters", 100)
    kwargs.setdefault("learning_rate", 3e-3)
    return posterior.train_amortized(
        theta, x, flow_type=flow_type, show_progress_bar=False, seed=0, **kwargs
    )


@pytest.fixture(scope="module")
def gaussian_q() -> VIPosterior:
    return amortized()


@pytest.mark.parametrize("method", ["rKL", "IW", "alpha"])
def test_amortized_q_matches_the_closed_form_posterior_at_unseen_x(method, gaussian_q):
    posterior = gaussian_q if method == "rKL" else amortized(method)
    torch.manual_seed(1)
    samples = posterior.sample((4000,), x=X_TEST)  # [S, B, D]
    assert samples.shape == (4000, 4, 2)
    mean_err = (samples.mean(0) - SHRINK * X_TEST).abs().max()
    sd_ratio = samples.std(0) / POST_SD
    assert mean_err < 0.1, (method, samples.mean(0))
    assert ((sd_ratio > 0.8) & (sd_ratio < 1.2)).all(), (method, sd_ratio)


def test_a_flow_family_fits_a_bounded_posterior_and_stays_in_the_support():
    prior = BoxUniform(-torch.ones(2), torch.ones(2))
    g = torch.Generator().manual_seed(0)
    theta = prior.sample((3000,))
    x = theta + 0.2 * torch.randn(3000, 2, generator=g)
    potential = LikelihoodBasedPotential(lambda t, xx: Normal(t, 0.2).log_prob(xx).sum(-1), prior)
    posterior = VIPosterior(potential, prior).train_amortized(
        theta, x, flow_type="maf", num_transforms=2, hidden_features=32,
        max_num_iters=300, show_progress_bar=False, seed=0,
    )  # fmt: skip
    x_o = torch.tensor([0.95, 0.0])
    samples = posterior.sample((4000,), x=x_o)
    assert samples.shape == (4000, 2)
    assert bool(((samples > -1) & (samples < 1)).all())
    # the first coordinate is pushed against the upper bound, the second is centred
    assert samples[:, 0].mean() > 0.6
    assert samples[:, 1].mean().abs() < 0.1
    quality = posterior.evaluate(x=x_o, N=4000)
    assert quality.khat.shape == (1,)
    assert bool(quality.reliable.all()), quality


def test_sample_shapes_follow_the_number_of_observations(gaussian_q):
    post = gaussian_q
    assert post.sample((5,), x=X_TEST[0]).shape == (5, 2)
    assert post.sample((5,), x=X_TEST[:1]).shape == (5, 2)
    assert post.sample((5, 3), x=X_TEST).shape == (5, 3, 4, 2)
    post.set_default_x(X_TEST[1])
    assert post.sample((6,)).shape == (6, 2)


def test_sample_batched_splits_work_without_changing_the_distribution(gaussian_q):
    torch.manual_seed(0)
    whole = gaussian_q.sample_batched((3000,), X_TEST)
    torch.manual_seed(0)
    split = gaussian_q.sample_batched((3000,), X_TEST, max_sampling_batch_size=1000)
    assert whole.shape == split.shape == (3000, 4, 2)
    assert (whole.mean(0) - split.mean(0)).abs().max() < 0.06
    assert (whole.std(0) / split.std(0) - 1).abs().max() < 0.1
    with pytest.raises(ValueError, match="max_sampling_batch_size"):
        gaussian_q.sample_batched((3,), X_TEST, max_sampling_batch_size=0)


def test_log_prob_broadcasting_rules_and_values(gaussian_q):
    post = gaussian_q
    theta = SHRINK * X_TEST[1] + POST_SD * torch.randn(4, 2)  # where the posterior has mass
    one_x = post.log_prob(theta, X_TEST[1])
    assert one_x.shape == (4,)
    paired = post.log_prob(theta, X_TEST)
    assert paired.shape == (4,)
    for i in range(4):  # paired rows equal one-at-a-time evaluations
        single = post.log_prob(theta[i], X_TEST[i])
        assert single.shape == ()
        torch.testing.assert_close(paired[i], single)
    one_theta = post.log_prob(theta[:1], X_TEST)
    assert one_theta.shape == (4,)
    torch.testing.assert_close(one_theta[2], post.log_prob(theta[0], X_TEST[2]))
    # the learned q is close to the closed form, so its density is too: KL(p ‖ q) is small
    exact = MultivariateNormal(SHRINK * X_TEST[1], POST_SD**2 * torch.eye(2))
    torch.manual_seed(0)
    draws = exact.sample((4000,))
    kl = (exact.log_prob(draws) - post.log_prob(draws, X_TEST[1])).mean()
    assert 0 <= kl < 0.05, kl
    with pytest.raises(ValueError, match="3 rows"):
        post.log_prob(torch.randn(3, 2), X_TEST)
    assert not post.log_prob(theta, X_TEST[1]).requires_grad
    assert post.log_prob(theta, X_TEST[1], track_gradients=True).requires_grad


def test_map_of_an_amortized_q_finds_the_posterior_mode(gaussian_q):
    x_o = X_TEST[1]
    theta_map = gaussian_q.map(x=x_o, num_iter=200, num_init_samples=500, num_to_optimize=20)
    torch.testing.assert_close(theta_map, SHRINK * x_o, atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="one observation"):
        gaussian_q.map(x=X_TEST, force_update=True)


def test_evaluate_flags_observations_that_q_serves_badly_and_refine_fixes_them():
    # q trained on a likelihood 4x too sharp is over-confident for the true potential
    theta, x = simulate(4000)
    sharp = LikelihoodBasedPotential(
        lambda t, xx: Normal(t, NOISE_SD / 4).log_prob(xx).sum(-1), PRIOR
    )
    posterior = VIPosterior(sharp, PRIOR).train_amortized(
        theta, x, flow_type="gaussian", n_particles=32, learning_rate=3e-3,
        max_num_iters=300, show_progress_bar=False, seed=0,
    )  # fmt: skip
    posterior.potential_fn = LikelihoodBasedPotential(likelihood, PRIOR)
    quality = posterior.evaluate(x=X_TEST, N=2000)
    assert quality.khat.shape == quality.ess.shape == quality.reliable.shape == (4,)
    assert not bool(quality.reliable.any()), quality  # prior-wide q for a 0.45-sd posterior
    assert quality.unreliable.tolist() == [0, 1, 2, 3]
    refined = posterior.evaluate(
        x=X_TEST[:2], N=2000, refine=True, refine_kwargs={"max_num_iters": 600}
    ).refined
    assert sorted(refined) == [0, 1]
    for i, single in refined.items():
        assert single.evaluate(N=4000).khat < 0.7
        samples = single.sample((4000,))
        assert (samples.mean(0) - SHRINK * X_TEST[i]).abs().max() < 0.1
    # refining leaves the amortised q as it was
    again = posterior.evaluate(x=X_TEST[:2], N=2000)
    assert not bool(again.reliable.any())


def test_sbc_of_the_amortized_gaussian_posterior_passes(gaussian_q):
    thetas, xs = simulate(300, seed=5)
    result = run_sbc(thetas, xs, gaussian_q, num_posterior_samples=200, seed=0,
                     show_progress_bar=False)  # fmt: skip
    assert result.passed(0.01), (result.ks_pvalues, result.chi2_pvalues)
    # an over-confident posterior (a third of the true sd) fails the same check
    narrow = run_sbc(thetas, xs, lambda x: Normal(SHRINK * x, POST_SD / 3),
                     num_posterior_samples=200, seed=0, show_progress_bar=False)  # fmt: skip
    assert not narrow.passed(0.01)
    ks, _ = check_sbc(narrow.ranks, 200)
    assert bool((ks < 0.01).all())


def test_save_and_load_keep_the_amortized_q(gaussian_q, tmp_path):
    path = tmp_path / "amortized.pt"
    gaussian_q.save(path)
    loaded = VIPosterior.load(path)
    theta = torch.randn(5, 2)
    torch.testing.assert_close(
        loaded.log_prob(theta, X_TEST[0]), gaussian_q.log_prob(theta, X_TEST[0])
    )
    torch.manual_seed(3)
    a = loaded.sample((10,), x=X_TEST)
    torch.manual_seed(3)
    b = gaussian_q.sample((10,), x=X_TEST)
    torch.testing.assert_close(a, b)
    assert "amortised" in repr(loaded)


def test_training_resumes_and_switching_kinds_of_q_warns():
    posterior = amortized(max_num_iters=50)
    assert posterior.history[-1].num_iters <= 50
    assert len(posterior.validation_losses) == posterior.history[-1].num_iters
    theta, x = simulate(4000)
    before = posterior.validation_losses[-1]
    posterior.train_amortized(
        theta, x, flow_type="gaussian", learning_rate=3e-3, max_num_iters=200,
        show_progress_bar=False,
    )  # fmt: skip
    assert min(posterior.validation_losses) < before  # continued from the trained q
    with pytest.warns(UserWarning, match="replaces the amortised"):
        posterior.train(
            X_TEST[1], max_num_iters=50, quality_control=False, show_progress_bar=False
        )
    with pytest.raises(NotImplementedError, match="train_amortized"):
        posterior.sample_batched((3,), X_TEST)
    with pytest.raises(ValueError, match="trained for another observation"):
        posterior.sample((3,), x=X_TEST[2])
    with pytest.warns(UserWarning, match="replaces the q trained for one observation"):
        posterior.train_amortized(theta, x, max_num_iters=5, show_progress_bar=False)
    assert posterior.sample((3,), x=X_TEST).shape == (3, 4, 2)


def test_early_stopping_restores_the_best_validation_weights():
    posterior = amortized(max_num_iters=400, stop_after_iters=5, learning_rate=0.05)
    losses = posterior.validation_losses
    n = posterior.history[-1].num_iters
    assert n < 400
    best = min(range(len(losses)), key=losses.__getitem__)
    assert best == n - 1 - 5  # stopped 5 validations after the best


def test_a_failed_call_keeps_the_trained_q(gaussian_q):
    theta, x = simulate(4000)
    calls = {"n": 0}

    def fragile(t, xx):
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("simulator-side failure")
        return PRIOR.log_prob(t) + likelihood(t, xx)

    posterior = VIPosterior(LikelihoodBasedPotential(likelihood, PRIOR), PRIOR)
    posterior.train_amortized(theta, x, flow_type="gaussian", max_num_iters=30,
                              n_particles=16, show_progress_bar=False, seed=0)  # fmt: skip
    reference = posterior.log_prob(torch.zeros(1, 2), X_TEST)
    posterior.potential_fn = LikelihoodBasedPotential(
        lambda t, xx: fragile(t, xx) - PRIOR.log_prob(t), PRIOR
    )
    with pytest.raises(RuntimeError, match="simulator-side failure"):
        posterior.train_amortized(theta, x, max_num_iters=100, show_progress_bar=False)
    torch.testing.assert_close(posterior.log_prob(torch.zeros(1, 2), X_TEST), reference)


def test_errors_name_the_argument():
    theta, x = simulate(200)
    posterior = VIPosterior(LikelihoodBasedPotential(likelihood, PRIOR), PRIOR)
    fit = posterior.train_amortized
    with pytest.raises(ValueError, match="validation_fraction"):
        fit(theta, x, validation_fraction=0.0)
    with pytest.raises(ValueError, match="validation_fraction"):
        fit(theta, x, validation_fraction=1.0)
    with pytest.raises(ValueError, match="empty"):
        fit(theta[:0], x[:0])
    with pytest.raises(ValueError, match="same simulated pairs"):
        fit(theta, x[:100])
    with pytest.raises(ValueError, match="D=2"):
        fit(torch.randn(200, 3), x)
    bad = x.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match="row 7"):
        fit(theta, bad)
    with pytest.raises(ValueError, match="batch_size"):
        fit(theta, x, batch_size=500)
    with pytest.raises(ValueError, match="validation split is empty"):
        fit(theta[:5], x[:5], batch_size=2)
    with pytest.raises(ValueError, match="flow_type"):
        fit(theta, x, flow_type="not-a-flow")
    with pytest.raises(TypeError, match="not_an_option"):
        fit(theta, x, not_an_option=1)
    with pytest.raises(NotTrainedError):
        posterior.sample_batched((3,), X_TEST)
    # x of the wrong trailing shape, once the shape of x is known
    posterior.train_amortized(
        theta, x, flow_type="gaussian", max_num_iters=2, show_progress_bar=False
    )
    with pytest.raises(ValueError, match="trailing shape"):
        posterior.sample((3,), x=torch.zeros(3))
    with pytest.raises(ValueError, match="trailing shape"):
        fit(theta, torch.zeros(200, 3))
    # a potential of θ alone cannot be amortised
    only_theta = VIPosterior(lambda t: PRIOR.log_prob(t), PRIOR)
    with pytest.raises(ValueError, match="θ alone"):
        only_theta.train_amortized(theta, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert posterior.evaluate(x=X_TEST[:1], N=500).khat.shape == (1,)
    with pytest.raises(ValueError, match="psis"):
        posterior.evaluate("prop", x=X_TEST[:1])
