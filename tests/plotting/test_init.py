"""`import sbi_vi.plotting` must not import matplotlib (it is imported on first plot)."""

import subprocess
import sys

import sbi_vi.plotting


def test_import_does_not_load_matplotlib():
    code = (
        "import sys, sbi_vi.plotting, sbi_vi.diagnostics\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_public_names():
    assert set(sbi_vi.plotting.__all__) == {
        "pairplot",
        "marginal_plot",
        "plot_loss",
        "plot_khat",
        "plot_rank_histogram",
        "plot_coverage",
    }
