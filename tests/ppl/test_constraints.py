"""sbi_vi.ppl.constraints: ordered supports, their bijections and a fit on one; the stable
log-determinant of the corr_cholesky map."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import CorrCholeskyTransform, Normal, biject_to, constraints

from sbi_vi.ppl import factor, sample
from sbi_vi.ppl.constraints import (
    OrderedTransform,
    PositiveOrderedTransform,
    StableCorrCholeskyTransform,
    ordered_vector,
    positive_ordered_vector,
)
from sbi_vi.ppl.distributions import ImproperUniform
from sbi_vi.ppl.infer import SVI, AutoMultivariateNormal, init_to_feasible
from sbi_vi.ppl.infer.sites import bijector, inspect_model


def test_checks():
    assert ordered_vector.check(torch.tensor([[-1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])).tolist() == [
        True,
        False,
    ]
    assert positive_ordered_vector.check(torch.tensor([[0.5, 1.0], [-0.5, 1.0]])).tolist() == [
        True,
        False,
    ]
    assert not bool(ordered_vector.check(torch.tensor([0.0, float("nan")])))


@pytest.mark.parametrize(
    ("support", "cls"),
    [(ordered_vector, OrderedTransform), (positive_ordered_vector, PositiveOrderedTransform)],
)
@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 5), batch=st.lists(st.integers(1, 3), max_size=2).map(tuple))
def test_bijection_round_trip_and_log_det_against_autograd(support, cls, k, batch):
    t = biject_to(support)
    assert isinstance(t, cls) and t == cls()
    x = torch.randn((*batch, k), dtype=torch.float64)
    y = t(x)
    assert y.shape == x.shape and bool(support.check(y).all())
    torch.testing.assert_close(t.inv(y), x)
    jac = torch.autograd.functional.jacobian(lambda v: t(v), x.reshape(-1, k)[0])
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y).reshape(-1)[0], expected)


def test_feasible_start_of_an_ordered_site():
    def model():
        sample("c", ImproperUniform(ordered_vector, event_shape=(3,)))
        sample("s", ImproperUniform(positive_ordered_vector, event_shape=(2,)))

    info = inspect_model(model, (), {}, init_loc_fn=init_to_feasible)
    torch.testing.assert_close(info.latent["c"].init, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(info.latent["s"].init, torch.tensor([1.0, 2.0]))


def test_ordered_site_with_a_normal_density_gives_the_normal_order_statistics():
    """Stan: ``ordered[3] c; c ~ normal(0, 1);`` is the law of three sorted N(0, 1) draws:
    means (-0.846, 0, 0.846), sds (0.748, 0.669, 0.748)."""

    def model():
        c = sample("c", ImproperUniform(ordered_vector, event_shape=(3,)))
        factor("c_prior", Normal(0.0, 1.0).log_prob(c).sum(-1))

    steps = 600
    svi = SVI(
        model,
        AutoMultivariateNormal(model),
        lr=0.05,
        n_particles=16,
        scheduler=torch.optim.lr_scheduler.ExponentialLR,
        scheduler_kwargs={"gamma": 0.02 ** (1 / steps)},
    )
    result = svi.run(steps, seed=0, show_progress_bar=False)
    summary = result.sample_posterior(num_samples=4000, seed=1, return_samples=True)
    draws = torch.as_tensor(summary["posterior_samples"]["c"])
    assert bool(ordered_vector.check(draws).all())
    expected_mean = torch.tensor([-0.8463, 0.0, 0.8463])
    torch.testing.assert_close(draws.mean(0), expected_mean, atol=0.08, rtol=0)
    # a Gaussian over (c0, log gaps) is close to, not equal to, this law: sds within 20%
    torch.testing.assert_close(draws.std(0), torch.tensor([0.748, 0.669, 0.748]), rtol=0.2, atol=0)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_stable_corr_cholesky_log_det_equals_torch_and_autograd_and_stays_finite(k):
    stable, plain = StableCorrCholeskyTransform(), CorrCholeskyTransform()
    assert isinstance(bijector(constraints.corr_cholesky), StableCorrCholeskyTransform)
    torch.manual_seed(k)
    u = torch.randn(50, k * (k - 1) // 2, dtype=torch.float64)
    chol = stable(u)
    torch.testing.assert_close(chol, plain(u))
    torch.testing.assert_close(
        stable.log_abs_det_jacobian(u, chol), plain.log_abs_det_jacobian(u, chol)
    )
    rows, cols = torch.tril_indices(k, k, -1)
    jac = torch.autograd.functional.jacobian(lambda v: stable(v)[rows, cols], u[0])
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(stable.log_abs_det_jacobian(u[0], chol[0]), expected)
    wide = 4 * torch.randn(5000, k * (k - 1) // 2)  # float32, far from the origin
    assert bool(torch.isfinite(stable.log_abs_det_jacobian(wide, stable(wide))).all())
    if k >= 5:  # torch's own log-det, computed from the output, is not
        assert not bool(torch.isfinite(plain.log_abs_det_jacobian(wide, plain(wide))).all())
