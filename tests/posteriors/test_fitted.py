"""The fitted-state objects behind VIPosterior: one per way of fitting, one interface.

A third way of fitting (B independent q's for B observations) must plug in without touching
VIPosterior's methods: a stand-in with the exact conjugate posteriors is installed and every
public method is checked against the closed form. Also: no import cycle in the package,
files pickled in the old layout still load, and resuming a fit of the same kind is silent.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from sbi_vi import VIPosterior
from sbi_vi.diagnostics import psis
from sbi_vi.posteriors.amortized import AmortizedFit, AmortizedQuality, per_observation_quality
from sbi_vi.posteriors.fitted import FittedQ
from sbi_vi.posteriors.single import SingleFit
from sbi_vi.potentials import LikelihoodBasedPotential

PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
NOISE_SD = 0.5
SHRINK = 1 / (1 + NOISE_SD**2)  # posterior N(SHRINK x, SHRINK σ² I)
POST_SD = (SHRINK * NOISE_SD**2) ** 0.5
X = torch.tensor([[0.0, 0.0], [1.5, -1.0], [-2.0, 0.5]])
PACKAGE = Path(__file__).resolve().parents[2] / "sbi_vi" / "posteriors"


def likelihood(theta, x):
    return Normal(theta, NOISE_SD).log_prob(x).sum(-1)


class BatchedStandIn:
    """B independent q's for the rows of ``X``: the exact posteriors shifted by ``shift``."""

    origin = "the batched q's of a stand-in"
    status = "batched over 3 observations"
    trained = True
    metrics = ("psis",)

    def __init__(self, x: torch.Tensor, shift: torch.Tensor):
        self.module = nn.Module()
        self.module.register_buffer("loc", SHRINK * x + shift)  # [B, D]
        self.x = x

    def dist(self) -> Independent:
        return Independent(Normal(self.module.loc, POST_SD), 1)  # batch [B]

    def distribution(self) -> Independent:
        return self.dist()

    def sample(self, sample_shape, x, post):
        return self.dist().sample(sample_shape)

    def sample_batched(self, sample_shape, x, max_batch_size, post):
        return self.dist().sample(sample_shape)

    def log_prob(self, theta, x, post, track_gradients):
        return self.dist().log_prob(post._check_theta(theta))

    def log_weights(self, N, x, post):
        x, _, log_p, log_q = self.importance_draws(N, x, post)
        return x, log_p, log_q

    def importance_draws(self, N, x, post):
        theta = self.dist().sample((N,))
        post.potential_fn.set_x(self.x, x_is_iid=False)
        return self.x, theta, post.potential_fn(theta), self.dist().log_prob(theta)

    def evaluate(self, metric, N, x, post, refine, refine_kwargs):
        x, log_p, log_q = self.log_weights(N, x, post)
        return per_observation_quality(log_p - log_q, x, refine, refine_kwargs)

    def map_inits(self, x, num_init_samples, init_method):
        row = int((self.x == x).all(-1).nonzero()[0])
        return self.dist().sample((num_init_samples,))[:, row]

    def at_observation(self, x, post):
        raise NotImplementedError

    def continued(self):
        return None

    def to(self, device):
        self.module.to(device)


def posterior_with(fitted) -> VIPosterior:
    posterior = VIPosterior(LikelihoodBasedPotential(likelihood, PRIOR), PRIOR, q="gaussian")
    posterior._fitted = fitted  # where train(x=X) would put a BatchedFit
    return posterior.set_default_x(X)


def test_a_batched_fit_plugs_in_without_touching_the_posterior():
    stand_in = BatchedStandIn(X, torch.zeros(2))
    assert isinstance(stand_in, FittedQ)
    posterior = posterior_with(stand_in)
    torch.manual_seed(0)
    theta = posterior.sample((20_000,), x=X)
    assert theta.shape == (20_000, 3, 2)
    torch.testing.assert_close(theta.mean(0), SHRINK * X, atol=0.03, rtol=0)
    torch.testing.assert_close(theta.std(0), torch.full((3, 2), POST_SD), atol=0.02, rtol=0)
    assert posterior.sample_batched((4,), X).shape == (4, 3, 2)
    expected = Normal(SHRINK * X, POST_SD).log_prob(SHRINK * X).sum(-1)
    torch.testing.assert_close(posterior.log_prob(SHRINK * X, x=X), expected)
    quality = posterior.evaluate(x=X, N=4000)
    assert isinstance(quality, AmortizedQuality) and quality.khat.shape == (3,)
    assert bool(quality.reliable.all()) and float(quality.khat.max()) < 0.5
    theta_map = posterior.map(x=X[1:2], num_iter=200, num_init_samples=200)
    torch.testing.assert_close(theta_map, SHRINK * X[1], atol=1e-2, rtol=0)
    assert "batched over 3 observations" in repr(posterior)


def test_a_batched_fit_gets_the_evidence_and_sir_draws_per_observation():
    """log p(x_b) = N(x_b; 0, (1 + σ²) I); SIR pulls shifted q's back onto the posteriors."""
    torch.manual_seed(2)
    evidence = posterior_with(BatchedStandIn(X, torch.zeros(2))).log_evidence(x=X, N=2000)
    exact = MultivariateNormal(torch.zeros(2), (1 + NOISE_SD**2) * torch.eye(2)).log_prob(X)
    assert evidence.value.shape == evidence.stderr.shape == evidence.khat.shape == (3,)
    torch.testing.assert_close(evidence.value.float(), exact, atol=1e-4, rtol=0)  # exact q
    shift = torch.tensor([[0.1, 0.0], [0.0, -0.1], [0.1, 0.1]])
    posterior = posterior_with(BatchedStandIn(X, shift))
    theta = posterior.sample((4000,), x=X, method="sir", num_proposals=40_000)
    assert theta.shape == (4000, 3, 2) and posterior.sir_diagnostics.khat.shape == (3,)
    error = (theta.mean(0) - SHRINK * X).abs().max()
    assert float(error) < 0.3 * float(shift.abs().max())


def test_per_observation_quality_flags_the_observation_whose_q_is_off():
    shift = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0]])  # q of x_1 misses its posterior
    torch.manual_seed(1)
    quality = posterior_with(BatchedStandIn(X, shift)).evaluate(x=X, N=4000)
    assert quality.unreliable.tolist() == [1]
    assert float(quality.khat[1]) > 0.7 and float(quality.khat[[0, 2]].max()) < 0.5


def trained_single() -> VIPosterior:
    torch.manual_seed(0)
    posterior = VIPosterior(LikelihoodBasedPotential(likelihood, PRIOR), PRIOR, q="gaussian")
    return posterior.set_default_x(X[1:2]).train(
        max_num_iters=300, show_progress_bar=False, quality_control=False, seed=0
    )


def trained_amortized() -> VIPosterior:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(400, 2, generator=g)
    x = theta + NOISE_SD * torch.randn(400, 2, generator=g)
    posterior = VIPosterior(LikelihoodBasedPotential(likelihood, PRIOR), PRIOR)
    return posterior.train_amortized(
        theta, x, flow_type="gaussian", max_num_iters=20, batch_size=32, n_particles=8,
        show_progress_bar=False, seed=0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("build", "kind", "weights_shape"),
    [(trained_single, SingleFit, (500,)), (trained_amortized, AmortizedFit, (500, 3))],
)
def test_every_fit_gives_the_log_weights_evaluate_uses(build, kind, weights_shape):
    posterior = build()
    fitted = posterior._fitted
    assert isinstance(fitted, kind) and isinstance(fitted, FittedQ) and fitted.trained
    x = None if kind is SingleFit else X
    torch.manual_seed(3)
    _, _, log_p, log_q = fitted.importance_draws(500, x, posterior)
    assert log_p.shape == log_q.shape == weights_shape
    assert bool(torch.isfinite(log_p - log_q).all())
    torch.manual_seed(3)
    khat = torch.as_tensor(posterior.evaluate(N=500, x=x).khat).reshape(-1)
    torch.testing.assert_close(khat, torch.as_tensor(psis(log_p - log_q).khat).reshape(-1))


def test_resuming_a_fit_of_the_same_kind_does_not_warn():
    posterior = trained_amortized()
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(400, 2, generator=g)
    x = theta + NOISE_SD * torch.randn(400, 2, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        posterior.train_amortized(
            theta, x, max_num_iters=5, batch_size=32, n_particles=8, show_progress_bar=False
        )
    assert isinstance(posterior._fitted, AmortizedFit) and len(posterior.history) == 2


def test_a_posterior_pickled_in_the_old_layout_still_loads():
    for new in (trained_single(), trained_amortized()):
        state = dict(new.__dict__)
        single, fitted = state.pop("_single"), state.pop("_fitted")
        state |= {
            "_family": single.family,
            "_trained_on": single.trained_on,
            "_warm": single.warm,
            "_optimizer": single.optimizer,
            "_scheduler": single.scheduler,
            "_optimizer_key": single.optimizer_key,
            "_amortized": None if fitted is single else fitted.conditional,
        }
        old = VIPosterior.__new__(VIPosterior)
        old.__setstate__(state)
        x = None if fitted is single else X
        torch.manual_seed(4)
        expected = new.sample((5,), x=x)
        torch.manual_seed(4)
        torch.testing.assert_close(old.sample((5,), x=x), expected)
        assert repr(old) == repr(new) and type(old._fitted) is type(fitted)


def test_an_amortised_fit_pickled_before_the_rename_still_loads():
    import pickle

    fitted = trained_amortized()._fitted
    state = dict(fitted.__dict__)
    state["q"] = state.pop("conditional")  # the attribute's name until 2026-12-08
    old = type(fitted).__new__(type(fitted))
    old.__setstate__(state)
    assert old.conditional is fitted.conditional and not hasattr(old, "q")
    assert pickle.loads(pickle.dumps(old)).conditional is not None


def test_the_package_has_no_import_cycle():
    for path in PACKAGE.glob("*.py"):
        if path.name == "__init__.py":
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        assert "sbi_vi.posteriors.vi_posterior" not in imported, path.name
        assert "sbi_vi.posteriors" not in imported, path.name
    code = "import sbi_vi.posteriors.amortized, sbi_vi.posteriors.single"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_set_q_keeps_an_amortised_q_serving_until_train_replaces_it():
    posterior = trained_amortized()
    torch.manual_seed(5)
    expected = posterior.sample((4,), x=X)
    posterior.set_q("gaussian_diag")
    torch.manual_seed(5)
    torch.testing.assert_close(posterior.sample((4,), x=X), expected)
    assert not posterior._single.trained and "amortised" in repr(posterior)
    with pytest.warns(UserWarning, match="replaces the amortised"):
        posterior.train(X[1], max_num_iters=5, warm_up_rounds=2, show_progress_bar=False,
                        quality_control=False)  # fmt: skip
    assert posterior._fitted is posterior._single and posterior.sample((3,)).shape == (3, 2)
