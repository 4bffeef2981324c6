"""Steps decided on the device (no host read per step): the same fit as the host-decided one.

No accelerator runs here, so the device path is forced on the CPU (its fused Adam kernel
takes ``found_inf`` too) and compared against the host path on the same problem.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from sbi_vi.vi.fit import BatchedConvergenceCheck, ConvergenceCheck, StoppingRule, fit
from sbi_vi.vi.steps import deferred_step, steps_on_device

fit_module = importlib.import_module("sbi_vi.vi.fit")  # the module, not sbi_vi.vi.fit the function


@pytest.fixture
def on_device(monkeypatch):
    """Make :func:`fit` take the device-decided steps on the CPU."""
    monkeypatch.setattr(fit_module, "steps_on_device", lambda optimizer: True)


def noisy_quadratic(param, *, nan_every=7, seed=0):
    """A noisy quadratic whose loss is NaN on every ``nan_every``-th call."""
    generator = torch.Generator().manual_seed(seed)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        noise = torch.randn(param.shape, generator=generator)
        loss = (param - 3.0 + 0.3 * noise).square().sum()
        if calls["n"] % nan_every == 0:
            loss = loss * math.nan
        return loss, loss.detach()

    return closure


def run(param0, stopping=None, iters=400, clip_value=10.0):
    param = param0.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=0.05, fused=True)
    result = fit(
        noisy_quadratic(param),
        opt,
        max_num_iters=iters,
        clip_value=clip_value,
        stopping=stopping,
        show_progress_bar=False,
    )
    return param.detach(), result


@pytest.mark.parametrize("clip_value", [10.0, None])
def test_device_steps_give_the_host_fit(monkeypatch, clip_value):
    start = torch.tensor([0.0, -1.0, 2.0])
    host_param, host = run(start, ConvergenceCheck(eps=1e-2, window=20), clip_value=clip_value)
    monkeypatch.setattr(fit_module, "steps_on_device", lambda optimizer: True)
    dev_param, dev = run(start, ConvergenceCheck(eps=1e-2, window=20), clip_value=clip_value)
    assert host.converged and dev.converged
    assert dev.num_iters == host.num_iters < 400  # the rule stopped at the same block
    assert dev.num_skipped == host.num_skipped == host.num_iters // 7
    torch.testing.assert_close(dev.losses, host.losses, equal_nan=True)
    torch.testing.assert_close(dev_param, host_param)


def test_skipped_device_steps_leave_parameters_and_step_count(on_device):
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([param], lr=0.1, fused=True)
    taken = deferred_step((param * math.inf).sum(), opt, clip_value=1.0)
    assert taken.dtype == torch.bool and not bool(taken)
    assert torch.equal(param.detach(), torch.ones(3))
    assert float(opt.state[param]["step"]) == 0.0
    assert bool(deferred_step(param.square().sum(), opt, clip_value=1.0))
    assert float(opt.state[param]["step"]) == 1.0 and (param < 1).all()
    assert not hasattr(opt, "found_inf")  # removed after the step, as GradScaler does


def test_every_step_skipped_is_still_an_error(on_device):
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([param], fused=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        fit(lambda: (param.sum() * math.inf,) * 2, opt, max_num_iters=5, show_progress_bar=False)


class CountingRule(StoppingRule):
    """Reads no losses; stops after a fixed number of iterations, as the epoch monitor."""

    loss_window = None  # type: ignore[assignment]

    def __init__(self, stop_at: int):
        self.stop_at, self.seen = stop_at, []

    def update(self, iteration: int, value: float) -> bool:
        self.seen.append((iteration, value))
        return iteration + 1 >= self.stop_at


def test_a_rule_that_reads_no_losses_is_called_every_iteration(on_device):
    rule = CountingRule(stop_at=37)
    _, result = run(torch.zeros(2), rule, iters=400)
    assert result.num_iters == 37 and result.converged
    assert [i for i, _ in rule.seen] == list(range(37))
    assert all(math.isnan(v) for _, v in rule.seen)
    assert result.losses.shape == (37,)  # every loss is still recorded
    assert torch.isfinite(result.losses).sum() == 37 - 37 // 7


def test_batched_rule_gets_each_rows_losses_per_window(monkeypatch):
    def batched_run():
        param = torch.zeros(2, requires_grad=True)
        opt = torch.optim.Adam([param], lr=0.05, fused=True)
        target = torch.tensor([0.0, 5.0])  # row 0 starts at its optimum, row 1 does not

        def closure():
            per_row = (param - target).square()
            return per_row.sum(), per_row.detach()

        rule = BatchedConvergenceCheck(2, eps=1e-3, window=10, patience=2)
        result = fit(closure, opt, max_num_iters=2000, stopping=rule, show_progress_bar=False)
        return rule, result

    host_rule, host = batched_run()
    monkeypatch.setattr(fit_module, "steps_on_device", lambda optimizer: True)
    dev_rule, dev = batched_run()
    assert host_rule.converged_at[0] < host_rule.converged_at[1]
    assert torch.equal(dev_rule.converged_at, host_rule.converged_at)
    assert dev.num_iters == host.num_iters


def test_no_host_reads_between_windows(on_device, monkeypatch):
    """Nothing of a step is read back: only the window reads transfer (one each)."""
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    param = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([param], lr=0.05, fused=True)

    def closure():
        loss = (param - 1.0).square().sum()
        return loss, loss.detach()

    fit(closure, opt, max_num_iters=250, clip_value=1.0, show_progress_bar=False)
    # reads after iterations 100 and 200 and at the end
    assert reads["n"] == 3


def test_steps_on_device_only_for_fused_adam_off_the_cpu():
    param = torch.nn.Parameter(torch.zeros(2))
    assert not steps_on_device(torch.optim.Adam([param], fused=True))  # CPU: host reads are free
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))
    assert steps_on_device(torch.optim.Adam([meta], fused=True))
    assert steps_on_device(torch.optim.AdamW([meta], fused=True))
    assert not steps_on_device(torch.optim.Adam([meta]))  # not fused: no found_inf
    assert not steps_on_device(torch.optim.SGD([meta], lr=0.1))


def test_one_fused_policy_for_every_optimizer_builder():
    from sbi_vi.vi.optim import build_optimizer, fuses

    p = torch.nn.Parameter(torch.zeros(2))
    frozen = torch.zeros(2, requires_grad=False)
    assert build_optimizer([p, frozen], lr=0.1).defaults["fused"]
    assert len(build_optimizer([p, frozen], lr=0.1).param_groups[0]["params"]) == 1
    assert build_optimizer([p], torch.optim.AdamW, lr=0.1).defaults["fused"]
    assert not build_optimizer([p], torch.optim.Adam, lr=0.1, foreach=True).defaults["fused"]
    assert not build_optimizer([p], torch.optim.SGD, lr=0.1).defaults["fused"]
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))
    assert not fuses(torch.optim.Adam, [meta])  # no fused kernel there: torch's loop
    with pytest.raises(TypeError, match="optimizer"):
        build_optimizer([p], "Adam")
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer([frozen])
