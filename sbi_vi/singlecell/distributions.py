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

import math

import torch
import torch.nn.functional as F
from torch import Size, Tensor
from torch.distributions import Distribution, constraints
from torch.distributions import Poisson as _TorchPoisson

from sbi_vi.singlecell.nb_sampling import nb_sample, numpy_generator
from sbi_vi.singlecell.softmax_nb import softmax_nb_log_likelihood

__all__ = [
    "NegativeBinomial",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
    "gamma_sample",
    "log_nb",
    "log_zinb",
    "nb_log_likelihood",
]

_EPS = 1e-8


def _given(value: object) -> str:
    return "None" if value is None else "a tensor"


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


def gamma_sample(concentration: Tensor, rate: Tensor, sample_shape: Size | tuple = ()) -> Tensor:
    """Draws of Gamma(``concentration``, ``rate``), shape ``sample_shape + broadcast shape``.

    On the CPU the standard-gamma draws come from numpy's generator (Marsaglia–Tsang with a
    ziggurat normal; faster than torch's CPU kernel, see ``benchmarks/README.md``), seeded
    by one draw from torch's default generator, so ``torch.manual_seed`` still makes them
    reproducible.
    Elsewhere torch's sampler is used. No gradient.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> draws = gamma_sample(torch.tensor([2.0, 9.0]), torch.tensor([1.0, 3.0]), (20_000,))
        >>> [round(m, 1) for m in draws.mean(0).tolist()]
        [2.0, 3.0]
    """
    shape = Size(sample_shape) + torch.broadcast_shapes(concentration.shape, rate.shape)
    with torch.no_grad():
        alpha = concentration.expand(shape)
        if alpha.device.type != "cpu":
            return torch._standard_gamma(alpha.contiguous()) / rate
        dtype = alpha.dtype if alpha.dtype in (torch.float32, torch.float64) else torch.float64
        values = alpha.detach().to(dtype).contiguous().numpy()
        draws = numpy_generator().standard_gamma(values, dtype=values.dtype)
        return torch.from_numpy(draws).to(rate.dtype).div_(rate)


class NegativeBinomial(Distribution):
    """NB over counts with mean ``mu`` and inverse dispersion ``theta``.

    Args:
        mu: Mean, shape ``[*, G]``, positive; ``None`` with ``logits`` and ``log_library``.
        theta: Inverse dispersion, broadcastable to ``mu``, positive.
        scale: Optional normalised expression (``px_scale``) kept for the caller.
        logits: scVI's decoder logits ``a`` (``[*, G]``): the mean is then
            ``μ = exp(log_library) softmax(a)`` and ``scale`` is ``softmax(a)``, both computed
            on first use, and :meth:`log_prob_sum` never forms them
            (:mod:`~sbi_vi.singlecell.softmax_nb`).
        log_library: ``log ℓ``, broadcastable to ``logits.shape[:-1]`` (with ``logits``).

    Example:
        >>> d = NegativeBinomial(torch.full((2, 3), 4.0), torch.ones(3))
        >>> d.sample((5,)).shape, d.variance[0, 0].item()
        (torch.Size([5, 2, 3]), 20.0)
        >>> a = torch.zeros(2, 3)
        >>> NegativeBinomial(None, torch.ones(3), logits=a, log_library=torch.zeros(2)).mu[0]
        tensor([0.3333, 0.3333, 0.3333])
    """

    arg_constraints = {  # noqa: RUF012
        "mu": constraints.greater_than_eq(0),
        "theta": constraints.greater_than_eq(0),
    }
    support = constraints.nonnegative_integer
    _zero_inflation_logits: Tensor | None = None  # π of the ZINB subclass; None for NB

    def __init__(
        self,
        mu: Tensor | None,
        theta: Tensor,
        scale: Tensor | None = None,
        *,
        logits: Tensor | None = None,
        log_library: Tensor | None = None,
    ):
        if (mu is None) == (logits is None) or (logits is None) != (log_library is None):
            raise ValueError(
                "NegativeBinomial: pass either `mu`, or `logits` and `log_library`; got "
                f"mu={_given(mu)}, logits={_given(logits)}, log_library={_given(log_library)}"
            )
        self._theta = theta  # unbroadcast (per-gene θ keeps its gradient reduction cheap)
        self._mu, self._scale = mu, scale
        self._logits, self._log_library = logits, log_library
        params = mu if logits is None else logits
        super().__init__(torch.broadcast_shapes(params.shape, theta.shape), validate_args=False)

    @property
    def mu(self) -> Tensor:
        if self._mu is None:
            self._mu = torch.exp(self._log_library).unsqueeze(-1) * self.scale
        return self._mu.expand(self.batch_shape)

    @property
    def scale(self) -> Tensor | None:
        if self._scale is None and self._logits is not None:
            self._scale = torch.softmax(self._logits, -1)
        return self._scale

    @property
    def theta(self) -> Tensor:
        return self._theta.expand(self.batch_shape)

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
        zi_logits = self._zero_inflation_logits
        if self._logits is None:
            return nb_log_likelihood(
                value, self.mu, self._theta, zi_logits, gamma_terms=gamma_terms
            )
        if gamma_terms is None:
            gamma_terms = self.gamma_terms(value)
        log_px = softmax_nb_log_likelihood(
            value, self._logits, self._log_library, self._theta, zi_logits
        )
        return log_px + gamma_terms

    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        # Sequential inversion for small means, Gamma-Poisson above (nb_sampling).
        zi_logits = self._zero_inflation_logits
        zi_probs = None if zi_logits is None else torch.sigmoid(zi_logits)
        return nb_sample(self.mu, self._theta, zi_probs, sample_shape)


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

    def __init__(
        self,
        mu: Tensor | None,
        theta: Tensor,
        zi_logits: Tensor,
        scale: Tensor | None = None,
        *,
        logits: Tensor | None = None,
        log_library: Tensor | None = None,
    ):
        super().__init__(mu, theta, scale, logits=logits, log_library=log_library)
        self.zi_logits = self._zero_inflation_logits = zi_logits.expand(self.batch_shape)

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


class _PerGeneGammaRowSums(torch.autograd.Function):
    r"""``Σ_g T[g, k_g]`` per row for ``T[g, k] = lgamma(θ_g + k) − lgamma(θ_g) − lgamma(k + 1)``.

    ``T`` (``[G, K]``) is built as ``Σ_{j<k} log((θ_g + j) / (j + 1))`` and read with one
    ``index_select`` of the flat offsets ``index`` (``[*, G]``, ``g K + k_g``). The gradient
    is closed-form: ``∂T[g, k] / ∂θ_g = ψ(θ_g + k) − ψ(θ_g) = Σ_{j<k} 1 / (θ_g + j)``, read
    from a second table with the same index and summed over rows by one matrix product.
    """

    @staticmethod
    def _table(steps: Tensor) -> Tensor:
        return F.pad(torch.cumsum(steps, -1), (1, 0))  # [G, K]; column 0 is 0

    @staticmethod
    def forward(ctx, theta: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        j = torch.arange(_TABLE_COUNTS - 1, dtype=theta.dtype, device=theta.device)
        shifted = theta.unsqueeze(-1) + j  # θ_g + j
        table = _PerGeneGammaRowSums._table(torch.log(shifted) - torch.log1p(j))
        ctx.save_for_backward(shifted, index)
        return table.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        shifted, index = ctx.saved_tensors
        digamma_steps = _PerGeneGammaRowSums._table(shifted.reciprocal())
        read = digamma_steps.reshape(-1).index_select(0, index.reshape(-1))
        grad_theta = grad.reshape(1, -1) @ read.view(-1, index.shape[-1])
        return grad_theta.view(-1), None


def _gamma_terms(x: Tensor, theta: Tensor) -> Tensor:
    r"""``Σ_g [lgamma(x + θ) − lgamma(θ) − lgamma(x + 1)]`` per row of the counts ``x``.

    With one θ per gene (shape ``[G]``) the terms of the counts ``k < 32`` come from a table
    (:class:`_PerGeneGammaRowSums`): one gather per entry instead of two gamma functions
    and their digamma gradients; larger counts are corrected exactly (autograd on those
    entries only). Other θ shapes go through :func:`_nonzero_terms`. ``x`` must hold
    whole numbers. Off the CPU the three gamma functions run on every entry: both shortcuts
    read sizes back to the host (``nonzero``), a synchronisation per training step there.
    """
    if x.device.type != "cpu":
        return (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)).sum(-1)
    if theta.dim() != 1:
        return _nonzero_terms(x, theta)
    k = _TABLE_COUNTS
    n_genes = theta.shape[0]
    offsets = torch.arange(0, n_genes * k, k, dtype=x.dtype, device=x.device)
    index = x.clamp(max=k - 1).add_(offsets).to(torch.int64)
    sums = _PerGeneGammaRowSums.apply(theta, index)
    if x.numel() == 0:
        return sums
    genes = (x.reshape(-1, n_genes).amax(0) >= k).nonzero().squeeze(-1)  # the few deep genes
    if genes.numel():
        deep = x.index_select(-1, genes)
        idx = (deep >= k).nonzero(as_tuple=True)
        xs, ts = deep[idx], theta[genes[idx[-1]]]
        # exact − T[g, k − 1], with T[g, k − 1] = lgamma(θ + k − 1) − lgamma(θ) − lgamma(k)
        correction = (
            torch.lgamma(xs + ts) - torch.lgamma(xs + 1) - torch.lgamma(ts + (k - 1))
        ) + math.lgamma(k)
        sums = sums.reshape(-1).index_add(0, _flat_rows(idx, deep.shape), correction)
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
