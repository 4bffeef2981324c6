"""The inversion sampler of NB / ZINB counts against scipy's pmf, its broadcasting and seeds."""

import numpy as np
import pytest
import torch
from scipy import stats

from sbi_vi.singlecell.nb_sampling import INVERSION_MAX_MEAN, _gamma_poisson_sample, nb_sample

# (μ, θ, π): tiny and moderate means, both sides of the inversion's limit, heavy and light
# over-dispersion, with and without zero inflation.
CASES = [
    (1e-3, 2.0, 0.0),
    (0.3, 0.05, 0.0),
    (0.7, 3.0, 0.0),
    (2.5, 1e4, 0.0),
    (6.0, 0.5, 0.2),
    (INVERSION_MAX_MEAN * 0.99, 4.0, 0.0),
    (INVERSION_MAX_MEAN, 4.0, 0.3),
    (40.0, 2.0, 0.0),
    (40.0, 0.1, 0.5),
]


def _pmf(k: np.ndarray, mu: float, theta: float, pi: float) -> np.ndarray:
    pmf = stats.nbinom.pmf(k, theta, theta / (theta + mu))
    return (1 - pi) * pmf + pi * (k == 0)


def _chi_square_pvalue(draws: np.ndarray, mu: float, theta: float, pi: float) -> float:
    n = draws.size
    top = int(draws.max())
    k = np.arange(top + 1)
    expected = _pmf(k, mu, theta, pi) * n
    observed = np.bincount(draws.astype(np.int64), minlength=top + 1).astype(float)
    # Merge the right tail into one bin holding at least 5 expected draws, and put the
    # mass beyond the largest draw into it.
    expected[-1] += n * (1 - _pmf(k, mu, theta, pi).sum())
    while len(expected) > 2 and expected[-1] < 5:
        expected[-2] += expected[-1]
        observed[-2] += observed[-1]
        expected, observed = expected[:-1], observed[:-1]
    keep = expected >= 5
    rest_e, rest_o = expected[~keep].sum(), observed[~keep].sum()
    expected, observed = expected[keep], observed[keep]
    if rest_e > 0:
        expected, observed = np.append(expected, rest_e), np.append(observed, rest_o)
    if len(expected) < 2:
        return 1.0
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


@pytest.mark.parametrize("sampler", ["inversion", "gamma_poisson"])
def test_draws_follow_the_nb_and_zinb_pmf(sampler):
    mu, theta, pi = (torch.tensor(column, dtype=torch.float32) for column in zip(*CASES))
    torch.manual_seed(0)
    if sampler == "inversion":
        draws = nb_sample(mu, theta, pi, (60_000,))
    else:
        draws = _gamma_poisson_sample(mu, theta, pi, torch.Size((60_000, len(CASES))))
    assert draws.shape == (60_000, len(CASES)) and draws.dtype == torch.float32
    draws = draws.numpy()
    assert np.all(draws == np.round(draws)) and draws.min() >= 0
    pvalues = [_chi_square_pvalue(draws[:, j], *case) for j, case in enumerate(CASES)]
    # Nine tests at once: a correct sampler fails one at 1e-4 with probability < 1e-3.
    assert min(pvalues) > 1e-4, dict(zip(CASES, np.round(pvalues, 6)))
    means = draws.mean(0)
    expected = [(1 - p) * m for m, _, p in CASES]
    np.testing.assert_allclose(means, expected, rtol=0.05, atol=2e-3)


def test_broadcast_parameters_give_the_draws_of_their_materialised_copies():
    g = torch.Generator().manual_seed(1)
    mu = torch.rand(3, 4, 7, generator=g) * 20
    cases = [
        (torch.rand(7, generator=g) + 0.5, None),
        (torch.rand(4, 7, generator=g) + 0.5, torch.rand(7, generator=g) * 0.5),
        (torch.rand(3, 1, 7, generator=g) + 0.5, torch.rand(4, 1, generator=g) * 0.5),
        (torch.tensor(2.0), torch.rand(3, 4, 7, generator=g) * 0.5),
    ]
    for theta, zi in cases:
        full_theta = theta.expand(mu.shape).contiguous()
        full_zi = None if zi is None else zi.expand(mu.shape).contiguous()
        torch.manual_seed(5)
        broadcast = nb_sample(mu, theta, zi, (2,))
        torch.manual_seed(5)
        materialised = nb_sample(mu, full_theta, full_zi, (2,))
        assert broadcast.shape == (2, 3, 4, 7)
        torch.testing.assert_close(broadcast, materialised, rtol=0, atol=0)


def test_seed_reproduces_draws_and_dtype_follows_mu():
    mu = torch.tensor([[0.2, 3.0, 30.0]], dtype=torch.float64)
    theta = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.manual_seed(3)
    first = nb_sample(mu, theta, None, (500,))
    torch.manual_seed(3)
    again = nb_sample(mu, theta, None, (500,))
    assert first.dtype == torch.float64
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(nb_sample(mu, theta, None, (500,)), first)


def test_zero_and_nan_means():
    mu = torch.tensor([0.0, float("nan"), 1.0])
    draws = nb_sample(mu, torch.ones(3), None, (1_000,))
    assert torch.all(draws[:, 0] == 0)
    assert torch.all(torch.isnan(draws[:, 1]))
    assert torch.isfinite(draws[:, 2]).all() and draws[:, 2].max() > 0
    assert nb_sample(torch.ones(0, 3), torch.ones(3)).shape == (0, 3)
    assert nb_sample(torch.tensor(2.0), torch.tensor(1.0), None, ()).shape == ()


def test_draws_do_not_depend_on_the_block_and_chunk_sizes(monkeypatch):
    # Uniforms come in blocks and the search runs in cache-sized chunks of rows; the row
    # offsets of both must keep each entry on its own θ / π row and its own uniform.
    from sbi_vi.singlecell import nb_sampling

    g = torch.Generator().manual_seed(2)
    mu = torch.rand(6, 5, 9, generator=g) * 40  # some entries past the inversion's limit
    theta = torch.rand(5, 9, generator=g) + 0.3
    zi = torch.rand(5, 1, generator=g) * 0.4
    torch.manual_seed(7)
    whole = nb_sample(mu, theta, zi, (3,))
    monkeypatch.setattr(nb_sampling, "_BLOCK", 4 * 9)  # 4 rows a block, 90 rows in all
    monkeypatch.setattr(nb_sampling, "_CHUNK", 3 * 9)  # 3 rows a chunk: chunks straddle
    torch.manual_seed(7)
    pieces = nb_sample(mu, theta, zi, (3,))
    torch.testing.assert_close(pieces, whole, rtol=0, atol=0)
    # Broadcast parameters and their materialised copies agree across blocks too.
    torch.manual_seed(7)
    full = nb_sample(mu, theta.expand(6, 5, 9).contiguous(), zi.expand(6, 5, 9), (3,))
    torch.testing.assert_close(full, whole, rtol=0, atol=0)


def test_certain_zero_inflation_and_long_searches():
    # π = 1 gives only zeros; a Poisson-like NB just below the limit needs many passes.
    mu = torch.tensor([5.0, INVERSION_MAX_MEAN - 0.5])
    theta = torch.tensor([1.0, 1e6])
    zi = torch.tensor([1.0, 0.0])
    torch.manual_seed(0)
    draws = nb_sample(mu, theta, zi, (40_000,)).numpy()
    assert np.all(draws[:, 0] == 0)
    assert _chi_square_pvalue(draws[:, 1], float(mu[1]), 1e6, 0.0) > 1e-4
