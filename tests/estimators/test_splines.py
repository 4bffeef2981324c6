"""The lean rational-quadratic spline agrees with zuko's and stays finite outside its bound."""

from __future__ import annotations

import torch
from zuko.transforms import MonotonicRQSTransform

from sbi_vi.estimators.splines import RQSTransform


def params(n=64, bins=10, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        scale * torch.randn(n, bins, generator=g),
        scale * torch.randn(n, bins, generator=g),
        scale * torch.randn(n, bins - 1, generator=g),
    )


def test_matches_zuko_inside_and_outside_the_bound():
    phi = params()
    ours, ref = RQSTransform(*phi), MonotonicRQSTransform(*phi)
    x = torch.linspace(-7, 7, 64) + 0.01  # no point exactly on the bound ±5
    y, ladj = ours.call_and_ladj(x)
    y_ref, ladj_ref = ref.call_and_ladj(x)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ladj, ladj_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.inv(y), ref.inv(y_ref), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.log_abs_det_jacobian(x, y), ladj)


def test_inverse_round_trip_and_monotone():
    t = RQSTransform(*params(n=200, bins=8, seed=1))
    x = torch.linspace(-6, 6, 200)
    torch.testing.assert_close(t.inv(t(x)), x, atol=5e-4, rtol=0)
    ys = RQSTransform(*[p[:1].expand(200, -1) for p in params(n=1, bins=8)])(x)
    assert bool((ys.diff() > 0).all())


def test_log_det_matches_autograd_derivative():
    t = RQSTransform(*params(n=50, seed=2))
    x = torch.linspace(-4.9, 4.9, 50, requires_grad=True)
    y, ladj = t.call_and_ladj(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(ladj, dy.log(), atol=1e-4, rtol=1e-4)


def test_gradients_are_finite_everywhere():
    phi = [p.requires_grad_() for p in params(seed=3)]
    x = torch.cat([torch.linspace(-20, 20, 60), torch.tensor([-5.0, 5.0, 0.0, 1e-8])])
    x.requires_grad_()
    y, ladj = RQSTransform(*phi).call_and_ladj(x)
    (y.sum() + ladj.sum()).backward()
    for p in [*phi, x]:
        assert bool(torch.isfinite(p.grad).all())
