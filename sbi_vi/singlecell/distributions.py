r"""Count likelihoods of the decoder: negative binomial, zero-inflated NB, Poisson.

All three are torch ``Distribution`` objects over counts ``x`` of shape ``[*, G]`` with
parameters of the same (broadcastable) shape, parametrised as scVI does: the mean ``mu``
(``px_rate``), the inverse dispersion ``theta`` (``px_r``, the NB "size": variance
``mu + mu² / theta``) and, for ZINB, the logits of the zero-inflation probability
(``px_dropout``). ``log_prob`` is element-wise (sum over genes is the caller's).

.. math::

    \log \mathrm{NB}(x; \mu, \theta) = \log\Gamma(x + \theta) - \log\Gamma(\theta)
        - \log\Gamma(x + 1) + \theta \log\frac{\theta}{\theta + \mu}
        + x \log\frac{\mu}{\theta + \mu}

With ``π`` the zero-inflation logits, ``ZINB(0) = σ(π) + σ(−π) NB(0)`` and
``ZINB(x > 0) = σ(−π) NB(x)``, evaluated as ``logaddexp(π, θ log(θ / (θ + μ))) −
softplus(π)`` and ``−softplus(π) + log NB(x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Size, Tensor
from torch.distributions import Distribution, Gamma, constraints
from torch.distributions import Poisson as _TorchPoisson

__all__ = [
    "NegativeBinomial",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
    "log_nb",
    "log_zinb",
    "nb_log_likelihood",
]

_EPS = 1e-8


def log_nb(x: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    """Element-wise log NB(x; mean ``mu``, inverse dispersion ``theta``).

    Example:
        >>> float(log_nb(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0)).exp())
        0.5
    """
    log_theta_mu = torch.log(theta + mu + _EPS)
    return (
        theta * (torch.log(theta + _EPS) - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


def log_zinb(x: Tensor, mu: Tensor, theta: Tensor, zi_logits: Tensor) -> Tensor:
    """Element-wise log ZINB(x; ``mu``, ``theta``, zero-inflation logits ``zi_logits``).

    Example:
        >>> x, one = torch.tensor(0.0), torch.tensor(1.0)
        >>> float(log_zinb(x, one, one, torch.tensor(0.0)).exp())  # 0.5 + 0.5 * 0.5
        0.75
    """
    log_theta_mu = torch.log(theta + mu + _EPS)
    log_nb_zero = theta * (torch.log(theta + _EPS) - log_theta_mu)
    softplus_pi = F.softplus(zi_logits)
    zero = torch.logaddexp(zi_logits, log_nb_zero) - softplus_pi
    nonzero = (
        log_nb_zero
        - softplus_pi
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )
    return torch.where(x < _EPS, zero, nonzero)


class NegativeBinomial(Distribution):
    """NB over counts with mean ``mu`` and inverse dispersion ``theta``.

    Args:
        mu: Mean, shape ``[*, G]``, positive.
        theta: Inverse dispersion, broadcastable to ``mu``, positive.
        scale: Optional normalised expression (``px_scale``) kept for the caller.

    Example:
        >>> d = NegativeBinomial(torch.full((2, 3), 4.0), torch.ones(3))
        >>> d.sample((5,)).shape, d.variance[0, 0].item()
        (torch.Size([5, 2, 3]), 20.0)
    """

    arg_constraints = {  # noqa: RUF012
        "mu": constraints.greater_than_eq(0),
        "theta": constraints.greater_than_eq(0),
    }
    support = constraints.nonnegative_integer

    def __init__(self, mu: Tensor, theta: Tensor, scale: Tensor | None = None):
        self._theta = theta  # unbroadcast (per-gene θ keeps its gradient reduction cheap)
        self.mu, self.theta = torch.broadcast_tensors(mu, theta)
        self.scale = scale
        super().__init__(self.mu.shape, validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def variance(self) -> Tensor:
        return self.mu + self.mu.square() / self.theta

    def log_prob(self, value: Tensor) -> Tensor:
        return log_nb(value, self.mu, self.theta)

    def gamma_terms(self, value: Tensor) -> Tensor:
        """The part of ``log_prob_sum`` that does not depend on μ (reusable across draws
        of μ when θ does not depend on them)."""
        return _gamma_terms(value, self._theta)

    def log_prob_sum(self, value: Tensor, *, gamma_terms: Tensor | None = None) -> Tensor:
        """``log_prob(value).sum(-1)`` (``gamma_terms``: from :meth:`gamma_terms`)."""
        return nb_log_likelihood(value, self.mu, self._theta, None, gamma_terms=gamma_terms)

    def _gamma(self) -> Gamma:
        # NB as a Gamma-Poisson mixture: rate ~ Gamma(theta, theta / mu).
        return Gamma(self.theta, self.theta / self.mu.clamp(min=_EPS), validate_args=False)

    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            rate = self._gamma().sample(Size(sample_shape)).clamp(max=1e8)
            return torch.poisson(rate)


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """ZINB: NB(``mu``, ``theta``) with extra zeros of probability ``sigmoid(zi_logits)``.

    Args:
        mu: NB mean, shape ``[*, G]``.
        theta: Inverse dispersion, broadcastable to ``mu``.
        zi_logits: Logits of the zero-inflation probability, broadcastable to ``mu``.
        scale: Optional normalised expression (``px_scale``) kept for the caller.

    Example:
        >>> d = ZeroInflatedNegativeBinomial(torch.ones(3), torch.ones(3), torch.zeros(3))
        >>> d.mean.tolist()
        [0.5, 0.5, 0.5]
    """

    def __init__(self, mu: Tensor, theta: Tensor, zi_logits: Tensor, scale: Tensor | None = None):
        self.zi_logits = torch.broadcast_tensors(mu, zi_logits)[1]
        super().__init__(mu, theta, scale)

    @property
    def zi_probs(self) -> Tensor:
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> Tensor:
        return (1 - self.zi_probs) * self.mu

    @property
    def variance(self) -> Tensor:
        pi = self.zi_probs
        return (1 - pi) * self.mu * (self.mu + self.theta + pi * self.mu * self.theta) / self.theta

    def log_prob(self, value: Tensor) -> Tensor:
        return log_zinb(value, self.mu, self.theta, self.zi_logits)

    def log_prob_sum(self, value: Tensor, *, gamma_terms: Tensor | None = None) -> Tensor:
        """``log_prob(value).sum(-1)`` (``gamma_terms``: from :meth:`gamma_terms`)."""
        return nb_log_likelihood(
            value, self.mu, self._theta, self.zi_logits, gamma_terms=gamma_terms
        )

    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            counts = super().sample(sample_shape)
            zero = torch.rand_like(counts) < self.zi_probs.expand_as(counts)
            return counts.masked_fill(zero, 0.0)


class Poisson(_TorchPoisson):
    """Poisson with rate ``mu`` (torch's, plus the ``mu``/``scale`` names of the others).

    Example:
        >>> Poisson(torch.ones(2)).mu.tolist()
        [1.0, 1.0]
    """

    def __init__(self, mu: Tensor, scale: Tensor | None = None):
        self.scale = scale
        super().__init__(mu, validate_args=False)

    @property
    def mu(self) -> Tensor:
        return self.rate

    def gamma_terms(self, value: Tensor) -> Tensor:
        """``−Σ_g lgamma(x_g + 1)``: the part of ``log_prob_sum`` free of the rate."""
        with torch.no_grad():
            return -torch.lgamma(value + 1).sum(-1)

    def log_prob_sum(self, value: Tensor, *, gamma_terms: Tensor | None = None) -> Tensor:
        """``log_prob(value).sum(-1)``: ``Σ x log μ − μ − lgamma(x + 1)``."""
        rate = self.rate
        if gamma_terms is None:
            gamma_terms = self.gamma_terms(value)
        return (torch.xlogy(value, rate) - rate).sum(-1) + gamma_terms


def _flat_rows(idx: tuple[Tensor, ...], shape: torch.Size) -> Tensor:
    """Row number (over all dims but the last) of ``nonzero(as_tuple=True)`` indices."""
    rows = idx[0]
    for dim, i in enumerate(idx[1:-1], start=1):
        rows = rows * shape[dim] + i
    return rows


def _nonzero_terms(x: Tensor, theta: Tensor) -> Tensor:
    r"""``Σ_g [lgamma(x + θ) − lgamma(θ) − lgamma(x + 1)]`` per row, on the non-zero x only.

    The three terms cancel where ``x = 0``; single-cell counts are mostly zeros, so the
    gamma functions (and their digamma gradients) run on the non-zero entries alone. For
    a θ of any shape broadcastable with ``x`` (per-gene θ takes the table route of
    :func:`_gamma_terms`).
    """
    lead = torch.broadcast_shapes(x.shape, theta.shape)
    idx = (x > 0).expand(lead).nonzero(as_tuple=True)
    xs = x.expand(lead)[idx]
    ts = theta.expand(lead)[idx]
    with torch.no_grad():
        const = torch.lgamma(xs + 1)
    terms = torch.lgamma(xs + ts) - torch.lgamma(ts) - const
    rows = torch.zeros(lead[:-1].numel(), dtype=terms.dtype, device=terms.device)
    return rows.index_add(0, _flat_rows(idx, lead), terms).reshape(lead[:-1])


_TABLE_COUNTS = 32
"""Counts below this read their gamma terms from a per-gene table (see :func:`_gamma_terms`)."""


class _TableRowSums(torch.autograd.Function):
    """``table.flatten()[index].sum(-1)`` with a scatter-add backward (no sorting)."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return table.reshape(-1)[index].sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        weights = grad.unsqueeze(-1).expand(index.shape)
        out = torch.zeros(ctx.table_shape.numel(), dtype=grad.dtype, device=grad.device)
        out.index_add_(0, index.reshape(-1), weights.reshape(-1))
        return out.view(ctx.table_shape), None


def _gamma_terms(x: Tensor, theta: Tensor) -> Tensor:
    r"""``Σ_g [lgamma(x + θ) − lgamma(θ) − lgamma(x + 1)]`` per row of the counts ``x``.

    With one θ per gene (shape ``[G]``) the terms of the counts ``k < 32`` come from a table
    ``T[g, k] = Σ_{j<k} log((θ_g + j) / (j + 1))`` (``[G, 32]``, built by autograd, so its
    gradient is exact): one gather per entry instead of two gamma functions and their
    digamma gradients; larger counts are corrected exactly. Other θ shapes go through
    :func:`_nonzero_terms`. ``x`` must hold whole numbers.
    """
    if theta.dim() != 1:
        return _nonzero_terms(x, theta)
    k = _TABLE_COUNTS
    n_genes = theta.shape[0]
    j = torch.arange(k - 1, dtype=theta.dtype, device=theta.device)
    steps = torch.log(theta.unsqueeze(-1) + j) - torch.log1p(j)
    table = F.pad(torch.cumsum(steps, -1), (1, 0))  # [G, k]; T[g, 0] = 0
    offsets = torch.arange(0, n_genes * k, k, dtype=torch.int64, device=x.device)
    index = x.clamp(max=k - 1).to(torch.int64) + offsets
    sums = _TableRowSums.apply(table, index)
    big = x >= k
    if bool(big.any()):
        idx = big.nonzero(as_tuple=True)
        xs, ts = x[idx], theta[idx[-1]]
        exact = torch.lgamma(xs + ts) - torch.lgamma(ts) - torch.lgamma(xs + 1)
        correction = exact - table[idx[-1], k - 1]
        sums = sums.reshape(-1).index_add(0, _flat_rows(idx, x.shape), correction)
        sums = sums.reshape(x.shape[:-1])
    return sums


def nb_log_likelihood(
    x: Tensor,
    mu: Tensor,
    theta: Tensor,
    zi_logits: Tensor | None = None,
    *,
    gamma_terms: Tensor | None = None,
) -> Tensor:
    """``Σ_g log NB(x_g; μ_g, θ_g)`` (or ZINB with ``zi_logits``) over the last dim.

    The same values as ``log_nb(x, mu, theta).sum(-1)`` (``log_zinb``), with the gamma
    terms from :func:`_gamma_terms` — or ``gamma_terms`` when the caller has them already
    (they depend on x and θ only, so many draws of μ share them).

    Example:
        >>> x, mu, theta = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 3.0]]), torch.ones(2)
        >>> bool(torch.allclose(nb_log_likelihood(x, mu, theta), log_nb(x, mu, theta).sum(-1)))
        True
    """
    log_theta_mu = torch.log(theta + mu + _EPS)
    log_nb_zero = theta * (torch.log(theta + _EPS) - log_theta_mu)  # log NB(0)
    if gamma_terms is None:
        gamma_terms = _gamma_terms(x, theta)  # no particle dims when θ does not depend on z
    x_part = x * (torch.log(mu + _EPS) - log_theta_mu)
    if zi_logits is None:
        return (log_nb_zero + x_part).sum(-1) + gamma_terms
    softplus_pi = F.softplus(zi_logits)
    zero = torch.logaddexp(zi_logits, log_nb_zero)
    per_gene = torch.where(x > 0, log_nb_zero + x_part, zero) - softplus_pi
    return per_gene.sum(-1) + gamma_terms
