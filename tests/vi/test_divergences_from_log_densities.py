"""``Divergence.from_log_densities``: the same numbers as the family path, from tensors."""

from __future__ import annotations

import pytest
import torch

from sbi_vi.vi.divergences import ForwardKL, ImportanceWeighted, RenyiAlpha, ReverseKL
from sbi_vi.vi.families import Gaussian, rsample_and_log_prob


def log_p(theta: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((theta - 1.0) / 0.7).square().sum(-1)


def _grads(loss, family):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(family.parameters()))])


@pytest.mark.parametrize(
    ("divergence", "n_particles", "shape"),
    [
        (ReverseKL(), 16, (16,)),
        (ReverseKL(stick_the_landing=True), 16, (16,)),
        (ImportanceWeighted(K=4), 8, (4, 8)),
        (ImportanceWeighted(K=4, dreg=True), 8, (4, 8)),
        (RenyiAlpha(alpha=0.5), 16, (16, 1)),
    ],
)
def test_reparametrised_divergences_agree_with_the_family_path(divergence, n_particles, shape):
    family = Gaussian(2)
    with torch.no_grad():
        family.params.normal_(0.0, 0.05)
    torch.manual_seed(0)
    expected = divergence(family, log_p, n_particles)
    torch.manual_seed(0)
    theta, log_q = rsample_and_log_prob(family(), shape)
    log_q_grad = None
    if getattr(divergence, "stick_the_landing", False) or getattr(divergence, "dreg", False):
        from sbi_vi.vi.divergences import detached_log_prob

        log_q_grad = detached_log_prob(family, theta).reshape(-1)
    out = divergence.from_log_densities(
        log_p(theta).reshape(-1), log_q.reshape(-1), log_q_grad=log_q_grad
    )
    assert torch.allclose(out.value, expected.value, atol=1e-5)
    assert torch.allclose(out.log_w, expected.log_w, atol=1e-5)
    assert torch.allclose(out.loss, expected.loss, atol=1e-5)
    assert torch.allclose(_grads(out.loss, family), _grads(expected.loss, family), atol=1e-5)


def test_forward_kl_agrees_with_the_family_path():
    family = Gaussian(2)
    torch.manual_seed(0)
    expected = ForwardKL()(family, log_p, 32)
    torch.manual_seed(0)
    q = family()
    with torch.no_grad():
        theta = q.sample((32,))
    out = ForwardKL().from_log_densities(log_p(theta), q.log_prob(theta))
    assert torch.allclose(out.loss, expected.loss) and torch.allclose(out.value, expected.value)
    assert torch.allclose(_grads(out.loss, family), _grads(expected.loss, family))


def test_invalid_particles_get_zero_weight_and_finite_gradients():
    log_q = torch.zeros(6, requires_grad=True)
    log_p_values = torch.tensor([0.0, -1.0, float("-inf"), float("nan"), -2.0, -0.5])
    for divergence in (ReverseKL(), ImportanceWeighted(K=2), RenyiAlpha(alpha=0.3)):
        out = divergence.from_log_densities(log_p_values, log_q)
        assert out.num_invalid == 2 and bool(torch.isfinite(out.loss))
        (grad,) = torch.autograd.grad(out.loss, log_q)
        assert bool(torch.isfinite(grad).all()) and float(grad[2]) == 0 == float(grad[3])
        assert bool(torch.isneginf(out.log_w[2]))


def test_batched_log_densities_and_bad_group_sizes():
    out = ReverseKL().from_log_densities(torch.zeros(8, 3), torch.ones(8, 3))
    assert out.value.shape == (3,) and out.log_w.shape == (8, 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        ImportanceWeighted(K=4).from_log_densities(torch.zeros(6), torch.zeros(6))
