r"""The NB log-likelihood of scVI's decoder straight from its logits, as one autograd node.

scVI's mean is ``μ_g = ℓ softmax(a)_g`` with decoder logits ``a``. Summed over genes,

.. math::

    \sum_g \log \mathrm{NB}(x_g; μ_g, θ_g) = \sum_g θ_g \log θ_g
        - \sum_g (θ_g + x_g) \log(θ_g + μ_g)
        + n (\log ℓ - \mathrm{lse}(a)) + \sum_g x_g a_g + Γ(x, θ)

with ``n = Σ_g x_g`` and ``Γ`` the gamma terms (:func:`~sbi_vi.singlecell.distributions.
_gamma_terms`, added by the caller): ``Σ_g x_g log μ_g`` needs no logarithm per entry. The
forward pass is one exponential and one logarithm per entry, in place on two buffers; the
backward pass is closed-form:

.. math::

    \frac{∂}{∂a_k} = x_k - r_k + s_k \Big(\sum_g r_g - n\Big), \quad
    \frac{∂}{∂ \log ℓ} = n - \sum_g r_g, \quad
    \frac{∂}{∂θ_g} = \log θ_g + 1 - \log(θ_g + μ_g) - \frac{θ_g + x_g}{θ_g + μ_g},

with ``s = softmax(a)`` and ``r_g = μ_g (θ_g + x_g) / (θ_g + μ_g)``. Against the same sum
through torch's softmax and autograd this is about 2× cheaper in the forward pass and
saves two ``[*, G]`` tensors instead of about eight for the backward one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["softmax_nb_log_likelihood"]

_EPS = 1e-8  # as in distributions: log(θ + μ + ε) and log(θ + ε)


class _SoftmaxNB(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, logits: Tensor, log_library: Tensor, theta: Tensor) -> Tensor:  # type: ignore[override]
        lead = logits.shape[:-1]
        theta_eps = theta + _EPS
        top = logits.amax(-1, keepdim=True)
        mu = torch.sub(logits, top).exp_()  # the softmax numerator, then μ in place
        total = mu.sum(-1, keepdim=True)
        log_library = log_library.expand(lead).unsqueeze(-1)
        mu.mul_(torch.exp(log_library) / total)
        log_theta_mu = torch.add(mu, theta_eps).log_()
        n = x.sum(-1)
        out = torch.linalg.vecdot(logits, x.expand_as(logits))  # Σ_g x_g a_g
        out -= torch.linalg.vecdot(log_theta_mu, (theta + x).expand_as(logits))
        out += n * (log_library - top - total.log()).squeeze(-1)
        out += (theta * theta_eps.log()).sum(-1)  # Σ_g θ_g log θ_g, at θ's own shape
        ctx.save_for_backward(x, mu, log_theta_mu, log_library, theta)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, mu, log_theta_mu, log_library, theta = ctx.saved_tensors
        need_logits, need_lib, need_theta = ctx.needs_input_grad[1:4]
        grad = grad.unsqueeze(-1)
        theta_x = theta + x
        ratio = torch.add(mu, theta + _EPS)
        torch.div(theta_x.expand_as(ratio), ratio, out=ratio)  # (θ + x) / (θ + μ)
        grad_theta = None
        if need_theta:
            theta_eps = theta + _EPS
            per_entry = theta.div(theta_eps) + theta_eps.log() - log_theta_mu - ratio
            grad_theta = (grad * per_entry).sum_to_size(theta.shape)
        r = ratio.mul_(mu)
        excess = r.sum(-1, keepdim=True) - x.sum(-1, keepdim=True)  # Σ r − n
        grad_logits = grad_lib = None
        if need_logits:
            s = mu.mul(torch.exp(-log_library))
            grad_logits = (s.mul_(excess).add_(x).sub_(r)).mul_(grad)
        if need_lib:
            grad_lib = (excess * grad).squeeze(-1).neg_()
        return None, grad_logits, grad_lib, grad_theta


def softmax_nb_log_likelihood(
    x: Tensor, logits: Tensor, log_library: Tensor, theta: Tensor
) -> Tensor:
    """``Σ_g log NB(x_g; ℓ softmax(logits)_g, θ_g)`` without the gamma terms.

    Args:
        x: Counts ``[B, G]`` (or broadcastable to ``logits``); no gradient.
        logits: Decoder logits ``[*S, B, G]``.
        log_library: ``log ℓ``, broadcastable to ``[*S, B]``.
        theta: Inverse dispersion, broadcastable to ``logits`` (``[G]``, ``[B, G]``, ...).

    Returns:
        ``[*S, B]``; add ``_gamma_terms(x, θ)`` for the log-likelihood.

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
    return _SoftmaxNB.apply(x, logits, log_library.expand(lead), theta)
