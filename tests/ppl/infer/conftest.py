"""Make the shared models of these tests importable as ``ppl_infer_models``."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def local_data() -> torch.Tensor:
    from ppl_infer_models import make_local_data

    return make_local_data()
