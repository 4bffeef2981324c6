"""Tempering the target from the prior: the schedule, the two-phase fit, and mode coverage."""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, Uniform

from sbi_vi import VIPosterior
from sbi_vi.vi.fit import ConvergenceCheck, StoppingRule
from sbi_vi.vi.tempering import LinearTempering, annealed_fit


def test_tempering_interpolates_log_densities_and_keeps_the_base_support():
    def log_p(theta):
        return -theta.square().sum(-1)

    def log_base(theta):
        inside = (theta.abs() <= 1).all(-1)
        return torch.where(inside, torch.zeros(()), torch.tensor(-math.inf))

    target = LinearTempering(log_p, log_base, num_steps=4)
    theta = torch.tensor([[0.5, 0.5], [2.0, 0.0]])  # inside, outside the base's support
    betas, values = [], []
    for _ in range(6):
        betas.append(target.beta)
        values.append(target(theta))
        target.step()
    assert betas == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    for beta, value in zip(betas, values):
        assert value[0].item() == pytest.approx(-0.5 * beta)
        # Outside the base's support: -inf while tempering (never NaN from -inf - -inf),
        # then the target itself.
        assert value[1].item() == (-math.inf if beta < 1 else -4.0)
    with pytest.raises(ValueError, match="num_steps"):
        LinearTempering(log_p, log_base, num_steps=0)


class _StopAtOnce(StoppingRule):
    def __init__(self):
        self.calls = 0

    def update(self, iteration, value):
        self.calls += 1
        return True


def _make_loss(param):
    def make_loss(target):
        def closure():
            value = -target(param.unsqueeze(0)).sum()
            return value, value.detach()

        return closure

    return make_loss


def _quadratic_annealed_fit(start, lr, **kwargs):
    """annealed_fit of a point θ on log p = -|θ|² from a flat base."""
    param = torch.nn.Parameter(torch.tensor([start]))
    return annealed_fit(
        _make_loss(param),
        lambda t: -t.square().sum(-1),
        lambda t: torch.zeros(t.shape[:-1]),
        optimizer=torch.optim.SGD([param], lr=lr),
        show_progress_bar=False,
        **kwargs,
    )


def test_annealed_fit_runs_both_phases_and_stops_only_in_the_second():
    rule = _StopAtOnce()
    result = _quadratic_annealed_fit(3.0, 0.1, num_steps=30, max_num_iters=100, stopping=rule)
    # 30 annealing iterations (the rule never consulted), then one before the rule stops.
    assert result.num_iters == 31 and result.losses.shape == (31,) and result.converged
    assert rule.calls == 1
    assert torch.isfinite(result.losses).all()


def test_annealed_fit_caps_the_annealing_at_max_num_iters_and_zero_is_plain_fit():
    capped = _quadratic_annealed_fit(
        1.0, 0.01, num_steps=50, max_num_iters=20, stopping=ConvergenceCheck()
    )
    assert capped.num_iters == 20 and not capped.converged
    plain = _quadratic_annealed_fit(1.0, 0.01, num_steps=0, max_num_iters=7)
    assert plain.num_iters == 7


def _two_mode_problem():
    # A broad uniform prior and a likelihood with two far-apart, equally likely modes in
    # the first coordinate (a sign symmetry, as in SLCP): rKL tends to settle on one.
    prior = Independent(Uniform(-torch.full((2,), 4.0), torch.full((2,), 4.0)), 1)
    modes = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    component = MultivariateNormal(torch.zeros(2), 0.09 * torch.eye(2))

    def potential(theta, x_o):
        log_lik = torch.logsumexp(component.log_prob(theta.unsqueeze(-2) - modes), -1)
        return log_lik + prior.log_prob(theta)

    return prior, potential


@pytest.mark.slow
def test_default_annealing_keeps_both_modes_of_a_symmetric_posterior():
    prior, potential = _two_mode_problem()
    shares = []
    for seed in range(3):
        posterior = VIPosterior(potential, prior, q="maf")
        posterior.set_default_x(torch.zeros(1, 1))
        posterior.train(show_progress_bar=False, quality_control=False, seed=seed)
        samples = posterior.sample((4000,))
        shares.append(float((samples[:, 0] > 0).float().mean()))
    # Every run puts a clear share of its mass on each mode (exact answer 0.5).
    assert all(0.15 < share < 0.85 for share in shares), shares


def test_annealing_iters_is_checked_and_skipped_for_a_warm_start():
    prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)

    def potential(theta, x_o):  # the constant makes tempered and plain losses ~20 nats apart
        return prior.log_prob(theta) - 0.5 * ((theta - x_o) ** 2).sum(-1) / 0.1 - 20.0

    posterior = VIPosterior(potential, prior, q="gaussian").set_default_x(torch.ones(1, 2))
    with pytest.raises(ValueError, match="annealing_iters"):
        posterior.train(annealing_iters=-1, show_progress_bar=False)
    posterior.train(max_num_iters=400, annealing_iters=100, show_progress_bar=False, seed=0)
    first = posterior.history[-1]
    assert first.num_iters > 100  # the annealing iterations count, convergence comes after
    # Tempered losses start far below the plain ones (β = 1/100 scales the -20 away).
    assert first.losses[:10].mean() < first.losses[-10:].mean() - 10
    # A second call continues from the trained q: no annealing, the plain loss throughout.
    posterior.train(max_num_iters=40, annealing_iters=1000, show_progress_bar=False, seed=1)
    second = posterior.history[-1]
    assert abs(second.losses.mean() - first.losses[-10:].mean()) < 1.0


def test_tempering_mixes_dtypes_of_target_and_base():
    target = LinearTempering(
        lambda t: -t.double().square().sum(-1), lambda t: torch.zeros(t.shape[:-1]), 2
    )
    value = target(torch.ones(3, 2))
    assert value.dtype == torch.float64 and torch.allclose(value, torch.full((3,), -1.0).double())
