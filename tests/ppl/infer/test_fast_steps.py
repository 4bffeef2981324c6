"""The per-step shortcuts of SVI: same densities, same checks on the first step, no state left."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Distribution, MultivariateNormal, Normal

from sbi_vi.ppl import plate, sample
from sbi_vi.ppl.infer import SVI, AutoMultivariateNormal, AutoNormal
from sbi_vi.ppl.infer.autoguides.mvn import FullRankNormal
from sbi_vi.ppl.infer.optim import LeanAdam


def _family(d: int = 4) -> FullRankNormal:
    family = FullRankNormal(torch.linspace(-1.0, 1.0, d), 0.5)
    with torch.no_grad():
        family.raw_tril.copy_(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
        family.raw_scale.add_(torch.linspace(-0.3, 0.3, d))
    return family


def test_full_rank_draws_have_the_density_and_covariance_of_scale_tril():
    family = _family()
    q = family()
    tril = family.scale_tril
    assert torch.equal(tril, tril.tril()) and (tril.diagonal() > 0).all()
    reference = MultivariateNormal(family.loc, scale_tril=tril)
    torch.manual_seed(1)
    u, log_q = q.rsample_and_log_prob((20_000,))
    torch.testing.assert_close(log_q, reference.log_prob(u), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q.log_prob(u[:5]), reference.log_prob(u[:5]), rtol=1e-4, atol=1e-4)
    cov = torch.cov(u.T)
    # 20,000 draws: entries of the sample covariance within ~5 standard errors
    se = (
        reference.covariance_matrix.diagonal()[:, None] * reference.covariance_matrix.diagonal()
    ).sqrt()
    assert ((cov - reference.covariance_matrix).abs() < 5 * se / 20_000**0.5 + 1e-6).all()
    sd = tril.detach().square().sum(-1).sqrt()
    assert ((u.mean(0) - family.loc).abs() < 5 * sd / 20_000**0.5).all()


def test_only_the_strict_lower_part_of_raw_tril_is_used_and_trained():
    family = _family(3)
    u, log_q = family().rsample_and_log_prob((7,))
    (u.sum() + log_q.sum()).backward()
    assert torch.equal(family.raw_tril.grad.triu(), torch.zeros(3, 3))
    assert family.raw_tril.grad.tril(-1).abs().sum() > 0


def test_packed_raw_tril_of_an_older_guide_gives_the_same_scale_tril():
    family = _family(4)
    dense = family.scale_tril.detach().clone()
    index = torch.tril_indices(4, 4, offset=-1)
    family.raw_tril = torch.nn.Parameter(family.raw_tril.detach()[index[0], index[1]])
    torch.testing.assert_close(family.scale_tril.detach(), dense)


def _model(y):
    mu = sample("mu", Normal(0.0, 5.0))
    with plate("data", y.shape[0]):
        sample("y", Normal(mu, 1.0), obs=y)


@pytest.mark.parametrize("guide", [AutoNormal, AutoMultivariateNormal])
def test_run_leaves_torch_validation_setting_alone(guide):
    before = Distribution._validate_args
    svi = SVI(_model, guide(_model), lr=0.05)
    svi.run(5, torch.randn(10), show_progress_bar=False, quality_control=False)
    assert Distribution._validate_args is before
    assert type(svi.optimizer) is LeanAdam and isinstance(svi.optimizer, torch.optim.Adam)


def test_the_first_step_of_a_run_still_validates_the_model():
    def bad(y):
        mu = sample("mu", Normal(0.0, 5.0))
        with plate("data", y.shape[0]):
            sample("y", Normal(mu, -1.0, validate_args=None), obs=y)  # invalid scale

    if not Distribution._validate_args:
        pytest.skip("torch's argument validation is off in this session")
    svi = SVI(bad, AutoNormal(bad), lr=0.05)
    with pytest.raises(ValueError):
        svi.run(3, torch.randn(5), show_progress_bar=False, quality_control=False)
    assert Distribution._validate_args is True


def test_fit_matches_the_exact_posterior():
    torch.manual_seed(0)
    y = torch.randn(50) + 2.0
    svi = SVI(_model, AutoMultivariateNormal(_model), lr=0.05, n_particles=4)
    result = svi.run(1500, y, seed=0, show_progress_bar=False, average=0.5)
    post_var = 1 / (1 / 25 + 50)
    post_mean = post_var * y.sum()
    loc = result.params["auto_loc"][0]
    sd = result.params["auto_scale_tril"][0, 0]
    assert abs(loc - post_mean) < 0.25 * post_var**0.5
    assert abs(sd / post_var**0.5 - 1) < 0.15
