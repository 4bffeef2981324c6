"""Running a tutorial script in quick mode, as every tutorial test does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parents[2] / "tutorials"


def _run(script: Path, output_dir: Path) -> subprocess.CompletedProcess:
    """Run ``script --quick`` in a subprocess (Agg backend, one thread, ``output_dir``)."""
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "SBI_VI_TUTORIAL_QUICK": "1",
        "SBI_VI_TUTORIAL_OUTPUT_DIR": str(output_dir),
        # one thread per process: the test suite runs in parallel (pytest -n 2)
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, str(script), "--quick", "--output-dir", str(output_dir)],
        cwd=output_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def run_tutorial() -> Callable[[Path, Path], subprocess.CompletedProcess]:
    """``run_tutorial(script, output_dir)``: the completed quick-mode run of a tutorial."""
    return _run
