"""Potentials: θ ``[*, D]`` → log p̃(θ | x_o) ``[*]``, the targets of VI.

A potential holds the prior and the observation ``x_o`` (``set_x``). With
``x_is_iid=True`` (default) the rows of ``x_o`` are iid observations of one θ and their
log-likelihoods sum; with ``x_is_iid=False`` the rows are different observations and θ's
last batch dim is paired with them (amortised VI), giving ``[*, B]``.
"""

from __future__ import annotations

import abc
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from sbi_vi._checks import as_tensor

__all__ = ["BasePotential", "CustomPotential", "EstimatorPotential"]


@runtime_checkable
class CustomPotential(Protocol):
    """A plain function ``(theta [*, D], x_o [N, L]) -> log p̃(θ | x_o) [*]``."""

    def __call__(self, theta: Tensor, x_o: Tensor) -> Tensor: ...


class BasePotential(abc.ABC):
    """Base class of potentials.

    Args:
        prior: The prior; its ``log_prob`` is part of the potential (subclasses decide).
        x_o: Observation(s), shape ``[L]`` or ``[N, L]``; may be set later with ``set_x``.
        device: Device of θ and x.
    """

    def __init__(self, prior: object | None, x_o: Tensor | None = None, device: str = "cpu"):
        self.prior = prior
        self.device = device
        self._x_o: Tensor | None = None
        self.x_is_iid = True
        if x_o is not None:
            self.set_x(x_o)

    @property
    def x_o(self) -> Tensor | None:
        """The observation, shape ``[N, L]`` (``None`` until set)."""
        return self._x_o

    @x_o.setter
    def x_o(self, x_o: Tensor | None) -> None:
        if x_o is None:
            self._x_o = None
        else:
            self.set_x(x_o)

    def set_x(self, x_o: Tensor, x_is_iid: bool = True) -> BasePotential:
        """Set the observation: ``[L]`` or ``[N, L]`` (N iid rows, or N observations).

        Raises:
            ValueError: If ``x_o`` has more than two dims, no entries, or non-finite
                entries.
        """
        x = as_tensor("x_o", x_o).to(self.device)
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if x.ndim != 2:
            raise ValueError(
                f"`x_o` must have shape [L] or [N, L]; got {tuple(x.shape)}. Flatten "
                "structured observations or embed them first."
            )
        if x.numel() == 0:
            raise ValueError(
                f"`x_o` is empty (shape {tuple(x.shape)}); give at least one observation."
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("`x_o` must be finite; it holds NaN or inf entries.")
        self._x_o = x
        self.x_is_iid = bool(x_is_iid)
        return self

    def return_x_o(self) -> Tensor | None:
        """The observation, or ``None`` if none is set (sbi's name for :attr:`x_o`)."""
        return self._x_o

    def _require_x(self) -> Tensor:
        if self._x_o is None:
            raise ValueError("No observation set: call `set_x(x_o)` first (or pass `x_o=`).")
        return self._x_o

    @abc.abstractmethod
    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        """log p̃(θ | x_o) of shape ``theta.shape[:-1]``."""

    def to(self, device: str | torch.device) -> BasePotential:
        """Move the observation (and the prior's tensors where possible) to ``device``."""
        self.device = str(device)
        if self._x_o is not None:
            self._x_o = self._x_o.to(device)
        return self


class EstimatorPotential(BasePotential):
    """log p̃(θ | x_o) = Σᵢ term(x_i, θ) + log p(θ), for a per-observation log term.

    Subclasses give :meth:`log_term` (a log-likelihood or a log-ratio); this class sums it
    over iid rows of ``x_o`` (one vectorised call) or pairs it with a batch of observations
    (``x_is_iid=False``), adds the prior and sets ``-inf`` outside its support.
    """

    def _estimator_dtype(self) -> torch.dtype | None:
        """The floating dtype of the estimator network's parameters (``None``: no network)."""
        for name in ("likelihood", "ratio_estimator"):
            module = getattr(self, name, None)
            if isinstance(module, torch.nn.Module):
                for tensor in module.parameters():
                    if tensor.is_floating_point():
                        return tensor.dtype
        return None

    @abc.abstractmethod
    def log_term(self, x: Tensor, theta: Tensor) -> Tensor:
        """Element-wise log term for x ``[*, L]`` and θ ``[*, D]``, shape ``[*]``."""

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        x = self._require_x()
        dtype = self._estimator_dtype()
        if dtype is not None:  # a float64 θ or x meets a float32 network: cast, not fail
            x, theta = x.to(dtype), theta.to(dtype)
        with torch.set_grad_enabled(track_gradients and torch.is_grad_enabled()):
            log_prior = log_prior_or_zero(self.prior, theta)
            if self.x_is_iid:
                xs, thetas = _iid_broadcast(x, theta)
                term = self.log_term(xs, thetas).sum(0)
            else:  # θ [*, B, D] paired with x [B, L]
                term = self.log_term(x.expand(*theta.shape[:-1], x.shape[-1]), theta)
            return mask_outside(term + log_prior, log_prior)


def log_prior_or_zero(prior: object | None, theta: Tensor) -> Tensor:
    """log prior(θ) with ``-inf`` outside its support, or 0 without a prior."""
    if prior is None:
        return torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
    support = getattr(prior, "support", None)
    if support is not None:
        inside = support.check(theta)
        if inside.ndim == theta.ndim:
            inside = inside.all(-1)
        if not bool(inside.all()):
            safe = torch.where(inside.unsqueeze(-1), theta, prior.sample().to(theta).detach())
            lp = prior.log_prob(safe)
            return torch.where(inside, lp, torch.full_like(lp, float("-inf")))
    return prior.log_prob(theta)


def _iid_broadcast(x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Pair every iid row of x ``[N, L]`` with every θ ``[*, D]``: ``[N, *, L]``, ``[N, *, D]``."""
    batch = theta.shape[:-1]
    n = x.shape[0]
    xs = x.reshape(n, *([1] * len(batch)), x.shape[-1]).expand(n, *batch, x.shape[-1])
    return xs, theta.unsqueeze(0).expand(n, *theta.shape)


def mask_outside(log_p: Tensor, log_prior: Tensor) -> Tensor:
    """Set the potential to ``-inf`` (not NaN) wherever the prior is zero."""
    return torch.where(torch.isneginf(log_prior), torch.full_like(log_p, float("-inf")), log_p)
