"""``trace``: record every site of a run, and the log densities of the sample sites."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from sbi_vi.ppl.log_density import site_log_prob
from sbi_vi.ppl.runtime import Message, Messenger

__all__ = ["SiteFilter", "Trace", "TraceMessenger", "trace"]

SiteFilter = Callable[[str, Message], bool]
"""Selects sites: ``site_filter(name, msg) -> bool``."""


class Trace(dict[str, Message]):
    """The sites of one run, in execution order: ``name -> Message``.

    The messages are the live ones the handlers processed (not copies). ``param`` and
    ``plate`` sites may occur several times in a run and are recorded once (the first
    time); a repeated ``sample`` or ``deterministic`` name is an error.

    Log densities of the sample sites (observed ones and ``factor`` sites included) are
    computed on demand by :meth:`compute_log_prob` and cached on the messages:
    ``msg.log_prob`` is ``fn.log_prob(value)`` with masked entries set to 0 and multiplied
    by ``msg.scale`` (``N / n`` of subsampled plates times any ``scale`` handler), shape
    the site's batch shape (which plates broadcast to include every enclosing plate's dim);
    ``msg.unscaled_log_prob`` is the same without the scale.
    """

    @property
    def latent_sites(self) -> list[str]:
        """Names of the sample sites that are not observed."""
        return [n for n, m in self.items() if m.type == "sample" and not m.is_observed]

    @property
    def observed_sites(self) -> list[str]:
        """Names of the observed sample sites (``factor`` sites included)."""
        return [n for n, m in self.items() if m.type == "sample" and m.is_observed]

    @property
    def plate_sites(self) -> list[str]:
        """Names of the plates."""
        return [n for n, m in self.items() if m.type == "plate"]

    @property
    def param_sites(self) -> list[str]:
        """Names of the param sites."""
        return [n for n, m in self.items() if m.type == "param"]

    def _sample_sites(self, site_filter: SiteFilter | None) -> Iterable[tuple[str, Message]]:
        for name, msg in self.items():
            if msg.type == "sample" and (site_filter is None or site_filter(name, msg)):
                if msg.log_prob is None:
                    _compute_log_prob(name, msg)
                yield name, msg

    def compute_log_prob(self, site_filter: SiteFilter | None = None) -> None:
        """Fill ``log_prob`` and ``unscaled_log_prob`` of the (selected) sample sites."""
        for _ in self._sample_sites(site_filter):
            pass

    def log_prob_sum(self, site_filter: SiteFilter | None = None) -> Tensor:
        """Sum of the scaled, masked log densities of the (selected) sample sites.

        Returns:
            A scalar tensor.
        """
        total: Tensor | None = None
        for _, msg in self._sample_sites(site_filter):
            term: Tensor = msg.log_prob  # type: ignore[assignment]
            if term.dim():
                term = term.sum()
            total = term if total is None else total + term
        return torch.zeros(()) if total is None else total

    def batch_log_prob(
        self,
        plates: Iterable[str] = (),
        site_filter: SiteFilter | None = None,
        *,
        scaled: bool = True,
    ) -> Tensor:
        """Log density kept apart along the given plates, summed over everything else.

        With ``plates=(PARTICLE_PLATE,)`` under vectorised particles this is the
        ``[particles]`` log density; with ``(PARTICLE_PLATE, "data")`` the
        ``[particles, n]`` per-observation terms of the sites inside ``"data"``.

        Args:
            plates: Names of the plates to keep, in the order of the output dims.
            site_filter: Selects the sites to include (all sample sites by default).
            scaled: Whether to apply ``msg.scale`` (masks always apply).

        Returns:
            Shape ``[n_1, ..., n_k]``: the (sub)sample sizes of ``plates``; ``[]`` for none.

        Raises:
            ValueError: If a selected site is not inside every plate of ``plates``.
        """
        plates = tuple(plates)
        total: Tensor | None = None
        sizes: list[int] = []
        for name, msg in self._sample_sites(site_filter):
            lp: Tensor = msg.log_prob if scaled else msg.unscaled_log_prob  # type: ignore[assignment]
            frames = {frame.name: frame for frame in msg.cond_indep_stack}
            dims, sizes = [], []
            for plate_name in plates:
                frame = frames.get(plate_name)
                if frame is None:
                    raise ValueError(
                        f"sample site {name!r} is not inside plate {plate_name!r} (its plates: "
                        f"{list(frames) or 'none'}); select the sites inside it with "
                        f"`site_filter=lambda name, msg: {plate_name!r} in msg.plates`."
                    )
                dims.append(frame.dim)
                sizes.append(frame.subsample_size)
            term = _keep_dims(lp, dims).expand(sizes)
            total = term if total is None else total + term
        if total is None:
            return torch.zeros([self._plate_size(p) for p in plates])
        return total

    def _plate_size(self, name: str) -> int:
        msg = self.get(name)
        if msg is None or msg.type != "plate":
            raise ValueError(f"this trace has no plate {name!r}; its plates: {self.plate_sites}.")
        return int(msg.value.shape[0])


def _compute_log_prob(name: str, msg: Message) -> None:
    del name  # the message names the site
    lp = site_log_prob(msg)
    msg.unscaled_log_prob = lp
    scale = msg.scale
    msg.log_prob = lp if (type(scale) is float and scale == 1.0) else lp * scale


def _keep_dims(lp: Tensor, dims: list[int]) -> Tensor:
    """Sum ``lp`` over all dims but ``dims`` (negative), returned in the order of ``dims``."""
    if not dims:
        return lp.sum()
    missing = -min(dims) - lp.dim()
    if missing > 0:
        lp = lp.reshape((1,) * missing + tuple(lp.shape))
    keep = [lp.dim() + d for d in dims]
    others = [i for i in range(lp.dim()) if i not in keep]
    if others:
        lp = lp.sum(others)
    ranked = sorted(keep)  # the summed tensor holds the kept dims in ascending order
    return lp.permute([ranked.index(k) for k in keep])


class TraceMessenger(Messenger):
    """Records the sites of each run in a fresh :class:`Trace`.

    ``with TraceMessenger() as tr:`` gives the trace; ``TraceMessenger(model)`` records
    each call in ``.trace``; :meth:`get_trace` runs and returns it.

    Example:
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import sample
        >>> def model():
        ...     sample("x", Normal(0.0, 1.0))
        >>> list(trace(model).get_trace())
        ['x']
    """

    def __init__(self, fn: Callable[..., Any] | None = None) -> None:
        super().__init__(fn)
        self.trace = Trace()

    def __enter__(self) -> Trace:  # type: ignore[override]
        self.trace = Trace()
        super().__enter__()
        return self.trace

    def postprocess_message(self, msg: Message) -> None:
        kind = msg.type
        if kind == "subsample":
            return
        name = msg.name
        old = self.trace.get(name)
        if old is None:
            self.trace[name] = msg
        elif not (kind == old.type and kind in ("param", "plate")):
            raise ValueError(
                f"site {name!r} occurs twice in one run (as a {old.type} and as a {kind} "
                "site); give every sample and deterministic site its own name, e.g. "
                f"f'{name}_{{i}}' inside a loop."
            )

    def get_trace(self, *args: Any, **kwargs: Any) -> Trace:
        """Run the wrapped function on ``args`` and return its trace."""
        self(*args, **kwargs)
        return self.trace


def trace(fn: Callable[..., Any] | None = None) -> TraceMessenger:
    """A :class:`TraceMessenger` (NumPyro's ``handlers.trace``)."""
    return TraceMessenger(fn)
