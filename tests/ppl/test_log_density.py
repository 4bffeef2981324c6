"""Site log densities that fail are re-raised naming the site, its plates, shapes and NaN."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import HalfNormal, Independent, Normal, Poisson

from sbi_vi.ppl import param, plate, sample
from sbi_vi.ppl.handlers import mask, trace
from sbi_vi.ppl.infer import SVI, AutoNormal
from sbi_vi.ppl.infer.runner import ModelRunner, particle_plate
from sbi_vi.ppl.log_density import SiteLogProbError


def plain(y, n=5):
    mu = sample("mu", Normal(0.0, 2.0))
    with plate("data", n):
        sample("y", Normal(mu, 1.0), obs=y)


def positive(y):
    s = sample("s", HalfNormal(1.0))
    with plate("data", 5):
        sample("y", HalfNormal(s), obs=y)


def counts(y):
    rate = sample("rate", HalfNormal(5.0))
    with plate("data", 5):
        sample("y", Poisson(rate), obs=y)


def subsampled(y):
    mu = sample("mu", Normal(0.0, 2.0))
    with plate("data", 10, subsample_size=4):
        sample("y", Normal(mu, 1.0), obs=y)  # forgot y[idx]


NAN = torch.tensor([0.0, math.nan, 1.0, 2.0, 3.0])
CASES = [
    (plain, torch.randn(3), r"'y'.*plate 'data' \(size 5, dim -1\).*shape \(3,\).*has 5"),
    (plain, torch.randn(7), r"'y'.*plate 'data'.*shape \(7,\), with 7 entries.*has 5"),
    (plain, torch.randn(5, 2), r"'y'.*shape \(5, 2\)"),
    (plain, NAN, r"'y'.*contains NaN \(1 of 5 entries\)"),
    (positive, torch.tensor([-1.0, 1, 1, 1, 1]), r"'y'.*outside the support.*-1\.0 at index"),
    (counts, torch.tensor([1.5, 1, 1, 1, 1]), r"'y'.*outside the support.*Poisson.*1\.5"),
    (subsampled, torch.randn(10), r"'y'.*subsample 4.*index the data with its indices"),
]


@pytest.mark.parametrize(("fn", "y", "pattern"), CASES)
def test_a_plain_trace_names_the_site_plates_and_shapes(fn, y, pattern):
    tr = trace(fn).get_trace(y)
    with pytest.raises(ValueError, match=pattern) as info:
        tr.compute_log_prob()
    assert isinstance(info.value, SiteLogProbError) and info.value.site == "y"
    assert isinstance(info.value.__cause__, ValueError | RuntimeError)  # torch's, chained


@pytest.mark.parametrize(("fn", "y", "pattern"), CASES)
def test_svi_names_the_site_plates_and_shapes(fn, y, pattern):
    svi = SVI(fn, AutoNormal(fn), lr=0.01)
    with pytest.raises(ValueError, match=pattern):
        svi.run(3, y, show_progress_bar=False)


def test_the_vectorised_runner_names_the_site_without_the_particle_plate():
    runner = ModelRunner(values={"mu": torch.zeros(4, 1)}, max_plate_nesting=1)
    with pytest.raises(ValueError, match=r"'y'.*inside plate 'data'.*leftmost batch dim") as e:
        with particle_plate(4, 1), runner:
            plain(torch.randn(3))
    assert "_particles" not in str(e.value).split("[")[0]


def test_inf_observations_are_refused_at_set_up_even_though_torch_scores_them():
    y = torch.tensor([0.0, math.inf, 1.0, 2.0, 3.0])
    assert trace(plain).get_trace(y)["y"].fn.log_prob(y).isinf().any()  # torch accepts it
    svi = SVI(plain, AutoNormal(plain), lr=0.01)
    with pytest.raises(ValueError, match=r"observed site 'y'.*contains inf \(1 of 5"):
        svi.run(3, y, show_progress_bar=False)


def test_nan_observations_are_refused_when_torch_validation_is_off():
    def unvalidated(y):
        mu = sample("mu", Normal(0.0, 2.0))
        with plate("data", 5):
            sample("y", Normal(mu, 1.0, validate_args=False), obs=y)

    with pytest.raises(ValueError, match=r"'y'.*NaN \(1 of 5 entries\)"):
        SVI(unvalidated, AutoNormal(unvalidated), lr=0.01).run(3, NAN, show_progress_bar=False)


def test_masking_nan_does_not_hide_it_but_masking_the_whole_site_does():
    def masked(y, keep):
        mu = sample("mu", Normal(0.0, 2.0))
        with plate("data", 5), mask(mask=keep):
            sample("y", Normal(mu, 1.0, validate_args=False), obs=y)

    keep = ~torch.isnan(NAN)
    with pytest.raises(ValueError, match=r"'y'.*NaN.*`mask` does not help"):
        SVI(masked, AutoNormal(masked), lr=0.01).run(3, NAN, keep, show_progress_bar=False)
    result = SVI(masked, AutoNormal(masked), lr=0.01).run(
        3, NAN, False, show_progress_bar=False, quality_control=False
    )
    assert result.num_skipped == 0


@pytest.mark.parametrize(
    ("y", "pattern"),
    [
        (torch.ones(5, 1), r"'y'.*shape \(5, 1\) broadcasts.*\(1, 5\) to \(5, 5\).*shape \(5,\)"),
        (torch.ones(5, dtype=torch.bool), r"'y'.*dtype torch.bool.*obs.float\(\)"),
        (torch.ones(5, dtype=torch.complex64), r"'y'.*complex64"),
    ],
)
def test_observations_that_would_be_misread_are_refused(y, pattern):
    with pytest.raises(ValueError, match=pattern):
        SVI(plain, AutoNormal(plain), lr=0.01).run(3, y, show_progress_bar=False)


def test_event_shaped_observations_name_the_event_shape():
    def vector(y):
        mu = sample("mu", Independent(Normal(torch.zeros(2), 1.0), 1))
        with plate("data", 3):
            sample("y", Independent(Normal(mu, 1.0), 1), obs=y)

    with pytest.raises(ValueError, match=r"'y'.*\(3, 4\).*event shape \(2,\)"):
        SVI(vector, AutoNormal(vector), lr=0.01).run(3, torch.ones(3, 4), show_progress_bar=False)


def test_a_guide_that_leaves_the_support_is_named_with_the_remedy():
    def guide(y):
        loc = param("s_loc", torch.tensor(-1.0))
        sample("s", Normal(loc, 0.1))  # negative draws for a positive site

    with pytest.raises(ValueError, match=r"latent site 's'.*outside the support.*LogNormal"):
        SVI(positive, guide, lr=0.01).run(2, torch.ones(5), show_progress_bar=False)
