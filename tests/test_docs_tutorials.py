"""The tutorials reach the docs: every tutorial has a page in the navigation, its page shows
the committed run of the current script (code, output, figures), and nothing is stale.

The runs are made by ``make docs-outputs`` (``docs/_ext/render_tutorials.py``), which
records the SHA-256 of each tutorial and of itself in ``docs/tutorials/outputs/manifest.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUTPUTS = DOCS / "tutorials" / "outputs"
SCRIPTS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
NAMES = [script.stem for script in SCRIPTS]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STALE = "stale: run `make docs-outputs` and commit docs/tutorials/outputs"

_spec = importlib.util.spec_from_file_location(
    "render_tutorials", DOCS / "_ext" / "render_tutorials.py"
)
render_tutorials = importlib.util.module_from_spec(_spec)
sys.modules.setdefault(_spec.name, render_tutorials)  # its dataclass looks itself up there
_spec.loader.exec_module(render_tutorials)


def _manifest() -> dict:
    return json.loads((OUTPUTS / "manifest.json").read_text(encoding="utf-8"))


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_there_are_six_tutorials() -> None:
    assert len(SCRIPTS) == 6, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_tutorial_has_a_page_in_the_navigation(name: str) -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert f"tutorials/{name}.md" in _nav_pages(config["nav"])
    assert (DOCS / "tutorials" / f"{name}.md").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_run_is_of_the_current_script(name: str) -> None:
    entry = _manifest()["tutorials"].get(name)
    assert entry is not None, f"{name} has never been rendered; {STALE}"
    script = ROOT / "tutorials" / f"{name}.py"
    assert entry["sha256"] == render_tutorials.source_sha256(script), f"{name}: {STALE}"
    generator = DOCS / "_ext" / "render_tutorials.py"
    assert entry["generator_sha256"] == render_tutorials.source_sha256(generator), STALE
    assert entry["mode"] in {"quick", "full"}


@pytest.mark.parametrize("name", NAMES)
def test_the_page_shows_the_run_and_every_figure_it_names(name: str) -> None:
    page = (DOCS / "tutorials" / f"{name}.md").read_text(encoding="utf-8")
    assert f'--8<-- "docs/tutorials/outputs/{name}/cells.md"' in page
    cells = (OUTPUTS / name / "cells.md").read_text(encoding="utf-8")
    shown = re.findall(rf"!\[[^\]]*\]\(outputs/{name}/([^)]+)\)", cells)
    figures = _manifest()["tutorials"][name]["figures"]
    assert sorted(shown) == sorted(figures) and figures, (shown, figures)
    on_disk = sorted(p.name for p in (OUTPUTS / name).glob("*.png"))
    assert on_disk == sorted(figures)
    for png in figures:
        assert (OUTPUTS / name / png).read_bytes()[:8] == PNG_MAGIC
    # a figure the page's own text talks about is one the reader sees
    named = set(re.findall(r"`([\w.-]+\.png)`", page))
    assert named <= set(figures), f"named on the page but never drawn: {named - set(figures)}"
    # the code of every cell is there, and no path of the machine that ran it
    assert cells.count("```python") >= 5
    assert "/tmp/" not in cells


def test_outputs_stay_small() -> None:
    total = sum(p.stat().st_size for p in OUTPUTS.rglob("*") if p.is_file())
    assert total < 1_500_000, f"{total} bytes under docs/tutorials/outputs"


def test_split_cells_reads_percent_format() -> None:
    text = textwrap.dedent(
        """\
        # %% [markdown]
        # # Title
        #
        # Some *text*.

        # %%
        x = 1

        # %% a titled code cell
        print(x)
        """
    )
    cells = render_tutorials.split_cells(text)
    assert [(c.kind, c.first_line) for c in cells] == [("markdown", 2), ("code", 7), ("code", 10)]
    assert cells[0].source == "# Title\n\nSome *text*."
    assert cells[2].source == "print(x)"


def test_a_run_records_each_cells_output_and_figures(tmp_path: Path) -> None:
    script = tmp_path / "99_demo.py"
    script.write_text(
        textwrap.dedent(
            """\
            # %% [markdown]
            # # Demo
            #
            # Intro.

            # %%
            import argparse
            import warnings
            from pathlib import Path

            parser = argparse.ArgumentParser()
            parser.add_argument("--quick", action="store_true")
            parser.add_argument("--output-dir", type=Path)
            args, _ = parser.parse_known_args()
            print(f"quick={args.quick}, writing to {args.output_dir}")

            # %% [markdown]
            # ## A figure

            # %%
            import matplotlib.pyplot as plt

            def double(v):
                return 2 * v

            fig, ax = plt.subplots()
            ax.plot([0, 1], [0, double(1)])
            fig.savefig(args.output_dir / "line.png")
            warnings.warn("just so", UserWarning)
            """
        ),
        encoding="utf-8",
    )
    work, cells_json = tmp_path / "work", tmp_path / "cells.json"
    work.mkdir()
    generator = DOCS / "_ext" / "render_tutorials.py"
    command = [sys.executable, str(generator), "--child", str(script), str(work)]
    proc = subprocess.run(
        [*command, str(cells_json), "--quick"],
        cwd=work,
        env={**os.environ, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = [render_tutorials.Cell(**c) for c in json.loads(cells_json.read_text())]
    assert [c.kind for c in cells] == ["markdown", "code", "markdown", "code"]
    assert cells[1].output == "quick=True, writing to <output-dir>\n"
    assert cells[1].figures == [] and cells[3].figures == ["line.png"]
    assert cells[3].output == "UserWarning: just so\n"

    page = render_tutorials.to_markdown(cells, "99_demo", quick=True, commit="abc1234")
    assert "# Demo" not in page and "Intro." not in page  # the page has its own title
    assert "### A figure" in page and "`abc1234`" in page and "quick run" in page
    assert '```text title="output"\nquick=True, writing to <output-dir>\n```' in page
    assert page.index("fig.savefig") < page.index("![line.png](outputs/99_demo/line.png)")
