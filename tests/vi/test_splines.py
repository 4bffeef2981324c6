"""The lean rational-quadratic spline agrees with zuko's and stays finite outside its bound."""

from __future__ import annotations

import torch
from zuko.transforms import MonotonicRQSTransform

from sbi_vi.vi.families.splines import RQSTransform


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


def test_analytic_backward_passes_gradcheck_and_matches_zuko_gradients():
    phi = [p.double().requires_grad_() for p in params(n=40, bins=6, seed=4)]
    x = (torch.linspace(-6.5, 6.5, 40, dtype=torch.float64) + 0.013).requires_grad_()

    def ours(w, h, d, x):
        return RQSTransform(w, h, d).call_and_ladj(x)

    assert torch.autograd.gradcheck(ours, (*phi, x), atol=1e-6, rtol=1e-5)
    gy, gl = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    grads = []
    for transform in (RQSTransform(*phi), MonotonicRQSTransform(*phi)):
        y, ladj = transform.call_and_ladj(x)
        grads.append(torch.autograd.grad((y * gy).sum() + (ladj * gl).sum(), (*phi, x)))
    for g, g_ref in zip(*grads, strict=True):
        torch.testing.assert_close(g, g_ref)


def test_packed_parameters_and_broadcasting():
    w, h, d = params(n=1, bins=5, seed=5)
    x = torch.linspace(-4, 4, 7)
    y, ladj = RQSTransform(w, h, d).call_and_ladj(x)  # parameters [1, K] against x [7]
    y2, ladj2 = RQSTransform.packed(torch.cat((w, h, d), -1).expand(7, -1)).call_and_ladj(x)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(ladj, ladj2)
    assert y.shape == (7,)


def test_inverse_is_differentiable():
    phi = [p.double().requires_grad_() for p in params(n=5, bins=6, seed=6)]
    y = torch.linspace(-4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, h, d, y: RQSTransform(w, h, d).inv(y), (*phi, y))
