"""Tutorial 6 (scvi-tools' quick start with only the import changed) runs in quick mode."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "tutorials" / "06_scvi_tools_quickstart.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the columns of scvi-tools 1.5's vanilla DE table with all_stats=True
SCVI_VANILLA_COLUMNS = {
    "proba_m1",
    "proba_m2",
    "bayes_factor",
    "scale1",
    "scale2",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
    "comparison",
    "group1",
    "group2",
}


def test_scvi_tools_quickstart_runs_with_only_the_import_changed(
    tmp_path: Path, run_tutorial
) -> None:
    proc = run_tutorial(SCRIPT, tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True
    for key in ("tsne", "training"):
        assert (tmp_path / summary["files"][key]).read_bytes()[:8] == PNG_MAGIC, key
    assert summary["latent_shape"] == [700, 10]
    assert summary["reload_identical"] is True
    assert summary["denoised_shape"][1] == 765
    assert abs(summary["normalized_row_sums"] - 10e4) < 1.0  # library_size=10e4 per cell
    val = summary["elbo_validation"]
    assert len(val) == 40 and val[-1] < val[0]  # trained: the validation loss fell
    assert SCVI_VANILLA_COLUMNS <= set(summary["de_columns"])
    assert len(summary["de_comparisons"]) == 10
    assert all(c.endswith(" vs Rest") for c in summary["de_comparisons"])
    assert summary["marginal_ll"] >= summary["elbo"]
    # canonical markers come out of the 1-vs-rest DE (B cells: CD79A; NK cells: GZMB/NKG7)
    assert "CD79A" in summary["markers"]["CD19+ B"]
    assert {"GZMB", "NKG7"} & set(summary["markers"]["CD56+ NK"])
    de = pd.read_csv(tmp_path / summary["files"]["de"], index_col=0)
    assert (de["group1"] == "CD14+ Monocyte").all() and (de["group2"] == "CD19+ B").all()
