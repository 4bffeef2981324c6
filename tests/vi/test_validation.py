"""Early stopping on a validation loss, and common random numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbi_vi.vi.fit import fit, make_optimizer
from sbi_vi.vi.validation import ValidationStopping, common_random_numbers


def test_stops_after_patience_and_restores_the_best_weights():
    module = nn.Linear(1, 1, bias=False)
    scripted = iter([5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0])

    def validate() -> float:
        return next(scripted)

    rule = ValidationStopping(validate, module, stop_after_iters=3)
    rule.reset()
    stops = []
    for it in range(6):
        with torch.no_grad():
            module.weight.fill_(float(it))
        stops.append(rule.update(it, 0.0))
    assert stops == [False, False, False, False, False, True]
    assert rule.best_loss == 3.0 and rule.best_iteration == 2
    assert rule.losses == [5.0, 4.0, 3.0, 3.5, 3.2, 3.1]
    assert rule.restore_best()
    assert module.weight.item() == 2.0  # the weights after iteration 2


def test_non_finite_validation_losses_never_count_as_best():
    module = nn.Linear(1, 1)
    values = iter([float("nan"), float("inf"), 1.0])
    rule = ValidationStopping(lambda: next(values), module, stop_after_iters=5)
    rule.reset()
    for it in range(3):
        rule.update(it, 0.0)
    assert rule.best_iteration == 2


def test_validate_every_k_iterations_and_argument_checks():
    calls = []
    rule = ValidationStopping(lambda: calls.append(1) or 1.0, nn.Linear(1, 1), every=5)
    rule.reset()
    for it in range(20):
        rule.update(it, 0.0)
    assert len(calls) == 4
    with pytest.raises(ValueError, match="stop_after_iters"):
        ValidationStopping(lambda: 0.0, nn.Linear(1, 1), stop_after_iters=0)
    assert not ValidationStopping(lambda: 0.0, nn.Linear(1, 1)).restore_best()


def test_fit_with_validation_stops_on_overfitting():
    # fit a mean to 5 noisy training points; validation on fresh points from the truth
    g = torch.Generator().manual_seed(0)
    train = torch.randn(5, generator=g) + 1.0
    val = torch.randn(2000, generator=g) + 1.0
    mu = nn.Parameter(torch.tensor([10.0]))
    holder = nn.Module()
    holder.mu = mu

    def closure():
        loss = (train - mu).square().mean()
        return loss, loss.detach()

    rule = ValidationStopping(lambda: float((val - mu).square().mean()), holder, 10)
    optimizer, _ = make_optimizer([mu], learning_rate=0.1)
    result = fit(closure, optimizer, max_num_iters=5000, stopping=rule, show_progress_bar=False)
    assert result.converged and result.num_iters < 5000
    rule.restore_best()
    best = float((val - mu.detach()).square().mean())
    assert best == pytest.approx(min(rule.losses))


def test_common_random_numbers_repeat_draws_and_restore_the_stream():
    torch.manual_seed(1)
    expected = torch.randn(3)
    torch.manual_seed(1)
    with common_random_numbers(7):
        a = torch.randn(4)
    with common_random_numbers(7):
        b = torch.randn(4)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.randn(3), expected)  # the caller's stream is untouched
