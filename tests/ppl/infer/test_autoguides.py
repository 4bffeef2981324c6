"""Autoguides: set-up from the model, the guide program, draws, summaries and errors."""

from __future__ import annotations

import pytest
import torch
from ppl_infer_models import correlated_data, correlated_model, local_model
from torch.distributions import Bernoulli, Normal

from sbi_vi.ppl import PARTICLE_PLATE, sample, vectorize_particles
from sbi_vi.ppl.handlers import replay, seed, substitute, trace
from sbi_vi.ppl.infer import (
    AutoDelta,
    AutoFlow,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_value,
)
from sbi_vi.ppl.infer.runner import Delta

GUIDES = [AutoNormal, AutoMultivariateNormal, AutoFlow, AutoDelta]


@pytest.mark.parametrize("guide_cls", GUIDES)
def test_every_autoguide_is_a_family_and_a_guide_program(guide_cls):
    y = correlated_data()
    guide = guide_cls(correlated_model)
    values = guide(y)  # sets the guide up
    assert set(values) == {"theta"} and values["theta"].shape == (2,)
    assert guide.latent_dim == 2 and guide.family.event_size == 2
    u, log_q = guide.family().rsample_and_log_prob((5,))
    assert u.shape == (5, 2) and log_q.shape == (5,)
    tr = trace(vectorize_particles(guide, 4, max_plate_nesting=1)).get_trace(y)
    assert tr["theta"].value.shape == (4, 1, 2)
    assert tr[guide.aux_name].infer["is_auxiliary"]
    assert tr.batch_log_prob([PARTICLE_PLATE]).shape == (4,)
    draw = guide.draw(3)
    assert draw.values["theta"].shape == (3, 1, 2) and draw.log_q.shape == (3,)
    assert repr(guide).startswith(guide_cls.__name__)


def test_guide_trace_log_q_is_the_change_of_variables_of_the_draw(local_data):
    guide = AutoNormal(local_model).setup(local_data)
    vg = vectorize_particles(guide, 6, max_plate_nesting=1)
    gt = trace(seed(vg, rng_seed=0)).get_trace(local_data)
    log_q = gt.batch_log_prob([PARTICLE_PLATE])
    # by hand: log N(u) of the flat globals and of the locals, minus log|det J|, locals x N/n
    u = gt[guide.aux_name].value.reshape(6, -1)
    loc, scale = guide.family.loc, guide.family.scale_values
    expected = Normal(loc, scale).log_prob(u).sum(-1)
    tau_u, w = u[:, 1], gt["w"].value
    expected = expected - tau_u  # tau = exp(u)
    t = guide.info.latent["w"].transform
    expected = expected - t.log_abs_det_jacobian(u[:, 2:4], t(u[:, 2:4]))
    idx = gt["groups"].value
    theta = gt["theta"].value
    local_loc, local_raw = guide.local_params["theta"][:, idx]
    local = Normal(local_loc, torch.nn.functional.softplus(local_raw)).log_prob(theta)
    expected = expected + 3.0 * local.sum(-1)
    assert torch.allclose(log_q, expected, atol=1e-4)
    assert torch.allclose(w.reshape(6, 3).sum(-1), torch.ones(6))
    # the guide's values and minibatch reach the model through replay
    vm = vectorize_particles(local_model, 6, max_plate_nesting=1)
    mt = trace(replay(vm, trace=gt)).get_trace(local_data)
    assert torch.equal(mt["groups"].value, idx) and mt["theta"].value is theta


def test_draw_has_the_layout_of_the_vectorised_model_and_scales_locals(local_data):
    guide = AutoNormal(local_model).setup(local_data)
    idx = {"groups": torch.tensor([0, 3, 5, 7])}
    draw = guide.draw(5, idx, detached_log_q=True)
    shapes = {k: tuple(v.shape) for k, v in draw.values.items()}
    assert shapes == {"mu": (5, 1), "tau": (5, 1), "w": (5, 1, 3), "theta": (5, 4)}
    assert torch.allclose(draw.log_q, draw.log_q_detached)
    assert draw.log_q_detached.grad_fn is not None  # through the draws, not the parameters
    full = guide.draw(5)
    assert full.values["theta"].shape == (5, 12)


def test_local_parameters_are_per_data_point_and_indexed_by_the_minibatch(local_data):
    guide = AutoNormal(local_model).setup(local_data)
    assert guide.local_params["theta"].shape == (2, 12)
    assert guide.has_local and guide.latent_dim == 1 + 1 + 2  # mu, tau, w (simplex: 2)
    with torch.no_grad():
        guide.local_params["theta"][0] = torch.arange(12.0) * 100
        guide.local_params["theta"][1] = -20.0  # scale ~ 2e-9
    draw = guide.draw(2, {"groups": torch.tensor([4, 9])})
    assert torch.allclose(draw.values["theta"], torch.tensor([[400.0, 900.0]] * 2))
    delta = AutoDelta(local_model).setup(local_data)
    assert delta.local_locs["theta"].shape == (12,)


@pytest.mark.parametrize("guide_cls", [AutoMultivariateNormal, AutoFlow])
def test_joint_guides_refuse_subsampled_local_latents(guide_cls, local_data):
    with pytest.raises(ValueError, match=r"local latent sites \['theta'\].*AutoNormal"):
        guide_cls(local_model)(local_data)


def test_without_subsampling_locals_are_part_of_the_flat_vector(local_data):
    guide = AutoMultivariateNormal(local_model).setup(local_data, None)
    assert not guide.has_local and guide.latent_dim == 1 + 1 + 2 + 12


def test_median_and_quantiles_in_plain_shapes(local_data):
    guide = AutoNormal(local_model).setup(local_data)
    median = guide.median()
    assert {k: tuple(v.shape) for k, v in median.items()} == {
        "mu": (),
        "tau": (),
        "w": (3,),
        "theta": (12,),
    }
    q = guide.quantiles([0.05, 0.5, 0.95])
    assert q["theta"].shape == (3, 12) and bool((q["theta"][0] < q["theta"][2]).all())
    assert torch.allclose(q["tau"][1], median["tau"]) and float(q["tau"][0]) > 0
    draws = guide.sample(50)
    assert draws["theta"].shape == (50, 12) and draws["w"].shape == (50, 3)
    flow = AutoFlow(correlated_model, num_transforms=1, hidden_features=8)
    flow.setup(correlated_data())
    assert flow.quantiles([0.1, 0.9], num_samples=200)["theta"].shape == (2, 2)
    with pytest.raises(ValueError, match="quantiles"):
        guide.quantiles([0.0, 0.5])


def test_named_site_params_follow_numpyro_names(local_data):
    guide = AutoNormal(local_model).setup(local_data)
    params = guide.named_site_params()
    assert params["mu_auto_loc"].shape == () and params["w_auto_loc"].shape == (2,)
    assert params["theta_auto_scale"].shape == (12,)
    assert torch.allclose(params["theta_auto_scale"], torch.full((12,), 0.1))
    mvn = AutoMultivariateNormal(correlated_model).setup(correlated_data())
    assert set(mvn.named_site_params()) == {"auto_loc", "auto_scale_tril"}
    delta = AutoDelta(local_model).setup(local_data)
    assert float(delta.named_site_params()["tau_auto_loc"]) > 0  # constrained


def test_init_functions():
    y = correlated_data()
    for init, check in [
        (init_to_median, lambda v: v.abs().max() < 3),
        (init_to_mean, lambda v: torch.allclose(v, torch.zeros(2))),
        (init_to_feasible, lambda v: torch.allclose(v, torch.zeros(2))),
        (init_to_sample, lambda v: v.shape == (2,)),
        (
            init_to_value(values={"theta": torch.tensor([1.0, -1.0])}),
            lambda v: v.tolist() == [1, -1],
        ),
    ]:
        guide = AutoNormal(correlated_model, init_loc_fn=init).setup(y)
        assert check(guide.median()["theta"]), init
    with pytest.raises(ValueError, match="elements"):
        AutoNormal(
            correlated_model, init_loc_fn=init_to_value(values={"theta": torch.ones(3)})
        ).setup(y)


def test_bad_arguments_and_discrete_latents():
    with pytest.raises(TypeError, match="model"):
        AutoNormal(3)
    with pytest.raises(ValueError, match="init_scale"):
        AutoNormal(correlated_model, init_scale=0.0)
    with pytest.raises(ValueError, match="flow"):
        AutoFlow(correlated_model, flow="glow")
    with pytest.raises(RuntimeError, match="not set up"):
        AutoNormal(correlated_model).median()

    def discrete():
        sample("k", Bernoulli(0.5))

    with pytest.raises(ValueError, match="discrete"):
        AutoNormal(discrete)()


def test_delta_distribution():
    v = torch.randn(3, 2)
    d = Delta(v, torch.ones(3), event_dim=1)
    assert d.batch_shape == (3,) and d.event_shape == (2,)
    assert torch.equal(d.log_prob(v), torch.ones(3))
    assert torch.isinf(d.log_prob(v + 1)).all()
    assert d.expand((4, 3)).log_prob(v).shape == (4, 3)
    assert torch.equal(d.rsample(), v)


def test_autoguide_honours_substituted_plate_indices(local_data):
    guide = AutoNormal(local_model).setup(local_data)
    idx = torch.tensor([1, 2, 3, 4])
    tr = trace(substitute(guide, data={"groups": idx})).get_trace(local_data)
    assert torch.equal(tr["groups"].value, idx) and tr["theta"].value.shape == (4,)
