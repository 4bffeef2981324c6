"""Many observations in one run: ``VIPosterior.train(x=X)`` with X ``[B, L]`` (BatchedFit)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbi_vi.diagnostics import c2st
from sbi_vi.posteriors import VIPosterior
from sbi_vi.posteriors.batched import BatchedFit
from sbi_vi.posteriors.single import SingleFit
from sbi_vi.potentials import likelihood_estimator_based_potential
from sbi_vi.tasks import get_task

TASK = get_task("gaussian_linear")  # closed-form posterior N(x/2, 0.05 I) for one row of x
PRIOR = TASK.prior
D = TASK.dim_theta
X = TASK.simulator(PRIOR.sample((3,)), seed=3).clone()
X[2] = 1.0  # far in the prior's tail (sd 0.32): this posterior takes longest to reach
TRAIN = {
    "show_progress_bar": False,
    "max_num_iters": 500,
    "n_particles": 128,
    "learning_rate": 2e-3,
    "quality_control": False,
}


def _posterior(q: str = "gaussian", **kwargs) -> VIPosterior:
    potential, _ = likelihood_estimator_based_potential(TASK.likelihood, PRIOR)
    return VIPosterior(potential, PRIOR, q=q, x_shape=(1, TASK.dim_x), **kwargs)


@pytest.fixture(scope="module")
def batched() -> VIPosterior:
    return _posterior().train(x=X, seed=1, **TRAIN)


def test_a_batch_is_fitted_by_one_batched_fit_and_one_row_by_the_single_fit(batched):
    assert isinstance(batched._fitted, BatchedFit)
    assert "trained on 3 observations" in repr(batched)
    single = _posterior().train(x=X[:1], seed=1, **{**TRAIN, "max_num_iters": 20})
    assert isinstance(single._fitted, SingleFit)
    # without x_shape, rows of x stay iid rows of one observation (as before)
    potential, _ = likelihood_estimator_based_potential(TASK.likelihood, PRIOR)
    iid = VIPosterior(potential, PRIOR, q="gaussian")
    iid.train(x=X, seed=1, **{**TRAIN, "max_num_iters": 20})
    assert isinstance(iid._fitted, SingleFit)
    assert iid.sample((4,)).shape == (4, D)


def test_q_and_family_are_the_batched_fits_after_a_batched_train(batched):
    q = batched.q
    assert q.batch_shape == (3,) and q.event_shape == (D,)
    theta = batched.sample((5,), x=X)
    torch.testing.assert_close(q.log_prob(theta), batched.log_prob(theta, x=X))
    assert batched.family is batched._fitted.module
    fresh = _posterior()
    assert fresh.q.batch_shape == () and fresh.family is fresh._single.family


def test_shapes_match_those_of_an_amortised_q(batched):
    theta = batched.sample((7,))
    assert theta.shape == (7, 3, D)
    assert batched.sample((7,), x=X).shape == (7, 3, D)
    assert batched.sample((7,), x=X[1]).shape == (7, D)
    assert batched.sample((7,), x=X[[2, 0]]).shape == (7, 2, D)
    assert batched.sample_batched((5,), x=X).shape == (5, 3, D)
    assert batched.log_prob(theta).shape == (7, 3)
    assert batched.log_prob(theta[0]).shape == (3,)  # [B, D]: paired with the rows
    assert batched.log_prob(theta[0, :1]).shape == (3,)  # one θ under every q_b
    assert batched.log_prob(theta[:, 1], x=X[1]).shape == (7,)
    assert batched.log_prob(theta[0, 1], x=X[1]).shape == ()
    quality = batched.evaluate(N=500)
    assert quality.khat.shape == (3,) and quality.reliable.shape == (3,)
    evidence = batched.log_evidence(N=500)
    assert evidence.value.shape == (3,) and evidence.khat.shape == (3,)
    assert batched.map(num_iter=20, num_init_samples=100, num_to_optimize=5).shape == (3, D)
    assert batched.sample((4,), method="sir", num_proposals=200).shape == (4, 3, D)


def test_log_prob_of_pairs_equals_the_log_prob_under_each_q(batched):
    theta = batched.sample((6,))
    full = batched.log_prob(theta)
    for b in range(3):
        torch.testing.assert_close(batched.log_prob(theta[:, b], x=X[b]), full[:, b])


def test_each_fit_matches_the_closed_form_posterior_and_a_separate_fit(batched):
    draws = batched.sample((20_000,))
    separate = _posterior().train(x=X[1], seed=2, **TRAIN).sample((2000,))
    for b in range(3):
        exact = TASK.true_posterior(X[b])
        mean, cov = draws[:, b].mean(0), torch.cov(draws[:, b].T)
        # the posterior sd is 0.22: the mean is within a seventh of it, the variances within
        # 15 % (the noise of a stochastic fit; mixing up observations moves means by ~0.3)
        torch.testing.assert_close(mean, exact.mean, atol=0.03, rtol=0)
        ratio = cov.diagonal() / exact.covariance_matrix.diagonal()
        assert bool(((ratio > 0.85) & (ratio < 1.15)).all()), ratio
        off = cov - torch.diag(cov.diagonal())
        assert float(off.abs().max()) < 0.01
    exact_draws = TASK.true_posterior(X[1]).sample((1000,))
    assert c2st(draws[:1000, 1], exact_draws, classifier="rf", seed=1) < 0.58
    assert c2st(draws[:1000, 1], separate[:1000], classifier="rf", seed=5) < 0.58


class _Recorder:
    """A 'scheduler' (built with the optimizer) that records the parameters after each step,
    after the batched fit has held its converged rows."""

    history: list[torch.Tensor] = []  # noqa: RUF012

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.param = optimizer.param_groups[0]["params"][0]
        _Recorder.history = []

    def step(self) -> None:
        _Recorder.history.append(self.param.detach().clone())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_an_observation_that_converges_early_stops_changing():
    post = _posterior()
    post.train(x=X, seed=1, scheduler=_Recorder, **TRAIN)
    at = post._fitted.converged_at
    done = torch.where(at >= 0, at, post.history[-1].num_iters)
    early, late = int(done.argmin()), int(done.argmax())
    assert int(at[early]) >= 0 and done[late] > done[early], at  # not all at once
    steps = torch.stack(_Recorder.history)  # [iterations, B, P]
    assert steps.shape[0] == post.history[-1].num_iters
    held = steps[int(at[early]) :, early]
    assert torch.equal(held, held[:1].expand_as(held))  # held exactly from convergence on
    moving = steps[int(at[early]) : int(done[late]), late]
    assert bool((moving[1:] != moving[:-1]).all(0).any())  # the late one still trained


def test_a_second_train_continues_the_same_batch(batched):
    before = batched._fitted
    batched.train(x=X, seed=4, **{**TRAIN, "max_num_iters": 10})
    assert batched._fitted is before


def test_bad_input_is_refused_naming_the_argument(batched):
    with pytest.raises(ValueError, match=r"`x` must have trailing shape \(10,\).*got \(3, 4\)"):
        batched.sample((2,), x=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="`x` must consist of the 3 observations"):
        batched.sample((2,), x=X[:1] + 1.0)
    with pytest.raises(ValueError, match=r"`theta` must have shape \[\*n, 3, D\]"):
        batched.log_prob(torch.zeros(5, D))
    with pytest.raises(ValueError, match="quality_control_metric='prop'"):
        _posterior().train(x=X, quality_control=True, quality_control_metric="prop")
    with pytest.raises(ValueError, match=r"FlowFamily cannot fit a batch.*'gaussian'"):
        _posterior(q="maf").train(x=X, **TRAIN)
    with pytest.raises(ValueError, match="`x` must have trailing shape"):
        _posterior().train(x=torch.zeros(3, 4), **TRAIN)


def test_a_failed_batched_train_leaves_the_posterior_as_it_was():
    state = {"fail_after": None, "calls": 0}

    def potential(theta, x):
        state["calls"] += 1
        if state["fail_after"] is not None and state["calls"] > state["fail_after"]:
            raise RuntimeError("simulator crashed")
        return PRIOR.log_prob(theta) + TASK.likelihood.log_prob(x, theta)

    post = VIPosterior(potential, PRIOR, q="gaussian", x_shape=(1, TASK.dim_x))
    state["fail_after"] = 50  # during the first training: nothing is kept
    with pytest.raises(RuntimeError, match="simulator crashed"):
        post.train(x=X, **TRAIN)
    assert not post._fitted.trained
    state["fail_after"] = None
    post.train(x=X, seed=1, **{**TRAIN, "max_num_iters": 50})
    fitted = post._fitted
    saved = [p.detach().clone() for p in fitted.family.parameters()]
    state["calls"], state["fail_after"] = 0, 20  # a continued training fails half-way
    with pytest.raises(RuntimeError, match="simulator crashed"):
        post.train(x=X, **TRAIN)
    assert post._fitted is fitted and fitted.trained
    for p, s in zip(fitted.family.parameters(), saved, strict=True):
        assert torch.equal(p, s)


def test_an_amortised_q_scores_draws_of_shape_n_b_d_as_the_batched_one():
    from sbi_vi.posteriors.amortized import AmortizedFit
    from sbi_vi.posteriors.conditional import build_conditional_q

    post = _posterior()
    theta_sim = PRIOR.sample((50,))
    q = build_conditional_q(
        "gaussian",
        prior=PRIOR,
        transform=post.theta_transform,
        theta=theta_sim,
        x=TASK.simulator(theta_sim, seed=1),
        num_transforms=1,
        hidden_features=8,
        z_score_theta="independent",
        z_score_x="independent",
        direction="sample",
        device="cpu",
    )
    post._fitted = AmortizedFit(q)  # what train_amortized would put there
    theta = post.sample((6,), x=X)
    assert theta.shape == (6, 3, D)
    full = post.log_prob(theta, x=X)
    assert full.shape == (6, 3)
    for b in range(3):
        torch.testing.assert_close(post.log_prob(theta[:, b], x=X[b]), full[:, b])
    with pytest.raises(ValueError, match=r"a column per row of x \(\[\*n, 3, D\]\)"):
        post.log_prob(torch.zeros(6, 2, D), x=X)
    with pytest.raises(ValueError, match="depends on x"):
        _ = post.q  # q(θ | x) is a distribution only at an x
    assert post.family is q


def test_a_batched_posterior_round_trips_through_save_and_load(batched, tmp_path):
    path = tmp_path / "batched.pt"
    batched.save(path)
    loaded = VIPosterior.load(path)
    torch.manual_seed(3)
    a = batched.sample((4,))
    torch.manual_seed(3)
    assert torch.equal(a, loaded.sample((4,)))
    assert isinstance(loaded._fitted, BatchedFit)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sample_shape=st.lists(st.integers(0, 3), min_size=0, max_size=2).map(tuple),
    rows=st.lists(st.integers(0, 2), min_size=1, max_size=3),
)
def test_shapes_of_draws_and_densities_for_any_sample_shape_and_rows(batched, sample_shape, rows):
    x = X[rows]
    k = len(rows)
    theta = batched.sample(sample_shape, x=x)
    assert theta.shape == ((*sample_shape, D) if k == 1 else (*sample_shape, k, D))
    if k > 1 and len(sample_shape) >= 1:
        full = batched.log_prob(theta, x=x)
        assert full.shape == theta.shape[:-1]
        for j, b in enumerate(rows):  # a row of x is answered by its own q
            if theta.shape[:-2].numel():
                one = batched.log_prob(theta[..., j, :], x=X[b])
                torch.testing.assert_close(one, full[..., j])
