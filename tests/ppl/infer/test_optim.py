"""LeanAdam: bitwise torch's fused Adam, torch's path whenever the lean one does not apply."""

from __future__ import annotations

import pytest
import torch

from sbi_vi.ppl.infer.optim import LeanAdam


def _pair(**kwargs):
    g = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(2, 5, generator=g)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    return a, b, torch.optim.Adam(a, lr=0.05, fused=True, **kwargs), LeanAdam(b, lr=0.05, **kwargs)


def _run(a, b, oa, ob, steps=30, schedulers=()):
    g = torch.Generator().manual_seed(1)
    for t in range(steps):
        for pa, pb in zip(a, b, strict=True):
            grad = torch.randn(pa.shape, generator=g)
            pa.grad, pb.grad = grad.clone(), grad.clone()
        if t % 7 == 3:  # a parameter without a gradient this step is left alone
            a[1].grad = b[1].grad = None
        oa.step()
        ob.step()
        for s in schedulers:
            s.step()


def test_lean_adam_is_bitwise_fused_adam_with_a_scheduler():
    a, b, oa, ob = _pair()
    scheds = [torch.optim.lr_scheduler.ExponentialLR(o, 0.95) for o in (oa, ob)]
    _run(a, b, oa, ob, schedulers=scheds)
    for pa, pb in zip(a, b, strict=True):
        assert torch.equal(pa, pb)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][k][key], sb["state"][k][key])


def test_state_moves_between_lean_and_torch_adam():
    a, b, oa, ob = _pair()
    _run(a, b, oa, ob, steps=5)
    resumed = torch.optim.Adam(b, lr=0.05, fused=True)
    resumed.load_state_dict(ob.state_dict())
    _run(a, b, oa, resumed, steps=5)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a, b, strict=True))


@pytest.mark.parametrize("option", [{"weight_decay": 0.1}, {"amsgrad": True}, {"maximize": True}])
def test_other_options_take_torch_path(option):
    a, b, oa, ob = _pair(**option)
    _run(a, b, oa, ob, steps=10)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a, b, strict=True))


def test_hooks_and_closures_run():
    a, b, oa, ob = _pair()
    calls = []
    handle = ob.register_step_post_hook(lambda opt, args, kwargs: calls.append(1))
    _run(a, b, oa, ob, steps=3)
    assert calls == [1, 1, 1]
    handle.remove()
    for p in b:
        p.grad = torch.ones_like(p)
    assert ob.step(lambda: 2.5) == 2.5


def test_added_param_group_and_mixed_dtypes():
    p32 = torch.nn.Parameter(torch.zeros(3))
    p64 = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LeanAdam([p32], lr=0.1)
    opt.add_param_group({"params": [p64]})
    ref = torch.optim.Adam([q32 := torch.nn.Parameter(torch.zeros(3))], lr=0.1, fused=True)
    ref.add_param_group({"params": [q64 := torch.nn.Parameter(torch.zeros(3).double())]})
    for _ in range(3):
        for p in (p32, p64, q32, q64):
            p.grad = torch.linspace(-1, 1, 3, dtype=p.dtype)
        opt.step()
        ref.step()
    assert torch.equal(p32, q32) and torch.equal(p64, q64)
