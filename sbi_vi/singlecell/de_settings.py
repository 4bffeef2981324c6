"""The settings of one ``differential_expression`` call, validated once, as frozen dataclasses.

:class:`DESettings` holds what scvi-tools 1.5 spreads over ``differential_expression``'s
arguments and the ``**kwargs`` it relays to ``DifferentialComputation.get_bayes_factors``;
:class:`ImportanceSettings` holds ``importance_weighting_kwargs`` (the keys of scvi-tools'
``get_importance_weights`` plus ours). Unknown keys are an error naming them, so that a
misspelled option never vanishes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from sbi_vi._checks import check_choice, check_in_interval, check_positive_int

__all__ = ["BAYES_FACTOR_KWARGS", "DESettings", "ImportanceSettings"]

Mode = Literal["vanilla", "change"]
TestMode = Literal["two", "three"]
Weights = Literal["uniform", "importance"]

BAYES_FACTOR_KWARGS = (
    "n_samples_overall",
    "use_permutation",
    "m_permutation",
    "change_fn",
    "m1_domain_fn",
    "pseudocounts",
    "threshold_counts",
    "test_mode",
    "cred_interval_lvls",
    "use_observed_batches",
)
"""The ``**kwargs`` of ``differential_expression`` (scvi-tools' ``get_bayes_factors``)."""


def _optional_nonnegative(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number or None, got {type(value).__name__}.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0 or None, got {value}.")
    return float(value)


@dataclass(frozen=True)
class ImportanceSettings:
    """How ``weights="importance"`` weights each cell's posterior draws.

    Every cell of a group gets ``n_mc_samples`` draws of its encoder ``q(z, ℓ | x)`` and
    their log weights ``log p(x, z, ℓ) − log q(z, ℓ | x)``; Pareto smoothing (PSIS, the
    engine's :func:`~sbi_vi.diagnostics.psis`) normalises them per cell, so that the
    resampled draws target the cell's exact posterior, each cell with the same mass.

    Attributes:
        max_cells: Largest number of cells of a group that get draws (a random subset
            beyond it), as scvi-tools' ``max_cells``.
        truncation: ``False``: Pareto-smoothed weights (PSIS); ``True``: Ionides' (2008)
            truncation of each weight at ``mean · √S``, scvi-tools' option.
        n_mc_samples: Draws per cell ``S`` (at least 2; PSIS fits k̂ from 25 on, below
            that k̂ is ``inf``).
        n_mc_samples_per_pass: Draws per forward pass (memory, not results).
        khat_threshold: Drop the cells whose PSIS k̂ exceeds it (their weights are not
            reliable); ``None`` keeps every cell and warns when some exceed 0.7.
    """

    max_cells: int = 1024
    truncation: bool = False
    n_mc_samples: int = 500
    n_mc_samples_per_pass: int = 250
    khat_threshold: float | None = None

    def __post_init__(self) -> None:
        check_positive_int("importance_weighting_kwargs['max_cells']", self.max_cells)
        check_positive_int(
            "importance_weighting_kwargs['n_mc_samples_per_pass']", self.n_mc_samples_per_pass
        )
        if (
            check_positive_int("importance_weighting_kwargs['n_mc_samples']", self.n_mc_samples)
            < 2
        ):
            raise ValueError(
                "`importance_weighting_kwargs['n_mc_samples']` must be at least 2 (PSIS needs "
                f"a tail), got {self.n_mc_samples}."
            )
        if not isinstance(self.truncation, bool):
            raise TypeError(
                "`importance_weighting_kwargs['truncation']` must be a bool, got "
                f"{self.truncation!r}."
            )
        k = self.khat_threshold
        if k is not None and (isinstance(k, bool) or not isinstance(k, int | float)):
            raise TypeError(
                "`importance_weighting_kwargs['khat_threshold']` must be a number or None, got "
                f"{k!r}."
            )
        if k is not None and not math.isfinite(k):
            raise ValueError(
                f"`importance_weighting_kwargs['khat_threshold']` must be finite, got {k}."
            )

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> ImportanceSettings:
        """Build from ``importance_weighting_kwargs``; unknown keys are a ``TypeError``."""
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(
                "`importance_weighting_kwargs` must be a dict or None, got "
                f"{type(kwargs).__name__}."
            )
        kwargs = dict(kwargs or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"Unknown `importance_weighting_kwargs` {unknown}; accepted: "
                f"{', '.join(sorted(known))}."
            )
        return cls(**kwargs)


@dataclass(frozen=True)
class DESettings:
    """Everything a comparison of two groups needs besides the cells.

    Attributes:
        mode: ``"vanilla"`` (Bayes factor of ``s1 > s2``) or ``"change"`` (``P(|r| ≥ δ)``).
        delta: LFC threshold δ of ``"change"``; ``None`` estimates it from the data.
        batch_size: Cells per forward pass.
        all_stats: Add the raw-count statistics of each group.
        use_observed_batches: Decode every cell in its own batch (``not batch_correction``).
        batchid1: Batches to decode group 1 in under batch correction (``None``: all).
        batchid2: The same for group 2.
        fdr_target: Target of the ``is_de_fdr_<fdr_target>`` call.
        weights: ``"uniform"`` draws, or ``"importance"``-weighted ones.
        importance: The importance-weighting settings (used when ``weights="importance"``).
        filter_outlier_cells: Drop each group's latent-space outliers first.
        n_samples_overall: Draws of normalised expression per group.
        use_permutation: Pair ``m_permutation`` random draws instead of row by row.
        m_permutation: The number of those pairs.
        change_fn: Effect size ``f(s1, s2)`` (``None`` or ``"log-fold"``: log2 fold change).
        m1_domain_fn: ``f(r) -> bool`` of the effect sizes that count as DE.
        pseudocounts: LFC pseudocount; ``None`` estimates it from unexpressed genes.
        threshold_counts: Mean raw count below which a gene counts as unexpressed in a
            group (for the pseudocount estimate).
        test_mode: ``"three"`` (``max(P(r ≥ δ), P(r ≤ −δ))``) or ``"two"`` (their sum).
        cred_interval_lvls: Levels of the LFC's credible intervals.
    """

    mode: Mode = "vanilla"
    delta: float | None = 0.25
    batch_size: int = 128
    all_stats: bool = True
    use_observed_batches: bool = True
    batchid1: tuple[Any, ...] | None = None
    batchid2: tuple[Any, ...] | None = None
    fdr_target: float = 0.05
    weights: Weights = "uniform"
    importance: ImportanceSettings = ImportanceSettings()
    filter_outlier_cells: bool = False
    n_samples_overall: int = 5000
    use_permutation: bool = False
    m_permutation: int = 10000
    change_fn: str | Callable[..., Any] | None = None
    m1_domain_fn: Callable[..., Any] | None = None
    pseudocounts: float | None = None
    threshold_counts: float = 0.01
    test_mode: TestMode = "three"
    cred_interval_lvls: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("vanilla", "change"))
        check_choice("weights", self.weights, ("uniform", "importance"))
        check_choice("test_mode", self.test_mode, ("two", "three"))
        _optional_nonnegative("delta", self.delta)
        _optional_nonnegative("pseudocounts", self.pseudocounts)
        if _optional_nonnegative("threshold_counts", self.threshold_counts) is None:
            raise ValueError("`threshold_counts` must be a finite number >= 0, got None.")
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("n_samples_overall", self.n_samples_overall)
        check_positive_int("m_permutation", self.m_permutation)
        check_in_interval("fdr_target", self.fdr_target, 0.0, 1.0, closed="both")
        if self.change_fn not in (None, "log-fold") and not callable(self.change_fn):
            raise ValueError(
                f"`change_fn` must be 'log-fold', a callable or None, got {self.change_fn!r}."
            )
        if self.m1_domain_fn is not None and not callable(self.m1_domain_fn):
            raise TypeError(f"`m1_domain_fn` must be callable or None, got {self.m1_domain_fn!r}.")
        for level in self.cred_interval_lvls or ():
            check_in_interval("cred_interval_lvls", level, 0.0, 1.0)
        if not self.use_observed_batches:
            return
        for name in ("batchid1", "batchid2"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"`{name}` chooses the batches of batch correction; pass "
                    "`batch_correction=True` with it (scvi-tools: 'Inconsistent batch policy')."
                )

    @classmethod
    def from_call(
        cls,
        *,
        mode: str,
        delta: float | None,
        batch_size: int | None,
        all_stats: bool,
        batch_correction: bool,
        batchid1: Sequence[Any] | None,
        batchid2: Sequence[Any] | None,
        fdr_target: float,
        weights: str | None,
        filter_outlier_cells: bool,
        importance_weighting_kwargs: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> DESettings:
        """The settings of one ``differential_expression`` call and its ``**kwargs``.

        Raises:
            TypeError: An unknown keyword argument (the message lists the accepted ones).
            ValueError: A value out of range (the message names it).
        """
        kwargs = dict(kwargs)
        if "M_permutation" in kwargs:  # scvi-tools < 1.0 spelling
            kwargs.setdefault("m_permutation", kwargs.pop("M_permutation"))
        unknown = sorted(set(kwargs) - set(BAYES_FACTOR_KWARGS))
        if unknown:
            raise TypeError(
                f"differential_expression got unexpected keyword argument(s) {unknown}; "
                f"accepted: {', '.join(BAYES_FACTOR_KWARGS)}."
            )
        observed = kwargs.pop("use_observed_batches", None)
        if observed is None:
            observed = not batch_correction
        levels = kwargs.pop("cred_interval_lvls", None)
        return cls(
            mode=mode,  # type: ignore[arg-type]
            delta=delta,
            batch_size=128 if batch_size is None else batch_size,
            all_stats=bool(all_stats),
            use_observed_batches=bool(observed),
            batchid1=_as_tuple("batchid1", batchid1),
            batchid2=_as_tuple("batchid2", batchid2),
            fdr_target=fdr_target,
            weights="uniform" if weights is None else weights,  # type: ignore[arg-type]
            importance=ImportanceSettings.from_kwargs(importance_weighting_kwargs),
            filter_outlier_cells=bool(filter_outlier_cells),
            cred_interval_lvls=None if levels is None else tuple(levels),
            **kwargs,
        )


def _as_tuple(name: str, value: Sequence[Any] | None) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or np.ndim(value) == 0:
        value = [value]  # one batch name
    if len(value) == 0:
        raise ValueError(f"`{name}` must name at least one batch, got an empty list.")
    return tuple(value)
