"""An autoguide on a model whose latent sites are all local (no global site)."""

from __future__ import annotations

import torch
from torch.distributions import Normal

from sbi_vi.ppl import plate, sample
from sbi_vi.ppl.infer import SVI, AutoNormal


def _model(y):
    with plate("data", y.shape[0]):
        z = sample("z", Normal(0.0, 1.0))
        sample("y", Normal(z, 1.0), obs=y)


def test_autonormal_fits_a_model_with_only_local_latents():
    torch.manual_seed(0)
    y = torch.randn(8) + 3.0
    result = SVI(_model, AutoNormal(_model), lr=0.05).run(
        2000, y, show_progress_bar=False, seed=0, quality_control=False
    )
    summary = result.sample_posterior(y, num_samples=4000, seed=1)
    # exact posterior of each z_i: N(y_i / 2, 1 / 2)
    mean = torch.as_tensor(summary["means"]["z"])
    std = torch.as_tensor(summary["stds"]["z"])
    assert (mean - y / 2).abs().max() < 0.3  # 0.4 posterior sd: constant-lr SGD noise
    assert abs(float(std.mean()) - 0.5**0.5) < 0.1  # per site the scales still jitter
