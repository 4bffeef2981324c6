"""Diagnostics of variational posteriors: pure functions returning small result objects.

- :func:`psis` — Pareto-smoothed importance sampling: k-hat, ESS, log-evidence estimate.
- :func:`khat_verdict`, :func:`khat_threshold` — reading a k-hat.
- :func:`prop_metric` — sbi's ``prop`` metric (is q proportional to the target?).
- :func:`c2st` — classifier two-sample test against reference samples (sbibm's metric).
"""

from sbi_vi.diagnostics.c2st import c2st
from sbi_vi.diagnostics.prop import PropResult, prop_metric
from sbi_vi.diagnostics.psis import PSISResult, khat_threshold, khat_verdict, psis

__all__ = [
    "PSISResult",
    "PropResult",
    "c2st",
    "khat_threshold",
    "khat_verdict",
    "prop_metric",
    "psis",
]
