r"""The NB log-likelihood of scVI's decoder straight from its logits, as one autograd node.

scVI's mean is ``μ_g = ℓ softmax(a)_g`` with decoder logits ``a``. Summed over genes,

.. math::

    \sum_g \log \mathrm{NB}(x_g; μ_g, θ_g) = \sum_g θ_g \log θ_g
        - \sum_g (θ_g + x_g) \log(θ_g + μ_g)
        + n (\log ℓ - \mathrm{lse}(a)) + \sum_g x_g a_g + Γ(x, θ)

with ``n = Σ_g x_g`` and ``Γ`` the gamma terms (``distributions._gamma_terms``, added by
the caller): ``Σ_g x_g log μ_g`` needs no logarithm per entry. The
forward pass is one exponential and one logarithm per entry, in place on two buffers; the
backward pass is closed-form:

.. math::

    \frac{∂}{∂a_k} = x_k - r_k + s_k \Big(\sum_g r_g - n\Big), \quad
    \frac{∂}{∂ \log ℓ} = n - \sum_g r_g, \quad
    \frac{∂}{∂θ_g} = \log θ_g + 1 - \log(θ_g + μ_g) - \frac{θ_g + x_g}{θ_g + μ_g},

with ``s = softmax(a)`` and ``r_g = μ_g (θ_g + x_g) / (θ_g + μ_g)``. Against the same sum
through torch's softmax and autograd this is about 2× cheaper in the forward pass and
saves two ``[*, G]`` tensors instead of about eight for the backward one. The ZINB
likelihood (``zi_logits``) is the same node with the zero-inflation mixture added: a
training step of the default ZINB model (128 cells × 2,000 genes) is about 20 % cheaper
than through torch's autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sbi_vi.singlecell.zinb_kernel import zinb_log_likelihood_cpu

__all__ = ["softmax_nb_log_likelihood"]

_EPS = 1e-8  # as in distributions: log(θ + μ + ε) and log(θ + ε)


def _mean_terms(x: Tensor, logits: Tensor, log_library: Tensor, theta_eps: Tensor):
    """``μ = ℓ softmax(a)``, ``log(θ + μ)``, ``Σ_g x_g log μ_g``: one exp, one log per entry."""
    top = logits.amax(-1, keepdim=True)
    mu = torch.softmax(logits, -1)  # torch's fused row kernel, then μ in place
    # lse(a) = top − log softmax(a)_argmax, and softmax at the argmax is its row maximum
    log_norm = mu.amax(-1, keepdim=True).log_().sub_(top)  # −lse(a)
    mu.mul_(torch.exp(log_library))
    log_theta_mu = torch.add(mu, theta_eps).log_()
    x_log_mu = torch.linalg.vecdot(logits, x.expand_as(logits))  # Σ_g x_g a_g
    x_log_mu += x.sum(-1) * (log_library + log_norm).squeeze(-1)
    return mu, log_theta_mu, x_log_mu


def _mean_grads(x, mu, log_library, weight_over_theta_mu, grad, need_logits, need_lib):
    """Gradients of ``Σ_g x_g log μ_g − Σ_g c_g log(θ_g + μ_g)`` in the logits and ``log ℓ``
    from ``c / (θ + μ)`` (overwritten with ``r = c μ / (θ + μ)``)."""
    r = weight_over_theta_mu.mul_(mu)
    excess = r.sum(-1, keepdim=True) - x.sum(-1, keepdim=True)  # Σ r − n
    grad_logits = grad_lib = None
    if need_logits:
        s = mu.mul(torch.exp(-log_library))
        grad_logits = (s.mul_(excess).add_(x).sub_(r)).mul_(grad)
    if need_lib:
        grad_lib = (excess * grad).squeeze(-1).neg_()
    return grad_logits, grad_lib


class _SoftmaxNB(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, logits: Tensor, log_library: Tensor, theta: Tensor) -> Tensor:  # type: ignore[override]
        theta_eps = theta + _EPS
        log_library = log_library.expand(logits.shape[:-1]).unsqueeze(-1)
        mu, log_theta_mu, out = _mean_terms(x, logits, log_library, theta_eps)
        out -= torch.linalg.vecdot(log_theta_mu, (theta + x).expand_as(logits))
        out += (theta * theta_eps.log()).sum(-1)  # Σ_g θ_g log θ_g, at θ's own shape
        ctx.save_for_backward(x, mu, log_theta_mu, log_library, theta)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, mu, log_theta_mu, log_library, theta = ctx.saved_tensors
        need_logits, need_lib, need_theta = ctx.needs_input_grad[1:4]
        grad = grad.unsqueeze(-1)
        theta_eps = theta + _EPS
        ratio = torch.add(mu, theta_eps)
        torch.div((theta + x).expand_as(ratio), ratio, out=ratio)  # (θ + x) / (θ + μ)
        grad_theta = None
        if need_theta:
            per_entry = theta.div(theta_eps) + theta_eps.log() - log_theta_mu - ratio
            grad_theta = (grad * per_entry).sum_to_size(theta.shape)
        grad_logits, grad_lib = _mean_grads(x, mu, log_library, ratio, grad, need_logits, need_lib)
        return None, grad_logits, grad_lib, grad_theta


def _zinb_terms(x, logits, log_library, theta, zi_logits):
    """:class:`_SoftmaxZINB`'s sum and the tensors its backward pass needs."""
    theta_eps = theta + _EPS
    log_library = log_library.expand(logits.shape[:-1]).unsqueeze(-1)
    mu, log_theta_mu, out = _mean_terms(x, logits, log_library, theta_eps)
    log_nb_zero = torch.sub(theta_eps.log(), log_theta_mu).mul_(theta)
    log_zero = torch.logaddexp(zi_logits, log_nb_zero)  # log ZINB(0) + softplus(π)
    nb_share = torch.sub(log_nb_zero, log_zero).exp_()  # w₀
    # [x > 0] as 0/1 floats (x holds whole counts); blends by arithmetic, since torch's
    # CPU `where` / `masked_fill` cost about 7x an `addcmul` here
    positive = x.clamp(max=1.0)
    nonzero_body = log_nb_zero.addcmul_(x, log_theta_mu, value=-1).sub_(log_zero)
    body = log_zero.addcmul_(positive, nonzero_body).sub_(F.softplus(zi_logits))
    out += body.sum(-1)
    return out, (x, mu, log_theta_mu, log_library, theta, zi_logits, nb_share, positive)


class _SoftmaxZINB(torch.autograd.Function):
    r"""ZINB: per gene ``−softplus(π) + [x > 0](θ log θ − (θ + x) log(θ + μ)) +
    [x = 0] logaddexp(π, θ log θ − θ log(θ + μ))``, plus ``Σ_g x_g log μ_g``.

    With ``w₀ = σ(log NB(0) − π)`` the NB share of a zero and ``m = [x > 0] + [x = 0] w₀``,
    ``c = θ m + x`` takes the place of NB's ``θ + x`` in the mean's gradient, ``∂/∂θ =
    m (log θ + 1 − log(θ + μ)) − c / (θ + μ)`` and ``∂/∂π = [x = 0](1 − w₀) − σ(π)``.
    """

    @staticmethod
    def forward(ctx, x, logits, log_library, theta, zi_logits):  # type: ignore[override]
        out, saved = _zinb_terms(x, logits, log_library, theta, zi_logits)
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, mu, log_theta_mu, log_library, theta, zi_logits, nb_share, positive = ctx.saved_tensors
        need_logits, need_lib, need_theta, need_zi = ctx.needs_input_grad[1:5]
        grad = grad.unsqueeze(-1)
        zero = 1.0 - positive
        theta_eps = theta + _EPS
        m = torch.addcmul(positive, zero, nb_share)  # 1 where x > 0, else w₀
        weight = torch.addcmul(x, theta, m)  # c = θ m + x
        ratio = torch.add(mu, theta_eps)
        torch.div(weight, ratio, out=ratio)  # c / (θ + μ)
        grad_theta = grad_zi = None
        if need_theta:
            per_entry = (theta.div(theta_eps) + theta_eps.log() - log_theta_mu).mul_(m) - ratio
            grad_theta = (grad * per_entry).sum_to_size(theta.shape)
        if need_zi:
            zero_part = torch.addcmul(zero, zero, nb_share, value=-1)  # [x = 0](1 − w₀)
            grad_zi = zero_part.sub_(torch.sigmoid(zi_logits)).mul_(grad)
            grad_zi = grad_zi.sum_to_size(zi_logits.shape)
        grad_logits, grad_lib = _mean_grads(x, mu, log_library, ratio, grad, need_logits, need_lib)
        return None, grad_logits, grad_lib, grad_theta, grad_zi


_TINY = 1e-30  # below this a ZINB probability is recomputed by the exact autograd form


def _zinb_forward(x: Tensor, logits: Tensor, log_library: Tensor, theta: Tensor, zi_logits):
    r"""The ZINB sum of :class:`_SoftmaxZINB` for inference: no gradient, fewer passes.

    Per gene, with ``L = θ log θ − θ log(θ + μ)`` (log NB(0)), the mixture's probability is
    ``q = σ(π) (1 + e^{L − π})`` at a zero and ``σ(π) e^{−π}`` (``= σ(−π)``) otherwise, so
    the sum is ``Σ_g [log q + [x > 0](L − x log(θ + μ))]``: one exponential, one sigmoid and
    one logarithm per entry where the autograd form needs ``logaddexp``, ``softplus`` and
    the exponential of ``w₀`` (each of the first two about 3× an ``exp`` on the CPU), and
    nothing is kept for a backward pass. Both forms of ``q`` are products of
    non-negative terms, exact to float rounding until ``e^{±π}`` or ``e^L`` leave the float
    range; a block with any ``q`` below ``1e-30`` or a non-finite sum is recomputed by
    :class:`_SoftmaxZINB`'s forward.
    """
    theta_eps = theta + _EPS
    lead = logits.shape[:-1]
    log_library = log_library.expand(lead).unsqueeze(-1)
    top = logits.amax(-1, keepdim=True)
    scale = torch.softmax(logits, -1)
    log_norm = scale.amax(-1, keepdim=True).log_().sub_(top)  # −lse(a), as in _mean_terms
    out = torch.linalg.vecdot(logits, x.expand_as(logits))  # Σ_g x_g a_g
    out += x.sum(-1) * (log_library + log_norm).squeeze(-1)
    log_theta_mu = scale.mul_(torch.exp(log_library)).add_(theta_eps).log_()  # in place
    log_nb_zero = torch.addcmul(theta * theta_eps.log(), theta, log_theta_mu, value=-1)  # L
    positive = x.clamp(max=1.0)  # [x > 0] as 0/1 floats (whole counts)
    zero = 1.0 - positive
    rest = log_theta_mu.mul_(x).addcmul_(positive, log_nb_zero, value=-1)  # x P − [x>0] L
    # e^{[x = 0] L − π} + [x = 0], times σ(π). The exponent is clamped at −80: below, exp
    # returns subnormals at ~40x the cost of a normal result; a zero's q is 1 + e^{−80} = 1
    # in float32 either way, and a positive count's falls below _TINY (exact form below).
    exponent = log_nb_zero.mul_(zero).sub_(zi_logits).clamp_(min=-80.0)
    q = exponent.exp_().add_(zero).mul_(torch.sigmoid(zi_logits))
    if bool(q.amin() >= _TINY):
        out += q.log_().sub_(rest).sum(-1)
        if bool(torch.isfinite(out).all()):
            return out
    # e^{±π} or e^L out of float range somewhere (or NaN): the exact form
    return _zinb_terms(x, logits, log_library.squeeze(-1), theta, zi_logits)[0]


def softmax_nb_log_likelihood(
    x: Tensor,
    logits: Tensor,
    log_library: Tensor,
    theta: Tensor,
    zi_logits: Tensor | None = None,
) -> Tensor:
    """``Σ_g log NB(x_g; ℓ softmax(logits)_g, θ_g)`` (ZINB with ``zi_logits``) without the
    gamma terms.

    Args:
        x: Counts ``[B, G]`` (or broadcastable to ``logits``); no gradient.
        logits: Decoder logits ``[*S, B, G]``.
        log_library: ``log ℓ``, broadcastable to ``[*S, B]``.
        theta: Inverse dispersion, broadcastable to ``logits`` (``[G]``, ``[B, G]``, ...).
        zi_logits: Zero-inflation logits ``π``, the shape of ``logits`` (ZINB), or ``None``.

    Returns:
        ``[*S, B]``; add ``_gamma_terms(x, θ)`` for the log-likelihood. Without gradients,
        float32 ZINB on the CPU is one compiled kernel
        (:mod:`~sbi_vi.singlecell.zinb_kernel`), other ZINB inference :func:`_zinb_forward`.

    Example:
        >>> from sbi_vi.singlecell.distributions import log_nb
        >>> x, a, theta = torch.tensor([[0.0, 3.0]]), torch.tensor([[0.2, -0.1]]), torch.ones(2)
        >>> lib = torch.tensor([1.5])
        >>> gamma = torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
        >>> ref = (log_nb(x, lib.exp() * a.softmax(-1), theta) - gamma).sum(-1)
        >>> abs(float(softmax_nb_log_likelihood(x, a, lib, theta) - ref)) < 1e-5
        True
    """
    lead = logits.shape[:-1]
    if zi_logits is None:
        return _SoftmaxNB.apply(x, logits, log_library.expand(lead), theta)
    inputs = (logits, log_library, theta, zi_logits)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _SoftmaxZINB.apply(x, logits, log_library.expand(lead), theta, zi_logits)
    out = zinb_log_likelihood_cpu(x, logits, log_library, theta, zi_logits)
    if out is not None and bool(torch.isfinite(out).all()):
        return out
    return _zinb_forward(x, logits, log_library, theta, zi_logits)
