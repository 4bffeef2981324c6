"""Tutorial 5 (``tutorials/05_single_cell_vae.py``) runs in quick mode; its numbers agree
with the ground truth of the synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tutorials" / "05_single_cell_vae.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_single_cell_tutorial_runs_in_quick_mode(tmp_path: Path, run_tutorial) -> None:
    proc = run_tutorial(SCRIPT, tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True
    for name in summary["files"].values():
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name

    latent = summary["latent"]
    assert latent["knn_purity"] > 0.8  # types separate in z
    assert latent["clustering"]["ari"] > 0.7
    assert 0.3 < latent["entropy_batch_mixing"] <= math.log(2) + 1e-9  # batches mix

    expression = summary["expression"]
    assert expression["log_correlation_with_truth"] > 0.85
    assert expression["marginal_ll_validation"] >= expression["elbo_validation"]

    for name, de in summary["de"].items():
        assert de["auprc"] > 0.9, name
        assert de["precision"] >= 0.9, name  # the 5 % FDR call holds on the truth
        assert de["recall"] > 0.4, name

    imputation = summary["imputation"]
    assert imputation["median_absolute_error"] < imputation["zero_baseline"]
    assert 0.0 <= summary["khat"]["fraction_above_0.7"] <= 1.0
    pbmc = summary["pbmc"]
    assert pbmc["knn_purity"] > 0.3  # 10 PBMC types, 700 cells, a short quick-mode fit
    assert pbmc["marginal_ll_validation"] >= pbmc["elbo_validation"]
    assert pbmc["z_posterior_sd_median"] > 0
