"""The ``sbi-vi`` command."""

from __future__ import annotations

import json

import pytest

from sbi_vi.cli import main


def test_demo_quick_writes_plots_and_summary(tmp_path, capsys):
    assert main(["demo", "--quick", "--no-progress", "--output-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "pairplot.png").stat().st_size > 1000
    assert (tmp_path / "training_curve.png").stat().st_size > 1000
    assert summary["task"] == "two_moons" and 0 < summary["iterations"] <= 200
    assert 0.5 <= summary["c2st"] <= 1.0
    assert summary["c2st"] < 0.8  # even 200 forward-KL steps find both moons roughly
    out = capsys.readouterr().out
    assert "psis_khat" in out and "c2st" in out


def test_tasks_command(capsys):
    assert main(["tasks"]) == 0
    assert "two_moons" in capsys.readouterr().out


def test_unknown_command_exits():
    with pytest.raises(SystemExit):
        main(["fly"])


@pytest.mark.slow
def test_demo_simulate_runs_the_pipeline(tmp_path):
    argv = ["demo", "--quick", "--simulate", "NRE", "--no-progress", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["potential"] == "NRE" and summary["num_simulations"] == 1000
    assert summary["estimator_epochs"] > 0
    assert 0.5 <= summary["c2st"] < 0.95  # 1,000 simulations: rough, but not the prior
    assert (tmp_path / "pairplot.png").stat().st_size > 1000
