"""Test-suite settings: one torch thread per worker (the suite runs in parallel workers)."""

from __future__ import annotations

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
