"""Diagnostics of variational posteriors: pure functions returning small result objects.

- :func:`psis` — Pareto-smoothed importance sampling: k-hat, ESS, log-evidence estimate.
- :func:`log_mean_weight` — the importance-sampling log-evidence estimate alone.
- :func:`log_evidence_from_log_weights` — that estimate with its standard error and k-hat
  (:class:`LogEvidence`), shared by every front end that reports an evidence.
- :func:`khat_verdict`, :func:`khat_threshold` — reading a k-hat.
- :func:`prop_metric` — sbi's ``prop`` metric (is q proportional to the target?).
- :func:`c2st` — classifier two-sample test against reference samples (sbibm's metric).
- :func:`run_sbc`, :func:`check_sbc` — simulation-based calibration: ranks of the true θ
  among posterior samples, KS / chi-square uniformity tests.
- :func:`run_coverage` — expected coverage of HPD regions (Hermans et al. 2022).
"""

from sbi_vi.diagnostics.c2st import c2st
from sbi_vi.diagnostics.coverage import CoverageResult, run_coverage
from sbi_vi.diagnostics.evidence import LogEvidence, log_evidence_from_log_weights
from sbi_vi.diagnostics.prop import PropResult, prop_metric
from sbi_vi.diagnostics.psis import (
    PSISResult,
    khat_threshold,
    khat_verdict,
    log_mean_weight,
    psis,
)
from sbi_vi.diagnostics.sbc import SBCResult, check_sbc, run_sbc

__all__ = [
    "CoverageResult",
    "LogEvidence",
    "PSISResult",
    "PropResult",
    "SBCResult",
    "c2st",
    "check_sbc",
    "khat_threshold",
    "khat_verdict",
    "log_evidence_from_log_weights",
    "log_mean_weight",
    "prop_metric",
    "psis",
    "run_coverage",
    "run_sbc",
]
