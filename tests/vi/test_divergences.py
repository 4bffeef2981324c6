"""Divergences: shapes, closed-form fits, batched targets, gradient identities."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_vi.vi.divergences import (
    DIVERGENCES,
    ForwardKL,
    ImportanceWeighted,
    RenyiAlpha,
    ReverseKL,
    build_divergence,
)
from sbi_vi.vi.families import Gaussian
from sbi_vi.vi.fit import fit, make_optimizer

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[0.5, 0.3], [0.3, 0.4]])
TARGET = MultivariateNormal(MEAN, COV)
LOG_Z = 1.7  # the target is unnormalised by this constant


def log_p(theta):
    return TARGET.log_prob(theta) + LOG_Z


def _id(divergence) -> str:
    return "-".join([type(divergence).__name__, *(k for k, v in vars(divergence).items() if v)])


ALL = [
    ReverseKL(),
    ReverseKL(stick_the_landing=True),
    ForwardKL(),
    ForwardKL(weight_transform=lambda w: w.sqrt()),
    ForwardKL(refresh_every=4),
    ImportanceWeighted(K=4),
    ImportanceWeighted(K=4, dreg=True),
    RenyiAlpha(alpha=0.5),
    RenyiAlpha(alpha=0.5, dreg=True),
    RenyiAlpha(alpha=-0.5, stick_the_landing=True),
]


@pytest.mark.parametrize("divergence", ALL, ids=_id)
def test_output_shapes_single_and_batched(divergence):
    family = Gaussian(2)
    out = divergence(family, log_p, 16)
    n = 16 * getattr(divergence, "K", 1)
    assert out.loss.shape == () and out.value.shape == () and out.log_w.shape == (n,)
    conditional = Gaussian(2, context_size=3)
    out = divergence(conditional, log_p, 16, context=torch.eye(3))
    assert out.value.shape == (3,) and out.log_w.shape == (n, 3)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conditional.parameters())


@pytest.mark.parametrize("divergence", ALL, ids=_id)
def test_fits_gaussian_target_in_closed_form(divergence):
    torch.manual_seed(0)
    family = Gaussian(2)
    opt, sched = make_optimizer(family.parameters(), learning_rate=5e-3, gamma=0.999)
    fit(
        lambda: (lambda o: (o.loss, o.value))(divergence(family, log_p, 128)),
        opt,
        scheduler=sched,
        max_num_iters=1500,
        show_progress_bar=False,
    )
    q = family.base()  # identity standardisation and link: the base is q itself
    torch.testing.assert_close(q.mean.detach(), MEAN, atol=0.08, rtol=0)
    torch.testing.assert_close(q.covariance_matrix.detach(), COV, atol=0.08, rtol=0)


@pytest.mark.parametrize("method", ["rKL", "fKL", "IW", "alpha"])
def test_several_independent_targets_in_one_call(method):
    """A conditional family with one-hot contexts fits B different targets at once."""
    torch.manual_seed(0)
    means = torch.tensor([[-1.0, 0.0], [0.5, 0.5], [2.0, -1.0]])

    def batched_log_p(theta):  # [n, B, D] -> [n, B]
        return -0.5 * ((theta - means) ** 2).sum(-1) / 0.25

    family = Gaussian(2, context_size=3)
    divergence = build_divergence(method)
    context = torch.eye(3)
    opt, _ = make_optimizer(family.parameters(), learning_rate=3e-3)
    fit(
        lambda: (lambda o: (o.loss, o.value))(divergence(family, batched_log_p, 64, context)),
        opt,
        max_num_iters=1500,
        show_progress_bar=False,
    )
    q = family.base(context)
    torch.testing.assert_close(q.mean.detach(), means, atol=0.1, rtol=0)
    sd = q.covariance_matrix.detach().diagonal(dim1=-2, dim2=-1).sqrt()
    torch.testing.assert_close(sd, torch.full((3, 2), 0.5), atol=0.08, rtol=0)


def _set_to_target(family: Gaussian) -> None:
    tril = torch.linalg.cholesky(COV)
    raw = torch.cat([MEAN, tril.diagonal().log(), tril[1, :1]])
    with torch.no_grad():
        family.params.copy_(raw / family.parameter_scale)


@pytest.mark.parametrize(
    "divergence",
    [ReverseKL(stick_the_landing=True), ImportanceWeighted(K=8, dreg=True), RenyiAlpha(dreg=True)],
    ids=_id,
)
def test_path_gradients_vanish_at_the_optimum(divergence):
    """STL and DReG have zero-variance (exactly zero) gradients when q equals the target."""
    family = Gaussian(2)
    _set_to_target(family)
    out = divergence(family, log_p, 64)
    out.loss.backward()
    assert family.params.grad.abs().max() < 1e-4
    plain = type(divergence)()  # the plain estimator is not zero at the optimum
    family.zero_grad()
    plain(family, log_p, 64).loss.backward()
    assert family.params.grad.abs().max() > 1e-3


def test_stl_and_plain_gradients_agree_in_expectation():
    torch.manual_seed(0)
    family = Gaussian(2)
    grads = {True: [], False: []}
    for stl in (True, False):
        div = ReverseKL(stick_the_landing=stl)
        for _ in range(300):
            family.zero_grad()
            div(family, log_p, 16).loss.backward()
            grads[stl].append(family.params.grad.clone())
    a, b = torch.stack(grads[True]), torch.stack(grads[False])
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 5 * se + 1e-3).all()


def test_bounds_are_ordered_and_estimate_the_evidence():
    """ELBO ≤ IW bound ≤ log Z, and the log weights estimate log Z."""
    torch.manual_seed(0)
    family = Gaussian(2)  # a poor q: N(0, I)
    elbo = -ReverseKL()(family, log_p, 20_000).value
    iw = -ImportanceWeighted(K=64)(family, log_p, 300).value
    assert elbo < iw < LOG_Z + 0.05
    log_w = ReverseKL()(family, log_p, 200_000).log_w
    estimate = torch.logsumexp(log_w, 0) - math.log(len(log_w))
    assert abs(estimate.item() - LOG_Z) < 0.05


def test_invalid_particles_get_zero_weight_and_finite_gradients():
    family = Gaussian(2)

    def half_plane(theta):
        lp = -0.5 * theta.square().sum(-1)
        return torch.where(theta[..., 0] > 0, lp, torch.full_like(lp, float("-inf")))

    for name in DIVERGENCES:
        family.zero_grad()
        out = build_divergence(name)(family, half_plane, 64)
        assert out.num_invalid > 0
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert torch.isfinite(family.params.grad).all(), name


def test_build_divergence_errors():
    with pytest.raises(ValueError, match="vi_method"):
        build_divergence("KL")
    with pytest.raises(ValueError, match="does not apply"):
        build_divergence("rKL", K=4)
    with pytest.raises(TypeError, match="Unknown option"):
        build_divergence("rKL", stick_the_landin=True)
    assert isinstance(build_divergence("rKL", dreg=False), ReverseKL)
    with pytest.raises(ValueError, match="alpha"):
        RenyiAlpha(alpha=1.0)
    with pytest.raises(ValueError, match="K"):
        ImportanceWeighted(K=0)


def test_user_distribution_refuses_stick_the_landing():
    from torch.distributions import Independent, Normal

    from sbi_vi.vi.families import DistributionFamily

    loc = torch.zeros(2, requires_grad=True)
    family = DistributionFamily(Independent(Normal(loc, 1.0), 1), parameters=[loc])
    ReverseKL()(family, log_p, 8)
    with pytest.raises(ValueError, match="detached"):
        ReverseKL(stick_the_landing=True)(family, log_p, 8)


def test_forward_kl_reuses_draws_for_refresh_every_calls():
    family = Gaussian(2)
    draws = []
    original = type(family).forward

    class Counting(Gaussian):
        def forward(self, context=None):
            q = original(self, context)
            sample = q.sample
            q.sample = lambda shape=(): draws.append(1) or sample(shape)
            return q

    family.__class__ = Counting
    divergence = ForwardKL(refresh_every=3)
    for _ in range(7):
        divergence(family, log_p, 16)
    assert len(draws) == 3  # calls 1, 4 and 7 draw
    divergence(family, log_p, 32)  # another particle count draws afresh
    divergence(Gaussian(2), log_p, 32)  # and so does another family
    assert len(draws) == 3 + 1  # (the new family's draw is not counted)
    with pytest.raises(ValueError, match="refresh_every"):
        ForwardKL(refresh_every=0)
