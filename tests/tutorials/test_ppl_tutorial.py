"""Tutorial 3 (``tutorials/03_ppl_svi.py``) runs in quick mode and its numbers hold together."""

from __future__ import annotations

import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tutorials" / "03_ppl_svi.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_ppl_tutorial_runs_in_quick_mode(tmp_path: Path, run_tutorial) -> None:
    proc = run_tutorial(SCRIPT, tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True
    assert (tmp_path / summary["files"]["figure"]).read_bytes()[:8] == PNG_MAGIC

    svi = summary["svi"]
    assert svi["theta_shape"] == [summary["settings"]["groups"]]
    assert abs(svi["mu"] - 1.0) < 0.3 and abs(svi["tau"] - 0.8) < 0.3
    assert svi["theta_rmse"] < 0.4 and 0.6 <= svi["theta_coverage_90"] <= 1.0
    assert math.isfinite(svi["khat"])

    fits = summary["divergences"]
    assert set(fits) == {"rKL", "IW", "alpha", "fKL"}
    mus = [fit["mu"] for fit in fits.values()]
    evidences = [fit["log_evidence"] for fit in fits.values()]
    assert max(mus) - min(mus) < 0.4, fits  # the same posterior, four ways
    assert max(evidences) - min(evidences) < 1.0, fits
    assert math.isfinite(summary["map_mu"]) and summary["ppc_correlation"] > 0.9
