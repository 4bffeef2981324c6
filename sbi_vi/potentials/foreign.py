"""Potential objects of sbi (and anything with their surface) as sbi_vi potentials.

sbi users build a potential with sbi's ``likelihood_estimator_based_potential(estimator,
prior, x_o=None)`` (or the ratio/posterior versions, or their own subclass of sbi's
``BasePotential``) and hand that object to ``VIPosterior`` and ``train_amortized``. Such an
object is recognised by its duck-typed surface — a ``set_x(x_o, x_is_iid=...)`` method, a
``prior`` attribute, and ``__call__(theta, track_gradients=True)`` returning the log
posterior of a batch ``[N, D]`` — and wrapped by :class:`SbiStylePotential`, which maps
sbi_vi's shape rules onto sbi's: sbi pairs the rows of a flat θ ``[N, D]`` with the rows of
x ``[N, L]`` when ``x_is_iid=False``; sbi_vi's engine passes θ ``[*S, B, D]`` with x
``[B, L]``, so x is repeated over the sample dims and both are flattened.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from sbi_vi.potentials.base import BasePotential

__all__ = ["SbiStylePotential", "is_sbi_style_potential"]


def is_sbi_style_potential(obj: object) -> bool:
    """Whether ``obj`` looks like a potential object of sbi (callable, with ``set_x``)."""
    return (
        not isinstance(obj, BasePotential)
        and callable(obj)
        and callable(getattr(obj, "set_x", None))
    )


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _current_x(obj: Any) -> Tensor | None:
    """The observation an sbi potential holds, without triggering its 'no x' error."""
    getter = getattr(obj, "return_x_o", None)
    if callable(getter):
        return getter()
    try:
        return getattr(obj, "x_o", None)
    except ValueError:  # sbi's ``x_o`` property raises when unset
        return None


class SbiStylePotential(BasePotential):
    """Wrap an sbi potential object (duck-typed) as an sbi_vi potential.

    Args:
        potential: An object with ``set_x(x_o, x_is_iid=True)``, a ``prior`` attribute and
            ``__call__(theta [N, D], track_gradients=True) -> [N]`` (sbi's
            ``LikelihoodBasedPotential``, ``RatioBasedPotential``,
            ``PosteriorBasedPotential`` or a user subclass of sbi's ``BasePotential``).
            Its ``likelihood_estimator``/``ratio_estimator``/``posterior_estimator`` and
            ``prior`` stay reachable as attributes of the wrapper.

    Raises:
        TypeError: If ``potential`` is not callable or has no ``set_x``.
    """

    takes_x = True

    def __init__(self, potential: Any):
        if not is_sbi_style_potential(potential):
            raise TypeError(
                "`potential` must be an sbi-style potential object: callable on θ with a "
                f"`set_x(x_o, x_is_iid=...)` method; got {type(potential).__name__}."
            )
        self.potential = potential
        self._pairs_x = _accepts(potential.set_x, "x_is_iid")
        self._takes_track = _accepts(potential.__call__, "track_gradients")
        super().__init__(getattr(potential, "prior", None), None, "cpu")
        self.device = str(getattr(potential, "device", "cpu"))
        x_o = _current_x(potential)
        if x_o is not None:
            self.set_x(x_o)

    def __getattr__(self, name: str) -> Any:  # likelihood_estimator, ratio_estimator, ...
        if name == "potential":  # not set yet (during unpickling)
            raise AttributeError(name)
        return getattr(self.potential, name)

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        """log p̃(θ | x) of shape ``theta.shape[:-1]`` (paired with x if ``x_is_iid=False``).

        Raises:
            ValueError: Without an observation, if the wrapped potential cannot pair θ with
                a batch of x, or if it returns the wrong number of values.
        """
        x = self._require_x()
        batch = theta.shape[:-1]
        flat = theta.reshape(-1, theta.shape[-1])
        if self.x_is_iid:
            self._set_wrapped_x(x, True)
        else:  # θ [*S, B, D] paired with x [B, L]: sbi pairs rows of flat θ and flat x
            self._set_wrapped_x(x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1]), False)
        with torch.set_grad_enabled(track_gradients and torch.is_grad_enabled()):
            if self._takes_track:
                out = self.potential(flat, track_gradients=track_gradients)
            else:
                out = self.potential(flat)
        if not isinstance(out, Tensor) or out.numel() != flat.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"The sbi-style potential {type(self.potential).__name__} must return one value "
                f"per θ row ({flat.shape[0]}); got {got}."
            )
        return out.reshape(batch)

    def _set_wrapped_x(self, x: Tensor, x_is_iid: bool) -> None:
        if self._pairs_x:
            self.potential.set_x(x, x_is_iid=x_is_iid)
        elif x_is_iid:
            self.potential.set_x(x)
        else:
            raise ValueError(
                f"The potential {type(self.potential).__name__} has `set_x` without "
                "`x_is_iid`, so it cannot score θ paired with a batch of observations "
                "(amortised VI); give its `set_x` an `x_is_iid` argument as sbi's potentials "
                "have."
            )

    def to(self, device: str | torch.device) -> SbiStylePotential:
        """Move the observation and the wrapped potential (if it has ``to``)."""
        super().to(device)
        mover = getattr(self.potential, "to", None)
        if callable(mover):
            mover(device)
        return self
