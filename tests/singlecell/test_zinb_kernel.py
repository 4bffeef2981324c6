"""The compiled ZINB kernel (no gradients, float32, CPU) against the exact form in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sbi_vi.singlecell.softmax_nb import _zinb_terms, softmax_nb_log_likelihood
from sbi_vi.singlecell.zinb_kernel import zinb_log_likelihood_cpu


def _inputs(s, b, g, theta_shape, library_shape, zi_scale=3.0, zi_shift=-1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(s, b, g, generator=gen) * 1.5
    mu = logits[0].softmax(-1) * 5_000
    x = torch.poisson(mu.clamp(max=300), generator=gen)
    x[torch.rand(b, g, generator=gen) < 0.3] = 0.0
    log_library = torch.randn(*library_shape, generator=gen) * 0.2 + 8.0
    theta = torch.rand(*theta_shape, generator=gen) * 5 + 0.05
    zi = torch.randn(s, b, g, generator=gen) * zi_scale + zi_shift
    return x, logits, log_library, theta, zi


def _exact(x, logits, log_library, theta, zi):
    double = (t.double() for t in (x, logits, log_library, theta, zi))
    x, logits, log_library, theta, zi = double
    return _zinb_terms(x, logits, log_library.expand(logits.shape[:-1]), theta, zi)[0]


def _float32_error(exact, *inputs):
    """The error of the torch autograd form in float32 (the yardstick)."""
    x, logits, log_library, theta, zi = inputs
    lib = log_library.expand(logits.shape[:-1])
    return (_zinb_terms(x, logits, lib, theta, zi)[0].double() - exact).abs()


@pytest.mark.parametrize(
    ("theta_shape", "library_shape"),
    [((40,), (6,)), ((6, 40), (6,)), ((3, 6, 40), (3, 6)), ((1, 40), (3, 1))],
)
def test_kernel_matches_the_exact_form(theta_shape, library_shape):
    inputs = _inputs(3, 6, 40, theta_shape, library_shape)
    kernel = zinb_log_likelihood_cpu(*inputs)
    assert kernel is not None and kernel.shape == (3, 6) and kernel.dtype == torch.float32
    exact = _exact(*inputs)
    error = (kernel.double() - exact).abs()
    assert error.max() <= 2 * _float32_error(exact, *inputs).max() + 1e-3


@pytest.mark.parametrize("zi_shift", [-150.0, -30.0, 30.0, 150.0])
def test_kernel_is_exact_where_the_mixture_leaves_float_range(zi_shift):
    # e^{±π} and NB(0) under/overflow in float32: the stable form needs no fallback
    inputs = _inputs(2, 5, 30, (30,), (5,), zi_scale=1.0, zi_shift=zi_shift, seed=1)
    kernel = zinb_log_likelihood_cpu(*inputs)
    assert torch.isfinite(kernel).all()
    exact = _exact(*inputs)
    torch.testing.assert_close(kernel.double(), exact, rtol=2e-6, atol=1e-3)


def test_kernel_reads_column_blocks_of_one_wider_matrix():
    # the decoder's stacked heads give logits and π as the two halves of one [N, 2G] output
    x, logits, log_library, theta, zi = _inputs(2, 5, 30, (30,), (5,), seed=2)
    wide = torch.cat([logits, zi], -1)
    split = zinb_log_likelihood_cpu(x, wide[..., :30], log_library, theta, wide[..., 30:])
    contiguous = zinb_log_likelihood_cpu(x, logits, log_library, theta, zi)
    torch.testing.assert_close(split, contiguous, rtol=0, atol=0)


def test_rows_split_over_threads_give_the_same_numbers():
    inputs = _inputs(8, 16, 50, (50,), (16,), seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = zinb_log_likelihood_cpu(*inputs)
        torch.set_num_threads(4)
        four = zinb_log_likelihood_cpu(*inputs)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, four, rtol=0, atol=0)


def test_non_finite_inputs_give_the_exact_forms_answer():
    x, logits, log_library, theta, zi = _inputs(2, 4, 20, (20,), (4,), seed=4)
    logits[0, 1, 3] = float("nan")
    zi[1, 2, 5] = float("nan")
    kernel = zinb_log_likelihood_cpu(x, logits, log_library, theta, zi)
    assert torch.isnan(kernel[0, 1]) and torch.isnan(kernel[1, 2])
    with torch.no_grad():
        value = softmax_nb_log_likelihood(x, logits, log_library, theta, zi)
    reference = _zinb_terms(x, logits, log_library.expand(2, 4), theta, zi)[0]
    torch.testing.assert_close(value, reference, equal_nan=True)


def test_kernel_declines_what_it_does_not_cover():
    x, logits, log_library, theta, zi = _inputs(2, 4, 20, (20,), (4,), seed=5)
    assert zinb_log_likelihood_cpu(x.double(), logits.double(), log_library, theta, zi) is None
    with torch.enable_grad():
        assert zinb_log_likelihood_cpu(x, logits.requires_grad_(), log_library, theta, zi) is None
    assert zinb_log_likelihood_cpu(x[:2], logits, log_library, theta, zi) is None  # shapes


def test_exp_and_log_polynomials_are_float32_accurate():
    import numba

    from sbi_vi.singlecell._zinb_numba import exp32, log32

    @numba.njit
    def apply(values, out_exp, out_log):  # pragma: no cover - compiled
        for i in range(values.shape[0]):
            out_exp[i] = exp32(-values[i])
            out_log[i] = log32(values[i])

    values = np.linspace(0, 87, 200_001, dtype=np.float32)  # e^{-v}: relative error
    out_exp, out_log = np.empty_like(values), np.empty_like(values)
    apply(values, out_exp, out_log)
    assert np.abs(out_exp / np.exp(-values.astype(np.float64)) - 1).max() < 3e-7
    values = np.geomspace(1e-37, 1e37, 200_001).astype(np.float32)
    apply(values, out_exp, out_log)
    exact = np.log(values.astype(np.float64))
    assert (np.abs(out_log - exact) / np.maximum(1.0, np.abs(exact))).max() < 3e-7


@settings(max_examples=25, deadline=None)
@given(
    s=st.integers(1, 3),
    b=st.integers(1, 5),
    g=st.integers(1, 300),
    theta_kind=st.sampled_from(["gene", "cell", "draw"]),
    latent_library=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz_shapes_match_the_exact_form(s, b, g, theta_kind, latent_library, seed):
    theta_shape = {"gene": (g,), "cell": (b, g), "draw": (s, b, g)}[theta_kind]
    inputs = _inputs(s, b, g, theta_shape, (s, b) if latent_library else (b,), seed=seed)
    kernel = zinb_log_likelihood_cpu(*inputs)
    exact = _exact(*inputs)
    assert kernel.shape == (s, b)
    # float32 sums: both forms round at the scale of the counts times the log-means
    counts = inputs[0].sum(-1).max()
    error = (kernel.double() - exact).abs().max()
    assert error <= 2 * _float32_error(exact, *inputs).max() + 1e-3 + 1e-6 * counts
