"""``SVI.run`` options: iterate averaging (``average=``) and a convergence stop (``stopping=``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ppl_infer_models import gaussian_data, gaussian_model, gaussian_posterior

from sbi_vi.ppl.infer import SVI, AutoNormal
from sbi_vi.ppl.infer.averaging import TailAverage
from sbi_vi.vi.fit import ConvergenceCheck

N_DATA = 2000  # posterior sd 0.022: at lr 0.05 the last iterate's noise is visible


def _fit(seed: int, **options):
    x = gaussian_data(N_DATA)
    svi = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05)
    result = svi.run(400, x, seed=seed, show_progress_bar=False, quality_control=False, **options)
    return result, gaussian_posterior(x)


def test_tail_average_is_the_mean_of_the_tail_iterates():
    p = torch.zeros(3, requires_grad=True)
    lrs = []

    class Recorder:
        def step(self):
            lrs.append(1)

    avg = TailAverage([p], start=4, scheduler=Recorder())
    iterates = []
    for i in range(10):
        with torch.no_grad():
            p.copy_(torch.tensor([i, i**2, -i], dtype=torch.float32))
        iterates.append(p.detach().clone())
        avg.step()
    assert len(lrs) == 10 and avg.num_averaged == 6
    assert avg.apply()
    assert torch.allclose(p.detach(), torch.stack(iterates[4:]).mean(0))


def test_averaging_reduces_the_error_of_the_fitted_mean():
    errors = {"last": [], "average": []}
    for seed in range(4):
        last, (mean, sd) = _fit(seed)
        averaged, _ = _fit(seed, average=0.5)
        assert last.num_averaged == 0 and averaged.num_averaged == 200
        for key, res in (("last", last), ("average", averaged)):
            errors[key].append(abs(float(res.params["mu_auto_loc"]) - mean) / sd)
    last_rmse = float(np.sqrt(np.mean(np.square(errors["last"]))))
    avg_rmse = float(np.sqrt(np.mean(np.square(errors["average"]))))
    assert avg_rmse < 0.5 * last_rmse, (errors, last_rmse, avg_rmse)
    assert avg_rmse < 0.3


def test_convergence_stop_ends_the_run_early_and_the_fit_is_accurate():
    x = gaussian_data(20)
    mean, sd = gaussian_posterior(x)
    svi = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05)
    rule = ConvergenceCheck(eps=0.05, window=50, patience=3)
    result = svi.run(20_000, x, seed=0, show_progress_bar=False, stopping=rule)
    assert result.converged and len(result.losses) < 5_000
    assert len(result.losses) % 50 == 0 and len(svi.losses) == len(result.losses)
    assert abs(float(result.params["mu_auto_loc"]) - mean) < 0.5 * sd
    # a run that stops before its averaging window keeps the last iterate
    again = svi.run(20_000, x, seed=1, show_progress_bar=False, stopping=rule, average=0.1)
    assert again.converged and again.num_averaged == 0
    # without a rule every step runs
    full = svi.run(120, x, seed=2, show_progress_bar=False)
    assert not full.converged and len(full.losses) == 120


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"average": 0.0}, ValueError, "average"),
        ({"average": 1.5}, ValueError, "average"),
        ({"average": "half"}, TypeError, "average"),
        ({"average": True}, TypeError, "average"),
        ({"stopping": 1e-3}, TypeError, "stopping"),
    ],
)
def test_bad_options_are_refused(options, error, match):
    svi = SVI(gaussian_model, AutoNormal(gaussian_model), lr=0.05)
    with pytest.raises(error, match=match):
        svi.run(10, gaussian_data(5), show_progress_bar=False, **options)
