"""Divergences: small objects returning (surrogate loss, reported value, log weights).

``DIVERGENCES`` maps the ``vi_method`` names of the sbi API to classes; a new divergence is
one class in its own file plus one entry here.
"""

from __future__ import annotations

from typing import Any, Literal

from sbi_vi.vi.divergences.base import (
    Divergence,
    DivergenceOutput,
    LogDensity,
    detached_log_prob,
    safe_log_p,
)
from sbi_vi.vi.divergences.forward_kl import ForwardKL
from sbi_vi.vi.divergences.renyi import ImportanceWeighted, RenyiAlpha
from sbi_vi.vi.divergences.reverse_kl import ReverseKL

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "DivergenceOutput",
    "ForwardKL",
    "ImportanceWeighted",
    "LogDensity",
    "RenyiAlpha",
    "ReverseKL",
    "VIMethod",
    "build_divergence",
    "detached_log_prob",
    "safe_log_p",
]

VIMethod = Literal["rKL", "fKL", "IW", "alpha"]

DIVERGENCES: dict[str, type[Divergence]] = {
    "rKL": ReverseKL,
    "fKL": ForwardKL,
    "IW": ImportanceWeighted,
    "alpha": RenyiAlpha,
}
"""Divergence classes by their ``vi_method`` name."""

DIVERGENCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "rKL": ("stick_the_landing",),
    "fKL": ("weight_transform", "refresh_every"),
    "IW": ("K", "dreg", "stick_the_landing"),
    "alpha": ("alpha", "stick_the_landing", "dreg"),
}
"""The settings each divergence accepts (for clear errors on misspelled options)."""


def build_divergence(method: str, **options: Any) -> Divergence:
    """Build the divergence ``method`` with its ``options``.

    Options that belong to another divergence are ignored only if they are at their
    "off" value (``None``/``False``); anything else that ``method`` does not accept is an
    error naming it.

    Example:
        >>> build_divergence("IW", K=4)
        ImportanceWeighted(K=4, dreg=False, stick_the_landing=False)

    Raises:
        ValueError: Unknown method, or an option that ``method`` does not use.
    """
    if method not in DIVERGENCES:
        raise ValueError(
            f"`vi_method` must be one of {', '.join(map(repr, DIVERGENCES))}; got {method!r}."
        )
    accepted = DIVERGENCE_OPTIONS[method]
    known = {k for opts in DIVERGENCE_OPTIONS.values() for k in opts}
    used = {}
    for key, value in options.items():
        if key in accepted:
            used[key] = value
        elif key in known and value in (None, False):
            continue
        elif key in known:
            raise ValueError(
                f"Option `{key}` does not apply to vi_method={method!r} (it accepts "
                f"{', '.join(accepted)})."
            )
        else:
            raise TypeError(
                f"Unknown option `{key}` for vi_method={method!r}; it accepts "
                f"{', '.join(accepted)}."
            )
    return DIVERGENCES[method](**used)
