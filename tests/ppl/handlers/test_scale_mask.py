"""scale and mask."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from sbi_vi.ppl import plate, sample
from sbi_vi.ppl.handlers import mask, scale, trace


def model():
    with plate("data", 3):
        return sample("x", Normal(0.0, 1.0))


def test_scales_multiply():
    tr = trace(scale(scale(model, scale=2.0), scale=3.0)).get_trace()
    assert tr["x"].scale == 6.0
    weights = torch.tensor([1.0, 2.0, 3.0])
    tr = trace(scale(model, scale=weights)).get_trace()
    tr.compute_log_prob()
    assert torch.allclose(tr["x"].log_prob, weights * tr["x"].unscaled_log_prob)


@pytest.mark.parametrize("bad", [0.0, -1.0, torch.tensor([1.0, -1.0]), float("nan")])
def test_scale_must_be_positive(bad):
    with pytest.raises(ValueError):
        scale(model, scale=bad)


def test_masks_combine_by_and():
    first = torch.tensor([True, True, False])
    second = torch.tensor([True, False, True])
    tr = trace(mask(mask(model, mask=first), mask=second)).get_trace()
    assert tr["x"].mask.tolist() == [True, False, False]
    assert tr.batch_log_prob(["data"]).ne(0).tolist() == [True, False, False]
    assert trace(mask(model, mask=False)).get_trace().log_prob_sum() == 0
    tr = trace(mask(model, mask=True)).get_trace()
    assert tr.log_prob_sum() != 0


def test_mask_must_be_boolean():
    with pytest.raises(TypeError, match=r"bool.*x > 0"):
        mask(model, mask=torch.ones(3))
    with pytest.raises(TypeError, match="bool"):
        mask(model, mask=1)
