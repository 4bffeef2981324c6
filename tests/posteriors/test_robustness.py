"""VIPosterior under bad θ/x, interruptions, copies and files — every family, both modes.

The rule: a clear error naming the argument (and what is wrong: NaN, ±inf, shape, dtype),
or a correct answer; a failed call leaves the posterior as it found it.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from sbi_vi import BoxUniform, VIPosterior
from sbi_vi.errors import NotTrainedError, SbiViError
from sbi_vi.potentials import LikelihoodBasedPotential
from sbi_vi.vi.families import FAMILY_NAMES

PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
X_O = torch.tensor([[0.5, -0.5]])
FAST = {
    "max_num_iters": 15,
    "warm_up_rounds": 5,
    "n_particles": 16,
    "annealing_iters": 5,
    "show_progress_bar": False,
    "quality_control": False,
}


def likelihood(theta, x):
    return Normal(theta, 0.5).log_prob(x).sum(-1)


def potential_fn(theta, x_o):
    return PRIOR.log_prob(theta) + likelihood(theta, x_o).reshape(-1, *theta.shape[:-1]).sum(0)


def single(q, **kwargs):
    torch.manual_seed(0)
    small = {"num_transforms": 1, "hidden_features": 8}
    posterior = VIPosterior(potential_fn, PRIOR, q=q, **small).set_default_x(X_O)
    return posterior.train(**{**FAST, **kwargs})


def amortized(flow_type, **kwargs):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(200, 2, generator=g)
    x = theta + 0.5 * torch.randn(200, 2, generator=g)
    posterior = VIPosterior(LikelihoodBasedPotential(likelihood, PRIOR), PRIOR)
    settings = {"max_num_iters": 5, "batch_size": 16, "n_particles": 8, "seed": 0}
    return posterior.train_amortized(
        theta,
        x,
        flow_type=flow_type,
        num_transforms=1,
        hidden_features=8,
        show_progress_bar=False,
        **{**settings, **kwargs},
    )


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_posterior(request):
    return single(request.param)


@pytest.fixture(scope="module", params=["gaussian", "nsf"])
def amortized_posterior(request):
    return amortized(request.param)


def x_for(posterior):
    return None if posterior._fitted is posterior._single else X_O


# ------------------------------------------------------------------ θ and x at the boundary
def test_log_prob_refuses_nan_and_inf_naming_which(family_posterior):
    check_bad_theta(family_posterior)


def test_amortized_log_prob_refuses_nan_and_inf(amortized_posterior):
    check_bad_theta(amortized_posterior)


def check_bad_theta(posterior):
    x = x_for(posterior)
    good = torch.tensor([[0.1, 0.2], [0.3, -0.4], [1.0, 1.0]])
    for value, what in ((float("nan"), "NaN"), (float("inf"), "±inf"), (-float("inf"), "±inf")):
        bad = good.clone()
        bad[1, 0] = value
        with pytest.raises(ValueError, match=rf"`theta` has 1 parameter vector\(s\) with {what}"):
            posterior.log_prob(bad, x=x)
        with pytest.raises(ValueError, match="`theta`"):
            posterior.potential(bad, x=X_O)
    assert torch.isfinite(posterior.log_prob(good, x=x)).all()


def test_float64_and_int_theta_give_the_float32_answer(family_posterior):
    check_dtypes(family_posterior)


def test_amortized_float64_theta_and_x(amortized_posterior):
    check_dtypes(amortized_posterior)
    theta = torch.tensor([[0.1, 0.2], [0.3, -0.4]])
    expected = amortized_posterior.log_prob(theta, x=X_O)
    got = amortized_posterior.log_prob(theta.double(), x=X_O.double())
    torch.testing.assert_close(got, expected)
    torch.manual_seed(0)
    a = amortized_posterior.sample((3,), x=X_O.double())
    torch.manual_seed(0)
    torch.testing.assert_close(a, amortized_posterior.sample((3,), x=X_O))


def check_dtypes(posterior):
    x = x_for(posterior)
    theta = torch.tensor([[0.1, 0.2], [1.0, -1.0]])
    expected = posterior.log_prob(theta, x=x)
    for other in (theta.double(), theta.half(), theta.bfloat16()):
        got = posterior.log_prob(other, x=x)
        assert got.dtype == torch.float32
        tol = 1e-5 if other.dtype == torch.float64 else 0.1
        torch.testing.assert_close(got, posterior.log_prob(other.float(), x=x), atol=tol, rtol=0)
    torch.testing.assert_close(posterior.log_prob(theta.double(), x=x), expected)
    ints = posterior.log_prob(torch.tensor([[0, 1]]), x=x)
    torch.testing.assert_close(ints, posterior.log_prob(torch.tensor([[0.0, 1.0]]), x=x))
    with pytest.raises(ValueError, match=r"overflows torch\.float32"):
        posterior.log_prob(torch.tensor([[1e300, 0.0]], dtype=torch.float64), x=x)
    with pytest.raises(TypeError, match="`theta` must be real"):
        posterior.log_prob(theta.to(torch.complex64), x=x)


def test_empty_batches_give_empty_answers(family_posterior):
    check_empty(family_posterior)


def test_amortized_empty_batches(amortized_posterior):
    check_empty(amortized_posterior)


def check_empty(posterior):
    x = x_for(posterior)
    out = posterior.log_prob(torch.zeros(0, 2), x=x)
    assert out.shape == (0,) and out.dtype == torch.float32
    assert posterior.log_prob(torch.zeros(3, 0, 2), x=x).shape == (3, 0)
    assert posterior.sample((0,), x=x).shape == (0, 2)
    assert posterior.sample((2, 0), x=x).shape == (2, 0, 2)


def test_sample_shape_is_checked(family_posterior):
    with pytest.raises(ValueError, match="`sample_shape` must not hold negative"):
        family_posterior.sample((-1,))
    with pytest.raises(TypeError, match="`sample_shape` must be a tuple of ints"):
        family_posterior.sample((2.5,))
    assert family_posterior.sample(3).shape == (3, 2)


def test_x_is_checked_everywhere(amortized_posterior):
    for method in ("sample", "log_prob"):
        args = ((2,),) if method == "sample" else (torch.zeros(2, 2),)
        call = getattr(amortized_posterior, method)
        with pytest.raises(ValueError, match=r"`x` has 1 observation.* with NaN"):
            call(*args, x=torch.tensor([[0.0, float("nan")]]))
        with pytest.raises(ValueError, match=r"`x` has 1 observation.* with ±inf"):
            call(*args, x=torch.tensor([[0.0, float("inf")]]))
        with pytest.raises(ValueError, match="at least one observation"):
            call(*args, x=torch.zeros(0, 2))
        with pytest.raises(ValueError, match="trailing shape"):
            call(*args, x=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        amortized_posterior.map(x=torch.tensor([[float("nan"), 0.0]]), num_iter=2)
    with pytest.raises(ValueError, match="NaN"):
        amortized_posterior.evaluate(x=torch.tensor([[float("nan"), 0.0]]), N=10)
    with pytest.raises(ValueError, match="NaN"):
        amortized_posterior.sample_batched((2,), x=torch.tensor([[float("nan"), 0.0]]))


def test_map_takes_float64_inits_and_refuses_bad_ones(family_posterior):
    inits = torch.tensor([[0.1, 0.2], [0.3, -0.4]], dtype=torch.float64)
    theta = family_posterior.map(init_method=inits, num_iter=3, force_update=True)
    assert theta.shape == (2,) and theta.dtype == torch.float32 and torch.isfinite(theta).all()
    with pytest.raises(ValueError, match="NaN"):
        family_posterior.map(init_method=inits.clone().fill_(float("nan")), force_update=True)
    with pytest.raises(ValueError, match="empty"):
        family_posterior.map(init_method=torch.zeros(0, 2), force_update=True)


def test_outside_a_bounded_support_is_still_named():
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    potential = LikelihoodBasedPotential(likelihood, prior, torch.tensor([0.5, 0.5]))
    torch.manual_seed(0)
    posterior = VIPosterior(potential, q="gaussian").train(**FAST)
    with pytest.raises(ValueError, match="outside the prior's support"):
        posterior.log_prob(torch.tensor([[2.0, 0.5]]))
    with pytest.raises(ValueError, match="±inf"):
        posterior.log_prob(torch.tensor([[float("inf"), 0.5]]))


# ------------------------------------------------------------------ errors sbi users catch
def test_not_trained_is_a_value_error_as_in_sbi():
    posterior = VIPosterior(potential_fn, PRIOR, q="gaussian").set_default_x(X_O)
    for call in (
        lambda: posterior.sample((2,)),
        lambda: posterior.log_prob(torch.zeros(1, 2)),
        lambda: posterior.evaluate(N=10),
    ):
        with pytest.raises(ValueError, match="train") as info:
            call()
        assert isinstance(info.value, NotTrainedError | SbiViError)


# ------------------------------------------------------------------ interrupted fits
class Flaky:
    """A potential that raises ``exc`` at its ``fail_at``-th call (then works again)."""

    def __init__(self, fail_at, exc):
        self.calls, self.fail_at, self.exc = 0, fail_at, exc

    def __call__(self, theta, x_o):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.exc("potential failed")
        return potential_fn(theta, x_o)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("q", ["gaussian", "maf"])
def test_an_interrupted_first_train_restarts_as_a_fresh_fit(q, exc):
    def build(potential):
        torch.manual_seed(0)
        return VIPosterior(potential, PRIOR, q=q, num_transforms=1, hidden_features=8)

    settings = {**FAST, "max_num_iters": 30, "annealing_iters": 10, "seed": 1}
    reference = build(Flaky(-1, exc)).set_default_x(X_O).train(**settings)
    flaky = Flaky(8, exc)
    posterior = build(flaky).set_default_x(X_O)
    initial = copy.deepcopy(posterior.family.state_dict())
    with pytest.raises(exc, match="potential failed"):
        posterior.train(**settings)
    assert posterior._single.trained_on is None and not posterior._single.warm
    for name, value in posterior.family.state_dict().items():
        torch.testing.assert_close(value, initial[name])
    with pytest.raises(NotTrainedError):
        posterior.sample((1,))
    posterior.train(**settings)  # warm-up and annealing again: the same fit as the reference
    theta = torch.tensor([[0.1, -0.2], [1.0, 0.3]])
    torch.testing.assert_close(posterior.log_prob(theta), reference.log_prob(theta))
    assert len(posterior.history) == 1


def test_an_interrupted_later_train_keeps_the_trained_q():
    flaky = Flaky(10**9, KeyboardInterrupt)
    torch.manual_seed(0)
    posterior = VIPosterior(flaky, PRIOR, q="gaussian").set_default_x(X_O).train(**FAST)
    before = copy.deepcopy(posterior.family.state_dict())
    flaky.fail_at = flaky.calls + 3
    with pytest.raises(KeyboardInterrupt):
        posterior.train(**FAST)
    for name, value in posterior.family.state_dict().items():
        torch.testing.assert_close(value, before[name])
    assert posterior.sample((4,)).shape == (4, 2)  # still trained on X_O


class FlakyLikelihood:
    def __init__(self, fail_at):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, theta, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("likelihood interrupted")
        return likelihood(theta, x)


def test_an_interrupted_train_amortized_leaves_no_q_and_restarts_fresh():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(200, 2, generator=g)
    x = theta + 0.5 * torch.randn(200, 2, generator=g)
    kwargs = {"flow_type": "gaussian", "max_num_iters": 6, "batch_size": 16, "n_particles": 8}
    kwargs |= {"show_progress_bar": False, "seed": 0}

    def build(lik):
        torch.manual_seed(0)
        return VIPosterior(LikelihoodBasedPotential(lik, PRIOR), PRIOR)

    reference = build(likelihood).train_amortized(theta, x, **kwargs)
    posterior = build(FlakyLikelihood(4))
    with pytest.raises(KeyboardInterrupt):
        posterior.train_amortized(theta, x, **kwargs)
    assert posterior._fitted is posterior._single and posterior.history == []
    with pytest.raises(NotTrainedError):
        posterior.sample((1,), x=X_O)
    posterior.train_amortized(theta, x, **kwargs)
    probe = torch.tensor([[0.1, -0.2], [1.0, 0.3]])
    torch.testing.assert_close(posterior.log_prob(probe, x=X_O), reference.log_prob(probe, x=X_O))


# ------------------------------------------------------------------ copies and files
@pytest.mark.parametrize("mode", ["single", "amortized"])
def test_trained_posteriors_copy_pickle_and_save(mode, tmp_path):
    posterior = single("maf") if mode == "single" else amortized("nsf")
    path = tmp_path / "posterior.pt"
    posterior.save(path)
    copies = [
        copy.deepcopy(posterior),
        pickle.loads(pickle.dumps(posterior)),
        VIPosterior.load(path),
    ]
    torch.manual_seed(5)
    expected = posterior.sample((6,), x=X_O)
    probe = torch.tensor([[0.1, -0.2], [1.0, 0.3]])
    for other in copies:
        torch.manual_seed(5)
        torch.testing.assert_close(other.sample((6,), x=X_O), expected)
        torch.testing.assert_close(other.log_prob(probe, x=X_O), posterior.log_prob(probe, x=X_O))
    if mode == "single":  # the copy trains on identically from the same seed
        draws = []
        for other in (posterior, copies[2]):
            other.train(**FAST, seed=3)
            torch.manual_seed(6)
            draws.append(other.sample((4,)))
        torch.testing.assert_close(draws[0], draws[1])


def test_bad_files_name_the_file_and_class(tmp_path):
    posterior = single("gaussian")
    path = tmp_path / "post.pt"
    posterior.save(path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 20):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}\.pt' is not a valid VIPosterior file"):
            VIPosterior.load(bad)
    torch.save({"a": 1}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="holds a dict"):
        VIPosterior.load(tmp_path / "dict.pt")
    with pytest.raises(FileNotFoundError):
        VIPosterior.load(tmp_path / "missing.pt")


def test_far_out_theta_gives_a_density_not_a_support_error(family_posterior):
    theta = torch.tensor([[1e30, 0.0], [3e38, -3e38], [1e4, 1e4], [0.1, 0.2]])
    out = family_posterior.log_prob(theta)
    assert out.shape == (4,) and not torch.isnan(out).any()
    assert bool((out[:3] < out[3]).all())  # far out is less likely than the bulk
    assert torch.isfinite(out[3])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("learning_rate", 0.0),
        ("learning_rate", -1.0),
        ("gamma", 0.0),
        ("gamma", 1.5),
        ("clip_value", 0.0),
        ("n_particles", 0),
        ("max_num_iters", 0),
        ("min_num_iters", -1),
    ],
)
def test_hyper_parameters_are_refused_as_sbi_does(name, value):
    posterior = VIPosterior(potential_fn, PRIOR, q="gaussian").set_default_x(X_O)
    with pytest.raises(ValueError, match=f"`{name}`"):
        posterior.train(**{**FAST, name: value})
    assert posterior._single.trained_on is None
    if name in ("learning_rate", "gamma", "clip_value"):
        theta, x = torch.randn(50, 2), torch.randn(50, 2)
        amortized_posterior = VIPosterior(LikelihoodBasedPotential(likelihood, PRIOR), PRIOR)
        with pytest.raises(ValueError, match=f"`{name}`"):
            amortized_posterior.train_amortized(theta, x, **{name: value})
