"""The code examples of the documentation run against the current API.

Every ```` ```python ```` block of a page runs, in order, in one fresh module namespace per
page (a real module, so that functions defined in the examples can be pickled by
``VIPosterior.save``). Blocks fenced as ```` ```text ```` or ```` ```bash ```` are not run.
"""

from __future__ import annotations

import re
import sys
import types
import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = [DOCS / "index.md", *sorted((DOCS / "guide").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def test_pages_are_found() -> None:
    assert all(page.is_file() for page in PAGES)
    assert len(PAGES) >= 4


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_blocks_run(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib").use("Agg")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    name = f"_sbi_vi_docs_{page.stem}"
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. QualityWarning of deliberately short fits
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page.name}[block {i}]", "exec"), module.__dict__)
    import matplotlib.pyplot as plt

    plt.close("all")
