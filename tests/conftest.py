"""Test-suite settings: one torch thread per worker (the suite runs in parallel workers)."""

from __future__ import annotations

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)


# Hypothesis: the suite draws the same examples on every run (a fresh clone has no example
# database, so random draws would make CI flaky). Explore new examples locally with
# `pytest --hypothesis-profile=explore` (or `--hypothesis-seed=N`).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("deterministic", derandomize=True, print_blob=True)
_hypothesis_settings.register_profile("explore", derandomize=False, print_blob=True)
_hypothesis_settings.load_profile("deterministic")
