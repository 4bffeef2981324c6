"""What every posterior of sbi_vi shares: the default observation, input checks, the
potential, and persistence. :class:`VIPosterior` adds q and its training on top."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path
from typing import Any, Self

import torch
from torch import Size, Tensor

from sbi_vi._checks import as_tensor
from sbi_vi._io import load_object, save_object
from sbi_vi.posteriors.setup import event_size_of

__all__ = ["PosteriorBase", "check_sample_shape", "log_prob_far_out"]


def check_sample_shape(sample_shape: Any) -> Size:
    """``sample_shape`` as a ``torch.Size`` (an int ``n`` means ``(n,)``).

    Raises:
        TypeError: If it is not an int or a sequence of ints.
        ValueError: If an entry is negative.
    """
    if isinstance(sample_shape, int | torch.SymInt) and not isinstance(sample_shape, bool):
        sample_shape = (sample_shape,)
    try:
        entries = tuple(sample_shape)
    except TypeError:
        entries = None
    if entries is None or any(
        isinstance(n, bool) or not isinstance(n, int | torch.SymInt) for n in entries
    ):
        raise TypeError(
            f"`sample_shape` must be a tuple of ints such as (1000,); got {sample_shape!r}."
        )
    if any(n < 0 for n in entries):
        raise ValueError(f"`sample_shape` must not hold negative sizes; got {entries}.")
    return Size(entries)


def log_prob_far_out(q: Any, theta: Tensor) -> Tensor:
    """``q.log_prob(θ)`` for θ already checked (finite, in the support): never NaN.

    Far outside q's mass (|θ| ~ 1e30 in float32) a flow's arithmetic overflows to inf − inf,
    and torch's argument validation of the base distribution then raises a support error
    for the whole batch. θ was validated at the boundary, so validation is switched off on
    this one distribution object (not globally) and the overflowed rows, where q's density
    is 0 in this dtype, are reported as ``-inf``.
    """
    _without_validation(q)
    out = q.log_prob(theta)
    return torch.where(torch.isnan(out), torch.full_like(out, float("-inf")), out)


def _without_validation(dist: Any, depth: int = 0) -> None:
    if isinstance(dist, torch.distributions.Distribution) and depth < 8:
        dist._validate_args = False
        for value in vars(dist).values():
            _without_validation(value, depth + 1)


def _real_tensor(name: str, value: Any) -> Tensor:
    """``value`` as a real floating tensor; complex input is refused, not truncated."""
    dtype = getattr(value, "dtype", None)
    if (isinstance(dtype, torch.dtype) and dtype.is_complex) or getattr(dtype, "kind", "") == "c":
        raise TypeError(f"`{name}` must be real; got an array of dtype {dtype}.")
    return as_tensor(name, value)


def _check_finite(name: str, value: Tensor, row: str) -> None:
    """Refuse NaN and ±inf entries, naming which, how many rows and the first one."""
    for what, bad, hint in (
        ("NaN", torch.isnan(value), "a missing or failed value"),
        ("±inf", torch.isinf(value), "the density is zero at infinity"),
    ):
        rows = bad.reshape(-1, value.shape[-1]).any(-1) if value.ndim else bad.reshape(1)
        if bool(rows.any()):
            first = int(rows.nonzero()[0])
            raise ValueError(
                f"`{name}` has {int(rows.sum())} {row}(s) with {what} entries (first: flat "
                f"row {first}) ({hint}); pass finite values."
            )


def _cast(name: str, value: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` in q's dtype; refuse values that overflow it (e.g. 1e300 to float32)."""
    if value.dtype == dtype:
        return value
    out = value.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"`{name}` overflows {dtype} (q's dtype) when cast from {value.dtype}: its entries "
            f"must lie within ±{torch.finfo(dtype).max:.3g}."
        )
    return out


class PosteriorBase:
    """Observation and θ handling of a posterior over a prior with a potential.

    Subclasses set ``prior``, ``potential_fn``, ``_device``, ``_x`` (the default
    observation ``[N, L]`` or ``None``), ``_x_shape`` and ``_fitted`` (the fitted state,
    whose ``module`` gives q's dtype; see :mod:`sbi_vi.posteriors.fitted`).
    """

    prior: Any
    potential_fn: Any
    _device: str
    _x: Tensor | None
    _x_shape: Size | None
    _x_shape_given: Size | None = None
    _fitted: Any

    @property
    def default_x(self) -> Tensor | None:
        """The observation used when ``x`` is not passed."""
        return self._x

    def set_default_x(self, x: Tensor) -> Self:
        """Set the default observation (``[L]`` or ``[N, L]`` iid rows), or a batch of
        observations ``[B, L]`` (see :meth:`_is_batch`); chainable."""
        self._x = self._check_x(x)
        return self

    def _is_batch(self, x: Tensor) -> bool:
        """Whether the checked ``x`` ``[N, L]`` is a batch of N observations, not N iid rows.

        The convention (sbi's: an observation carries a batch dim of 1): on a posterior
        built with ``x_shape`` ``[L]`` or ``[1, L]`` (one observation is one row), x with
        N ≥ 2 rows is a batch of N observations. Without ``x_shape`` (or with ``[n, L]``,
        n ≥ 2: an observation of n iid rows), the rows of x are iid rows of one observation.
        """
        shape = getattr(self, "_x_shape_given", None)
        return (
            shape is not None and len(shape) >= 1 and shape[:-1].numel() == 1 and (x.shape[0] >= 2)
        )

    def potential(
        self, theta: Tensor, x: Tensor | None = None, track_gradients: bool = False
    ) -> Tensor:
        """The unnormalised log posterior log p̃(θ | x) (default x: :attr:`default_x`).

        For a batch of B observations x (:meth:`_is_batch`), θ ``[*, B, D]`` is paired with
        the rows of x and the result is ``[*, B]``.
        """
        theta = self._check_theta(theta)
        x = self._resolve_x(x)
        if self._is_batch(x):
            self.potential_fn.set_x(x, x_is_iid=False)
        else:
            self.potential_fn.set_x(x)
        return self.potential_fn(theta, track_gradients=track_gradients)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save the whole posterior (q, potential, prior, optimizer state) to ``path``.

        The file records the sbi_vi version that wrote it.

        Args:
            path: The file to write.

        Raises:
            TypeError: The posterior cannot be pickled (a lambda or local potential).
        """
        try:
            save_object(self, path, what=type(self).__name__)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(
                "The posterior cannot be pickled, most likely because `potential_fn` is a "
                "lambda or a local function; define it at module level. Original error: "
                f"{err}"
            ) from err

    @classmethod
    def load(cls, path: str | Path, map_location: str | None = None) -> Self:
        """Load a posterior written by :meth:`save`.

        Args:
            path: The file written by :meth:`save`.
            map_location: Passed to :func:`torch.load`.

        Returns:
            The posterior, in the state it was saved in.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: The file is truncated, corrupted, not a torch file, or holds
                something other than a ``cls`` (the message names the file and, when the
                file records it, the sbi_vi version that wrote it).
        """
        return load_object(path, what=cls.__name__, expected_type=cls, map_location=map_location)

    def _q_dtype(self) -> torch.dtype:
        """The floating dtype of q's parameters (θ and x are cast to it before q sees them)."""
        fitted = getattr(self, "_fitted", None)  # None while the constructor builds q
        module = None if fitted is None else fitted.module
        if isinstance(module, torch.nn.Module):
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                if tensor.is_floating_point():
                    return tensor.dtype
        return torch.get_default_dtype()

    def _check_x(self, x: Tensor) -> Tensor:
        x = _real_tensor("x", x).to(self._device)
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if x.ndim != 2:
            raise ValueError(f"`x` must have shape [L] or [N, L]; got {tuple(x.shape)}.")
        if x.shape[0] == 0:
            raise ValueError(f"`x` must hold at least one observation; got {tuple(x.shape)}.")
        if self._x_shape is not None:
            expected = self._x_shape[-1:] if len(self._x_shape) else self._x_shape
            if x.shape[1:] != expected:
                raise ValueError(
                    f"`x` must have trailing shape {tuple(expected)} (x_shape="
                    f"{tuple(self._x_shape)}); got {tuple(x.shape)}."
                )
        elif self._x is not None and x.shape[1:] != self._x.shape[1:]:
            raise ValueError(
                f"`x` has trailing shape {tuple(x.shape[1:])}, but the default x has "
                f"{tuple(self._x.shape[1:])}."
            )
        _check_finite("x", x, "observation")
        return _cast("x", x, self._q_dtype())

    def _resolve_x(self, x: Tensor | None) -> Tensor:
        if x is not None:
            return self._check_x(x)
        if self._x is None:
            raise ValueError("No observation: pass `x=` or call `set_default_x(x_o)` first.")
        return self._x

    def _check_theta(self, theta: Tensor, name: str = "theta") -> Tensor:
        """θ ``[*, D]`` checked (shape, NaN, ±inf, support) and cast to q's dtype."""
        theta = _real_tensor(name, theta).to(self._device)
        d = event_size_of(self.prior)
        if theta.ndim == 0 or theta.shape[-1] != d:
            raise ValueError(
                f"`{name}` must have shape [D] or [N, D] with D={d}; got {tuple(theta.shape)}."
            )
        _check_finite(name, theta, "parameter vector")
        theta = _cast(name, theta, self._q_dtype())
        support = getattr(self.prior, "support", None)
        if support is not None and theta.numel():
            inside = support.check(theta)
            if inside.ndim == theta.ndim:
                inside = inside.all(-1)
            if not bool(inside.all()):
                n_out = int((~inside).sum())
                raise ValueError(
                    f"`{name}` has {n_out} row(s) outside the prior's support, where the "
                    "posterior is zero."
                )
        return theta

    def _check_training_pairs(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        theta = _real_tensor("theta", theta).to(self._device)
        x = _real_tensor("x", x).to(self._device)
        if theta.ndim == 1:
            theta = theta.unsqueeze(-1)
        if x.ndim == 1:
            x = x.unsqueeze(-1)
        if theta.ndim != 2 or x.ndim != 2:
            raise ValueError(
                "`theta` and `x` must have shapes [N, D] and [N, L]; got "
                f"{tuple(theta.shape)} and {tuple(x.shape)}."
            )
        if theta.shape[0] != x.shape[0]:
            raise ValueError(
                f"`theta` has {theta.shape[0]} rows and `x` has {x.shape[0]}: they must be "
                "the same simulated pairs."
            )
        if theta.shape[0] == 0:
            raise ValueError("`theta` and `x` are empty: amortised VI needs simulated pairs.")
        d = event_size_of(self.prior)
        if theta.shape[1] != d:
            raise ValueError(f"`theta` has {theta.shape[1]} columns, but the prior's θ has D={d}.")
        for name, value in (("theta", theta), ("x", x)):
            bad = ~torch.isfinite(value).all(-1)
            if bool(bad.any()):
                raise ValueError(
                    f"`{name}` has {int(bad.sum())} row(s) with NaN or inf (first: row "
                    f"{int(bad.nonzero()[0])}); drop them first (simulate() does)."
                )
        if self._x_shape is not None:
            expected = self._x_shape[-1:] if len(self._x_shape) else self._x_shape
            if x.shape[1:] != expected:
                raise ValueError(
                    f"`x` must have trailing shape {tuple(expected)} (x_shape="
                    f"{tuple(self._x_shape)}); got {tuple(x.shape)}."
                )
        elif self._x is not None and self._x.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"`x` has trailing shape {tuple(x.shape[1:])}, but the default x has "
                f"{tuple(self._x.shape[1:])}."
            )
        else:
            self._x_shape = Size(x.shape[1:])
        dtype = self._q_dtype()
        return _cast("theta", theta, dtype), _cast("x", x, dtype)
