"""``VIPosterior.log_evidence`` and ``sample(method="sir")`` against known answers.

The evidence is checked against gaussian_linear's closed form (x ~ N(0, (σ₀² + σ²) I)) and
against grid quadrature on two_moons (true likelihood, box prior); its error bar must cover
the truth at about its nominal rate over seeds. SIR must pull a deliberately shifted q onto
the known posterior, and be refused where k̂ says the weights cannot be trusted. q is a
fixed distribution installed by a one-step ``train`` with a negligible learning rate, so
that the answers are known and the tests cost no training.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    SigmoidTransform,
    TransformedDistribution,
    Uniform,
)

from sbi_vi import VIPosterior
from sbi_vi.diagnostics import LogEvidence
from sbi_vi.errors import QualityWarning
from sbi_vi.potentials import (
    likelihood_estimator_based_potential,
    ratio_estimator_based_potential,
)
from sbi_vi.tasks import get_task

LINEAR = get_task("gaussian_linear")
X_LINEAR = LINEAR.get_observation(1)
TRUE = LINEAR.true_posterior(X_LINEAR)
D = LINEAR.dim_theta
EXACT_LOG_EVIDENCE = float(
    MultivariateNormal(
        torch.zeros(D), (LINEAR.prior_variance + LINEAR.noise_variance) * torch.eye(D)
    ).log_prob(X_LINEAR[0])
)


def fixed_q_posterior(
    potential: object, prior: object, q: Distribution, parameter: torch.Tensor, x: torch.Tensor
) -> VIPosterior:
    """A posterior whose q is ``q`` (over unconstrained θ), marked trained on ``x``."""
    posterior = VIPosterior(potential, prior, q=q, parameters=[parameter])
    return posterior.train(
        x,
        max_num_iters=1,
        learning_rate=1e-12,
        warm_up_rounds=0,
        annealing_iters=0,
        check_for_convergence=False,
        quality_control=False,
        show_progress_bar=False,
    )


def linear_posterior(shift: float, scale: float, potential: object = None) -> VIPosterior:
    """q = N(true mean + shift, scale² × true covariance) on gaussian_linear."""
    if potential is None:
        potential, _ = likelihood_estimator_based_potential(LINEAR.likelihood, LINEAR.prior)
    loc = (TRUE.loc + shift).clone().requires_grad_(True)
    q = MultivariateNormal(loc, scale**2 * TRUE.covariance_matrix)
    return fixed_q_posterior(potential, LINEAR.prior, q, loc, X_LINEAR)


@pytest.fixture(scope="module")
def slightly_off() -> VIPosterior:
    return linear_posterior(shift=0.03, scale=1.15)


# ---------------------------------------------------------------------------- the evidence
def test_log_evidence_matches_the_closed_form_on_gaussian_linear(slightly_off):
    torch.manual_seed(0)
    evidence = slightly_off.log_evidence(N=20_000)
    assert isinstance(evidence, LogEvidence) and evidence.n_particles == 20_000
    assert evidence.reliable and evidence.khat < 0.5
    assert 0 < evidence.stderr < 0.05
    assert abs(evidence.value - EXACT_LOG_EVIDENCE) < 4 * evidence.stderr


def test_the_error_bar_covers_the_truth_at_about_its_nominal_rate(slightly_off):
    """±2 SE has ~95 % coverage: over 20 seeds, 16 to 20 must cover (P(fail) ≈ 1.6 %)."""
    covered, errors = 0, []
    for seed in range(20):
        torch.manual_seed(seed)
        evidence = slightly_off.log_evidence(N=1000)
        errors.append((evidence.value - EXACT_LOG_EVIDENCE) / evidence.stderr)
        covered += abs(errors[-1]) <= 2
    assert 16 <= covered <= 20, errors
    assert abs(sum(errors) / 20) < 1.0  # no systematic offset beyond noise


def test_log_evidence_matches_quadrature_on_two_moons():
    task = get_task("two_moons")
    x_o = task.get_observation(1)
    h = 2 / 1000  # the moon is a ring of radial sd 0.01: 5 grid points per sd
    grid = torch.linspace(-1 + h / 2, 1 - h / 2, 1000, dtype=torch.float64)
    chunks = [
        torch.logsumexp(
            task.log_likelihood(
                torch.stack(torch.meshgrid(rows, grid, indexing="ij"), -1).reshape(-1, 2),
                x_o.double(),
            ),
            0,
        )
        for rows in grid.split(250)
    ]
    quadrature = float(torch.logsumexp(torch.stack(chunks), 0)) + math.log(h * h / 4)
    potential, _ = likelihood_estimator_based_potential(task.likelihood, task.prior)
    low = torch.zeros(2, requires_grad=True)  # a logistic in unconstrained space: q uniform
    q = TransformedDistribution(Independent(Uniform(low, low + 1), 1), [SigmoidTransform().inv])
    posterior = fixed_q_posterior(potential, task.prior, q, low, x_o)
    torch.manual_seed(0)
    evidence = posterior.log_evidence(N=100_000)
    assert evidence.reliable and evidence.stderr < 0.1
    assert abs(evidence.value - quadrature) < 4 * evidence.stderr


def test_a_ratio_potential_is_refused_unless_declared_normalised():
    ratio_potential, _ = ratio_estimator_based_potential(
        lambda theta, x: LINEAR.likelihood.log_prob(x, theta), LINEAR.prior
    )  # a "ratio" that is in fact the normalised likelihood
    posterior = linear_posterior(0.03, 1.15, potential=ratio_potential)
    with pytest.raises(ValueError, match=r"ratio-based.*normalized=True"):
        posterior.log_evidence(N=100)
    torch.manual_seed(0)
    evidence = posterior.log_evidence(N=5000, normalized=True)
    assert abs(evidence.value - EXACT_LOG_EVIDENCE) < 4 * evidence.stderr


def test_a_custom_potential_is_refused_unless_declared_normalised():
    def potential(theta, x_o):
        return LINEAR.likelihood.log_prob(x_o, theta) + LINEAR.prior.log_prob(theta)

    posterior = linear_posterior(0.03, 1.15, potential=potential)
    with pytest.raises(ValueError, match=r"custom potential.*normalized=True"):
        posterior.log_evidence()
    with pytest.raises(TypeError, match="`normalized` must be a bool"):
        posterior.log_evidence(normalized="yes")
    with pytest.raises(ValueError, match="`N` must be at least 2"):
        posterior.log_evidence(N=1, normalized=True)
    torch.manual_seed(0)
    evidence = posterior.log_evidence(N=5000, normalized=True)
    assert abs(evidence.value - EXACT_LOG_EVIDENCE) < 4 * evidence.stderr


def test_log_evidence_of_an_untrained_q_is_a_value_error():
    potential, _ = likelihood_estimator_based_potential(LINEAR.likelihood, LINEAR.prior)
    with pytest.raises(ValueError, match="not trained"):
        VIPosterior(potential, LINEAR.prior, q="gaussian").log_evidence(N=10)


# ---------------------------------------------------------------------------- SIR draws
def test_sir_moves_a_biased_q_onto_the_posterior():
    posterior = linear_posterior(shift=0.1, scale=1.2)  # 0.45 posterior sd off per dim
    torch.manual_seed(0)
    direct = posterior.sample((4000,))
    sir = posterior.sample((4000,), method="sir", num_proposals=50_000)
    assert sir.shape == direct.shape == (4000, D)
    error_direct = float((direct.mean(0) - TRUE.loc).norm())
    error_sir = float((sir.mean(0) - TRUE.loc).norm())
    assert error_sir < error_direct / 5, (error_direct, error_sir)
    sd_ratio = sir.std(0) / TRUE.covariance_matrix.diagonal().sqrt()
    assert float((sd_ratio - 1).abs().max()) < 0.15  # q was 20 % too wide
    info = posterior.sir_diagnostics
    assert info.khat < 0.7 and 4000 < info.ess <= 50_000 and info.num_proposals == 50_000


def test_sir_is_refused_when_khat_is_too_large():
    posterior = linear_posterior(shift=0.5, scale=0.7)  # narrow and far off
    with pytest.raises(ValueError, match=r"k-hat = .* > 0\.7.*method='direct'"):
        posterior.sample((100,), method="sir")
    assert posterior.sir_diagnostics is None  # nothing recorded for a refused call


def test_sir_warns_when_the_draws_would_repeat(slightly_off):
    torch.manual_seed(0)
    with pytest.warns(QualityWarning, match="effective sample size"):
        slightly_off.sample((2000,), method="sir", num_proposals=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QualityWarning)
        theta = slightly_off.sample((2, 3), method="sir")  # default: 10,000 proposals
    assert theta.shape == (2, 3, D) and slightly_off.sir_diagnostics.num_samples == 6
    assert slightly_off.sample(method="sir").shape == (D,)


def test_sir_arguments_are_checked(slightly_off):
    with pytest.raises(ValueError, match="method"):
        slightly_off.sample((3,), method="importance")
    with pytest.raises(ValueError, match="`num_proposals` is for method='sir'"):
        slightly_off.sample((3,), num_proposals=100)
    with pytest.raises(ValueError, match="`num_proposals` must be an integer >= 2"):
        slightly_off.sample((3,), method="sir", num_proposals=1)


def test_sir_follows_the_global_seed(slightly_off):
    torch.manual_seed(3)
    a = slightly_off.sample((50,), method="sir")
    torch.manual_seed(3)
    assert torch.equal(a, slightly_off.sample((50,), method="sir"))


def test_sir_resample_keeps_the_shapes_of_sample():
    from sbi_vi.posteriors.importance import sir_resample

    theta, log_w = torch.randn(200, 3, 2), 0.1 * torch.randn(200, 3)
    for shape, expected in (((0,), (0, 3, 2)), ((4, 5), (4, 5, 3, 2)), ((), (3, 2))):
        out, info = sir_resample(theta, log_w, torch.Size(shape))
        assert out.shape == expected and info.khat.shape == (3,)
    out, info = sir_resample(theta[:, 0], log_w[:, 0], torch.Size((7,)))
    assert out.shape == (7, 2) and isinstance(info.khat, float)
    assert bool((out.unsqueeze(1) == theta[:, 0]).all(-1).any(-1).all())  # draws of q only
