"""infer(): simulator + prior -> trained VIPosterior, in one or several rounds."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_vi.inference import infer

NOISE_SD = 0.3
PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
X_O = torch.tensor([0.8, -0.4])
# conjugate posterior of θ ~ N(0, I), x | θ ~ N(θ, 0.09 I)
POST_MEAN = X_O / (1 + NOISE_SD**2)
POST_SD = (NOISE_SD**2 / (1 + NOISE_SD**2)) ** 0.5

FAST = {
    "train_kwargs": {"max_num_epochs": 60, "training_batch_size": 100},
    "vi_parameters": {"q": "gaussian"},
    "vi_train_kwargs": {"max_num_iters": 500, "quality_control": False},
    "show_progress_bar": False,
}


def simulator(theta: torch.Tensor) -> torch.Tensor:
    return theta + NOISE_SD * torch.randn_like(theta)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["NLE", "NRE"])
def test_infer_recovers_the_conjugate_posterior(method):
    posterior = infer(simulator, PRIOR, X_O, method, num_simulations=2000, seed=0, **FAST)
    torch.manual_seed(1)
    samples = posterior.sample((5000,))
    torch.testing.assert_close(samples.mean(0), POST_MEAN, atol=0.12, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((2,), POST_SD), atol=0.1, rtol=0)


def test_later_rounds_simulate_from_the_previous_posterior():
    seen: list[torch.Tensor] = []

    def recording_simulator(theta: torch.Tensor) -> torch.Tensor:
        seen.append(theta.clone())
        return simulator(theta)

    fast = dict(FAST, train_kwargs={"max_num_epochs": 20, "training_batch_size": 100})
    posterior = infer(
        recording_simulator,
        PRIOR,
        X_O,
        num_simulations=1000,
        num_rounds=2,
        simulation_batch_size=500,
        seed=0,
        **fast,
    )
    # the detection call of simulate() sees 2 rows; then one batch of 500 per round
    rounds = [t for t in seen if t.shape[0] == 500]
    assert len(rounds) == 2
    first, second = rounds
    assert first.std(0).min() > 0.8  # the prior's spread
    assert second.std(0).max() < 0.6  # the round-1 posterior's spread (true sd 0.29)
    assert (second.mean(0) - POST_MEAN).abs().max() < 0.3
    assert torch.equal(posterior.default_x, X_O.unsqueeze(0))


def test_same_seed_same_posterior():
    fast = dict(FAST, train_kwargs={"max_num_epochs": 3}, vi_train_kwargs={"max_num_iters": 20})
    draws = []
    for _ in range(2):
        posterior = infer(simulator, PRIOR, X_O, num_simulations=300, seed=3, **fast)
        torch.manual_seed(0)
        draws.append(posterior.sample((50,)))
    torch.testing.assert_close(draws[0], draws[1])


def test_infer_validates_arguments():
    with pytest.raises(ValueError, match="method"):
        infer(simulator, PRIOR, X_O, "SNPE", num_simulations=10)
    with pytest.raises(ValueError, match="num_simulations"):
        infer(simulator, PRIOR, X_O, num_simulations=2, num_rounds=3)
    with pytest.raises(ValueError, match="num_rounds"):
        infer(simulator, PRIOR, X_O, num_simulations=10, num_rounds=0)
