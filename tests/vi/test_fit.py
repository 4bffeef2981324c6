"""The fit loop: steps, skips, clipping, schedules, and the convergence rule."""

from __future__ import annotations

import pytest
import torch

from sbi_vi.vi.fit import ConvergenceCheck, fit, gradient_step, make_optimizer


def quadratic(param):
    def closure():
        loss = (param - 3.0).square().sum()
        return loss, loss.detach()

    return closure


def test_fit_minimises_and_returns_history():
    param = torch.zeros(2, requires_grad=True)
    opt, sched = make_optimizer([param], learning_rate=0.1, gamma=0.999)
    result = fit(
        quadratic(param), opt, scheduler=sched, max_num_iters=300, show_progress_bar=False
    )
    assert result.num_iters == 300 and result.losses.shape == (300,)
    assert result.losses[-1] < 1e-2 < result.losses[0]
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * 0.999**300)


def test_non_finite_steps_are_skipped_and_counted():
    param = torch.zeros(1, requires_grad=True)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        loss = (param - 1).square().sum()
        if calls["n"] % 2:
            loss = loss * float("nan")
        return loss, loss.detach()

    opt, _ = make_optimizer([param], learning_rate=0.1)
    result = fit(closure, opt, max_num_iters=20, show_progress_bar=False)
    assert result.num_skipped == 10
    assert torch.isfinite(param).all()


def test_all_steps_skipped_is_an_error():
    param = torch.zeros(1, requires_grad=True)
    opt, _ = make_optimizer([param])
    with pytest.raises(RuntimeError, match="non-finite"):
        fit(
            lambda: (param.sum() * float("inf"),) * 2,
            opt,
            max_num_iters=5,
            show_progress_bar=False,
        )


def test_gradient_step_clips_norm():
    param = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([param], lr=1.0)
    taken = gradient_step((param * 100).sum(), opt, clip_value=1.0)
    assert taken
    assert param.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_custom_optimizer_and_scheduler_classes():
    param = torch.zeros(1, requires_grad=True)
    opt, sched = make_optimizer(
        [param],
        learning_rate=0.5,
        optimizer=torch.optim.SGD,
        scheduler=torch.optim.lr_scheduler.StepLR,
        scheduler_kwargs={"step_size": 1, "gamma": 0.5},
    )
    assert isinstance(opt, torch.optim.SGD)
    fit(quadratic(param), opt, scheduler=sched, max_num_iters=3, show_progress_bar=False)
    assert sched.get_last_lr()[0] == pytest.approx(0.5 / 8)
    with pytest.raises(TypeError, match="optimizer"):
        make_optimizer([param], optimizer="adam")
    with pytest.raises(ValueError, match="gamma"):
        make_optimizer([param], gamma=1.5)
    with pytest.raises(ValueError, match="learning_rate"):
        make_optimizer([param], learning_rate=-1.0)


def _first_stop(rule: ConvergenceCheck, values: torch.Tensor) -> int | None:
    rule.reset()
    return next((i for i, v in enumerate(values.tolist()) if rule.update(i, v)), None)


def test_convergence_stops_on_flat_noise_but_not_on_a_steady_decrease():
    torch.manual_seed(0)
    rule = ConvergenceCheck()
    stopped_at = _first_stop(rule, 5 + 0.3 * torch.randn(2000))
    assert stopped_at is not None and stopped_at < 300
    # decreasing by 0.025 per block of 50 in per-step noise of sd 0.1: the block medians
    # (standard error ~0.018) improve by more than eps=0.01 over every two blocks
    steady = 5 - 0.025 / 50 * torch.arange(2000) + 0.1 * torch.randn(2000)
    assert _first_stop(rule, steady) is None


def test_convergence_ignores_heavy_tailed_outliers():
    torch.manual_seed(1)
    rule = ConvergenceCheck()
    # Student-t(1) noise: the mean of a block is useless, its median is not
    noise = torch.distributions.StudentT(1.0).sample((2000,)) * 0.05
    steady = 5 - 0.025 / 50 * torch.arange(2000) + noise
    assert _first_stop(rule, steady) is None
    flat = 5 + noise
    stopped_at = _first_stop(rule, flat)
    assert stopped_at is not None and stopped_at < 300


def test_convergence_waits_out_a_plateau_shorter_than_patience():
    rule = ConvergenceCheck(window=10, patience=3)
    # improves, plateaus for two blocks, then improves again: must not stop on the plateau
    values = torch.cat(
        [torch.linspace(5, 4, 30), torch.full((20,), 4.0), torch.linspace(4, 3, 30)]
    )
    values = torch.cat([values, torch.full((100,), 3.0)])
    stopped_at = _first_stop(rule, values)
    assert stopped_at is not None and stopped_at >= 80 + 29


def test_convergence_respects_min_num_iters():
    rule = ConvergenceCheck(min_num_iters=1000)
    rule.reset()
    stops = [i for i in range(1500) if rule.update(i, 1.0)]
    assert stops and stops[0] >= 999


def test_convergence_check_validates():
    with pytest.raises(ValueError, match="window"):
        ConvergenceCheck(window=0)
