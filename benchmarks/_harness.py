"""The old, underscored names of :mod:`harness`, kept for ``vi_engine.py`` and ``ppl.py``.

This module goes once ``vi_engine.py`` and ``ppl.py`` import :mod:`harness` directly; new
code imports :mod:`harness`.
"""

from __future__ import annotations

import harness
from harness import ROOT, c2st_output_for, load_rows, logger, write_row

__all__ = ["ROOT", "c2st_output_for", "load_rows", "logger", "write_row"]

_Collect = harness.WarningLog
_cpu_model = harness.cpu_model
_fmt = harness.cell
_git = harness.git
_mark = harness.mark
_names = harness.name_list
_nice_worker = harness.low_priority_worker
_now = harness.now
_version = harness.package_version
