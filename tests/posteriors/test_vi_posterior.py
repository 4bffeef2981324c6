"""VIPosterior: the sbi API on the engine, checked against closed-form posteriors."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from sbi_vi import BoxUniform, VIPosterior
from sbi_vi.errors import NotTrainedError, QualityWarning
from sbi_vi.potentials import LikelihoodBasedPotential

PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
NOISE = 0.1
X_O = torch.tensor([[1.0, -0.5]])
# conjugate posterior of θ ~ N(0, I), x | θ ~ N(θ, 0.1 I)
POST_MEAN = X_O[0] / (1 + NOISE)
POST_SD = (NOISE / (1 + NOISE)) ** 0.5


def gaussian_potential(theta, x_o):
    return PRIOR.log_prob(theta) - 0.5 * ((theta - x_o) ** 2).sum(-1) / NOISE


def likelihood(theta, x):
    return Normal(theta, NOISE**0.5).log_prob(x).sum(-1)


def trained(q="gaussian", method="rKL", **train_kwargs) -> VIPosterior:
    torch.manual_seed(0)
    posterior = VIPosterior(gaussian_potential, PRIOR, q=q, vi_method=method)
    posterior.set_default_x(X_O)
    train_kwargs.setdefault("show_progress_bar", False)
    return posterior.train(**train_kwargs)


@pytest.mark.parametrize("method", ["rKL", "fKL", "IW", "alpha"])
def test_gaussian_posterior_matches_closed_form(method):
    posterior = trained("gaussian", method)
    samples = posterior.sample((20_000,))
    torch.testing.assert_close(samples.mean(0), POST_MEAN, atol=0.04, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((2,), POST_SD), atol=0.03, rtol=0)
    assert posterior.evaluate(N=5000).khat < 0.5


@pytest.mark.parametrize("q", ["maf", "nsf", "nice", "gaussian_diag"])
def test_flow_families_fit_the_posterior(q):
    posterior = trained(q, max_num_iters=400, n_particles=128, quality_control=False)
    samples = posterior.sample((10_000,))
    torch.testing.assert_close(samples.mean(0), POST_MEAN, atol=0.06, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((2,), POST_SD), atol=0.05, rtol=0)


def test_samples_stay_in_a_bounded_support():
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    potential = LikelihoodBasedPotential(likelihood, prior, torch.tensor([0.95, 0.5]))
    torch.manual_seed(0)
    posterior = VIPosterior(potential, q="maf").train(
        max_num_iters=300, show_progress_bar=False, quality_control=False
    )
    samples = posterior.sample((5000,))
    assert bool(((samples > 0) & (samples < 1)).all())
    assert posterior.log_prob(samples[:10]).shape == (10,)


def test_sample_and_log_prob_shapes_and_consistency():
    posterior = trained(max_num_iters=200)
    assert posterior.sample().shape == (2,)
    assert posterior.sample((3, 4)).shape == (3, 4, 2)
    theta = posterior.sample((100,))
    log_q = posterior.log_prob(theta)
    assert log_q.shape == (100,) and not log_q.requires_grad
    assert posterior.log_prob(theta[0]).shape == ()
    assert posterior.log_prob(theta, track_gradients=True).requires_grad
    assert posterior.potential(theta).shape == (100,)


def test_errors_name_the_problem():
    posterior = VIPosterior(gaussian_potential, PRIOR)
    with pytest.raises(NotTrainedError, match="train"):
        posterior.sample((2,))
    with pytest.raises(ValueError, match="No observation"):
        posterior.train(show_progress_bar=False)
    posterior = trained(max_num_iters=100)
    with pytest.raises(ValueError, match="`theta` must have shape"):
        posterior.log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="another observation"):
        posterior.sample((2,), x=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="trailing shape"):
        posterior.set_default_x(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="finite"):
        posterior.set_default_x(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(TypeError, match="unexpected keyword"):
        posterior.train(learnig_rate=1e-3, show_progress_bar=False)
    with pytest.raises(ValueError, match="does not apply"):
        posterior.train(K=4, show_progress_bar=False)
    with pytest.raises(ValueError, match="n_particles"):
        posterior.train(n_particles=0, show_progress_bar=False)
    with pytest.raises(ValueError, match="vi_method"):
        posterior.set_vi_method("KL")
    with pytest.raises(ValueError, match="`q` must be one of"):
        VIPosterior(gaussian_potential, PRIOR, q="flow")
    with pytest.raises(ValueError, match="prior"):
        VIPosterior(gaussian_potential)
    with pytest.raises(NotImplementedError, match="train_amortized"):
        posterior.sample_batched((10,), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="validation split"):
        posterior.train_amortized(torch.zeros(10, 2), torch.zeros(10, 2), validation_fraction=0.05)


def test_theta_outside_support_is_an_error():
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    potential = LikelihoodBasedPotential(likelihood, prior, torch.tensor([0.5, 0.5]))
    posterior = VIPosterior(potential, q="gaussian").train(
        max_num_iters=50, show_progress_bar=False, quality_control=False
    )
    with pytest.raises(ValueError, match="outside the prior's support"):
        posterior.log_prob(torch.tensor([[2.0, 0.5]]))


def test_x_shape_is_enforced():
    posterior = VIPosterior(gaussian_potential, PRIOR, x_shape=torch.Size([1, 2]))
    with pytest.raises(ValueError, match="x_shape"):
        posterior.set_default_x(torch.zeros(1, 3))


def test_train_kwargs_reach_the_divergence_and_optimizer():
    posterior = trained(
        "gaussian",
        "IW",
        K=4,
        dreg=True,
        max_num_iters=60,
        optimizer=torch.optim.SGD,
        check_for_convergence=False,
        quality_control=False,
    )
    assert isinstance(posterior._optimizer, torch.optim.SGD)
    assert posterior.history[-1].num_iters == 60


def test_convergence_check_stops_before_max_iters():
    posterior = trained("gaussian", max_num_iters=5000)
    result = posterior.history[-1]
    assert result.converged and result.num_iters < 5000


def test_quality_control_warns_for_a_bad_q():
    """A Gaussian is too light-tailed for Neal's funnel: PSIS k-hat flags it.

    (A q collapsed onto one of two separated modes is *not* detectable this way: no draw
    lands in the missing mode, so the weights look fine.)
    """
    prior = MultivariateNormal(torch.zeros(4), 100.0 * torch.eye(4))

    def funnel(theta, x_o):
        v, rest = theta[..., 0], theta[..., 1:]
        scale = torch.exp(v / 2).unsqueeze(-1)
        return Normal(0.0, 3.0).log_prob(v) + Normal(0.0, scale).log_prob(rest).sum(-1)

    torch.manual_seed(0)
    posterior = VIPosterior(funnel, prior, q="gaussian").set_default_x(torch.zeros(1))
    with pytest.warns(QualityWarning, match="k-hat"):
        posterior.train(max_num_iters=1000, show_progress_bar=False)
    assert posterior.evaluate(N=10_000).khat > 0.7


def test_prop_metric_through_evaluate():
    posterior = trained(max_num_iters=800)
    result = posterior.evaluate("prop", N=5000)
    assert result.good and result.value > 0.8


def test_map_finds_the_mode():
    posterior = trained(max_num_iters=400)
    theta_map = posterior.map(num_iter=300, num_init_samples=500)
    torch.testing.assert_close(theta_map, POST_MEAN, atol=1e-2, rtol=0)
    assert posterior.map() is theta_map  # cached per x
    prior_init = posterior.map(init_method="prior", force_update=True, num_iter=300)
    torch.testing.assert_close(prior_init, POST_MEAN, atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="init_method"):
        posterior.map(init_method="sir", force_update=True)


def test_user_distribution_and_builder_and_copy():
    loc = torch.zeros(2, requires_grad=True)
    log_scale = torch.zeros(2, requires_grad=True)

    class Diag(Independent):
        def __init__(self):
            super().__init__(Normal(loc, torch.ones(2)), 1)

        def rsample(self, sample_shape=()):
            eps = torch.randn(*torch.Size(sample_shape), 2)
            return loc + log_scale.exp() * eps

        def log_prob(self, value):
            return Normal(loc, log_scale.exp()).log_prob(value).sum(-1)

    torch.manual_seed(0)
    posterior = VIPosterior(gaussian_potential, PRIOR, q=Diag(), parameters=[loc, log_scale])
    posterior.set_default_x(X_O).train(learning_rate=1e-2, show_progress_bar=False)
    torch.testing.assert_close(loc.detach(), POST_MEAN, atol=0.05, rtol=0)

    def builder(event_shape, link, device):
        from sbi_vi.vi.families import Gaussian

        return Gaussian(event_shape[0], link)().base  # a distribution holding live tensors

    with pytest.raises(ValueError, match="trainable"):
        VIPosterior(gaussian_potential, PRIOR, q=builder)

    source = trained("maf", max_num_iters=100, quality_control=False)
    copy = VIPosterior(gaussian_potential, PRIOR, q=source)
    torch.manual_seed(1)
    a = source.q.sample((5,))
    torch.manual_seed(1)
    b = copy.q.sample((5,))
    torch.testing.assert_close(a, b)
    assert copy.family is not source.family


def test_retrain_and_resume():
    posterior = trained(max_num_iters=100, check_for_convergence=False, quality_control=False)
    optimizer = posterior._optimizer
    posterior.train(max_num_iters=50, check_for_convergence=False, show_progress_bar=False)
    assert posterior._optimizer is optimizer  # resumed
    posterior.train(
        max_num_iters=50,
        reset_optimizer=True,
        check_for_convergence=False,
        show_progress_bar=False,
    )
    assert posterior._optimizer is not optimizer
    family = posterior.family
    posterior.train(max_num_iters=20, retrain_from_scratch=True, show_progress_bar=False)
    assert posterior.family is not family
    assert len(posterior.history) == 4


def test_save_load_round_trip(tmp_path):
    from sbi_vi.tasks import get_task

    task = get_task("gaussian_linear")
    potential = LikelihoodBasedPotential(task.likelihood, task.prior, task.get_observation(1))
    torch.manual_seed(0)
    posterior = VIPosterior(potential, q="maf").train(max_num_iters=50, show_progress_bar=False)
    posterior.save(tmp_path / "post.pt")
    loaded = VIPosterior.load(tmp_path / "post.pt")
    torch.manual_seed(5)
    a = posterior.sample((10,))
    torch.manual_seed(5)
    b = loaded.sample((10,))
    torch.testing.assert_close(a, b)
    bad = VIPosterior(lambda t, x: -t.square().sum(-1), PRIOR, q="gaussian")
    with pytest.raises(TypeError, match="pickled"):
        bad.save(tmp_path / "bad.pt")


def test_seed_reproducibility_and_default_x_chain():
    a = trained(max_num_iters=80, quality_control=False).sample((5,))
    b = trained(max_num_iters=80, quality_control=False).sample((5,))
    torch.testing.assert_close(a, b)
    posterior = VIPosterior(gaussian_potential, PRIOR)
    assert posterior.set_default_x(X_O) is posterior
    assert torch.equal(posterior.default_x, X_O)
    assert "untrained" in repr(posterior)


def test_no_global_torch_state_change():
    from torch.distributions import Distribution

    before = (Distribution._validate_args, torch.get_default_dtype())
    trained(max_num_iters=20, quality_control=False)
    assert (Distribution._validate_args, torch.get_default_dtype()) == before
