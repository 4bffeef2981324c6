"""Run the tutorials cell by cell and write what they print and draw into the docs.

Each ``tutorials/NN_*.py`` is a script in jupytext's percent format (``# %%`` cells,
``# %% [markdown]`` cells). This script runs one tutorial per fresh interpreter, one code
cell after the other in one ``__main__`` namespace (as ``python tutorials/NN_*.py`` would),
and records for every cell what it printed, the warnings it raised and the PNG files it
wrote to the tutorial's output directory. It then writes, per tutorial,

- ``docs/tutorials/outputs/<name>/cells.md``: the markdown cells (headings one level
  down, the title cell left out: the page has its own), each code cell, its output and its
  figures; the tutorial's page includes it with ``--8<--``;
- ``docs/tutorials/outputs/<name>/*.png``: the figures (palette PNGs, to keep them small);

and ``docs/tutorials/outputs/manifest.json``: the SHA-256 of every tutorial and of this
script, the mode (quick or full), the commit and the figures. ``tests/test_docs_tutorials.py``
fails when a tutorial changed after its outputs were made.

Why not a plugin: mkdocs-jupyter renders notebooks (outputs embedded as base64, so the
tutorials would have to be committed twice, as ``.py`` and as executed ``.ipynb``, and
executing needs a Jupyter kernel), and mkdocs-gallery executes the scripts at build time
(the docs build is part of ``make test``) and captures only figures left open, while these
tutorials save and close theirs. Recording the files each cell writes needs neither.

Run by ``make docs-outputs``: the full runs, whose numbers and figures the pages discuss
(about an hour on a busy two-core machine). ``DOCS_OUTPUTS_ARGS="--only 03_ppl_svi"``
redoes one tutorial, ``DOCS_OUTPUTS_ARGS=--quick`` uses the quick budgets (minutes; each
page says which run it shows)::

    python docs/_ext/render_tutorials.py [--quick] [--only 03_ppl_svi ...]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"
OUTPUTS = ROOT / "docs" / "tutorials" / "outputs"
MANIFEST = OUTPUTS / "manifest.json"
OUTPUT_DIR_PLACEHOLDER = "<output-dir>"
MAX_OUTPUT_LINES = 40
_MARKER = re.compile(r"^# %%(.*)$")


@dataclass
class Cell:
    """One cell of a percent-format script.

    Attributes:
        kind: ``"markdown"`` or ``"code"``.
        source: The cell's text (markdown without the leading ``# ``).
        first_line: Line number of the cell's first line in the script (1-based).
        output: What the cell printed (stdout) and the warnings it raised.
        figures: The PNG files (names) the cell wrote or rewrote.
    """

    kind: str
    source: str
    first_line: int
    output: str = ""
    figures: list[str] = field(default_factory=list)


def source_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (what the manifest records for staleness)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_cells(text: str) -> list[Cell]:
    """Split a percent-format script into cells.

    Args:
        text: The script's source.

    Returns:
        The cells in order, empty ones dropped; markdown cells without their ``# `` prefix.
    """
    cells: list[Cell] = []
    kind, start, lines = "code", 1, []

    def close() -> None:
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
        if body.strip():
            offset = next(i for i, line in enumerate(lines) if line.strip())
            cells.append(Cell(kind, body, start + offset))

    for number, line in enumerate(text.splitlines(), start=1):
        marker = _MARKER.match(line)
        if marker:
            close()
            kind = "markdown" if "[markdown]" in marker.group(1) else "code"
            start, lines = number + 1, []
        else:
            lines.append(line)
    close()
    return cells


def _png_state(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.glob("*.png")}


def execute(script: Path, work_dir: Path, *, quick: bool) -> list[Cell]:
    """Run a tutorial's code cells in order in one ``__main__`` namespace.

    Args:
        script: The tutorial.
        work_dir: Its output directory (``--output-dir``).
        quick: Whether to pass ``--quick``.

    Returns:
        The cells, each code cell with its output and the figures it wrote.

    Raises:
        Exception: Whatever a cell raises (its traceback points into the script).
    """
    text = script.read_text(encoding="utf-8")
    cells = split_cells(text)
    sys.argv = [str(script), *(["--quick"] if quick else []), "--output-dir", str(work_dir)]
    module = types.ModuleType("__main__")
    module.__file__ = str(script)
    sys.modules["__main__"] = module  # functions defined by the tutorial pickle by name
    for cell in cells:
        if cell.kind != "code":
            continue
        before = _png_state(work_dir)
        # padded to the cell's line so that tracebacks point into the script; compile()
        # inherits this module's `from __future__ import annotations`, as the tutorials have
        code = compile("\n" * (cell.first_line - 1) + cell.source, str(script), "exec")
        stdout = io.StringIO()
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
            exec(code, module.__dict__)
        notes = [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught]
        cell.output = (stdout.getvalue() + "".join(f"{n}\n" for n in notes)).replace(
            str(work_dir), OUTPUT_DIR_PLACEHOLDER
        )
        after = _png_state(work_dir)
        cell.figures = sorted(name for name, state in after.items() if before.get(name) != state)
    return cells


def _shift_headings(markdown: str) -> str:
    return re.sub(r"^(#+) ", r"#\1 ", markdown, flags=re.M)


def _clip(output: str) -> str:
    lines = output.rstrip("\n").splitlines()
    if len(lines) <= MAX_OUTPUT_LINES:
        return "\n".join(lines)
    cut = len(lines) - MAX_OUTPUT_LINES
    return "\n".join([*lines[:MAX_OUTPUT_LINES], f"... ({cut} more lines)"])


def to_markdown(cells: list[Cell], name: str, *, quick: bool, commit: str) -> str:
    """The page fragment of a run: markdown, code, output and figures, cell by cell.

    Args:
        cells: The executed cells of one tutorial.
        name: The tutorial's name (its output folder under ``docs/tutorials/outputs``).
        quick: Whether the run was the quick one (said in the fragment's first line).
        commit: The commit it ran at (said in the fragment's first line).

    Returns:
        Markdown whose image paths are relative to ``docs/tutorials/``.
    """
    mode = "the quick run (`--quick`)" if quick else "the full run"
    parts = [
        f"The script, cell by cell, with what {mode} printed and drew at commit `{commit}`"
        " (`make docs-outputs` runs it again and rewrites this section)."
    ]
    if cells and cells[0].kind == "markdown" and cells[0].source.startswith("# "):
        cells = cells[1:]  # the title cell: the page has its own title and introduction
    for cell in cells:
        if cell.kind == "markdown":
            parts.append(_shift_headings(cell.source))
            continue
        parts.append(f"```python\n{cell.source}\n```")
        if cell.output.strip():
            parts.append(f'```text title="output"\n{_clip(cell.output)}\n```')
        parts.extend(f"![{png}](outputs/{name}/{png})" for png in cell.figures)
    return "\n\n".join(parts) + "\n"


def _compact_png(source: Path, target: Path) -> None:
    """Copy a figure as a 256-colour palette PNG (a third of the size, same look)."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(
            target, optimize=True
        )


def _child(script: Path, work_dir: Path, cells_json: Path, *, quick: bool) -> None:
    cells = execute(script, work_dir, quick=quick)
    cells_json.write_text(json.dumps([asdict(c) for c in cells]), encoding="utf-8")


def render(script: Path, *, quick: bool, commit: str) -> dict:
    """Run one tutorial in a fresh interpreter and write its fragment and figures.

    Args:
        script: The tutorial.
        quick: Whether to run its quick mode.
        commit: The commit it runs at (for the fragment and the manifest).

    Returns:
        The tutorial's manifest entry.

    Raises:
        RuntimeError: If the tutorial fails (its stderr is printed above).
    """
    name = script.stem
    target = OUTPUTS / name
    with tempfile.TemporaryDirectory(prefix=f"sbi_vi_docs_{name}_") as tmp:
        work_dir, cells_json = Path(tmp) / "output", Path(tmp) / "cells.json"
        work_dir.mkdir()
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
        env.pop("SBI_VI_TUTORIAL_QUICK", None)
        env.pop("SBI_VI_TUTORIAL_OUTPUT_DIR", None)
        start = time.perf_counter()
        command = [sys.executable, __file__, "--child", str(script), str(work_dir)]
        command += [str(cells_json), *(["--quick"] if quick else [])]
        if subprocess.run(command, cwd=work_dir, env=env, check=False).returncode != 0:
            raise RuntimeError(f"{script.name} failed; its traceback is above")
        seconds = time.perf_counter() - start
        cells = [Cell(**c) for c in json.loads(cells_json.read_text(encoding="utf-8"))]
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*.png"):
            old.unlink()
        figures = sorted({png for cell in cells for png in cell.figures})
        for png in figures:
            _compact_png(work_dir / png, target / png)
    (target / "cells.md").write_text(
        to_markdown(cells, name, quick=quick, commit=commit), encoding="utf-8"
    )
    print(f"{script.name}: {len(figures)} figures, {seconds:.0f} s", flush=True)
    return {
        "mode": "quick" if quick else "full",
        "commit": commit,
        "sha256": source_sha256(script),
        "generator_sha256": source_sha256(Path(__file__)),
        "figures": figures,
        "seconds": round(seconds, 1),
    }


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "tutorials", "sbi_vi")
    return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if dirty else "")


def _record(name: str, entry: dict) -> None:
    """Write one tutorial's entry into the manifest (read afresh: runs may go side by side)."""
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8")) if MANIFEST.exists() else {}
    tutorials = {**manifest.get("tutorials", {}), name: entry}
    manifest = {
        "generator": "docs/_ext/render_tutorials.py",
        "regenerate": "make docs-outputs",
        "tutorials": dict(sorted(tutorials.items())),
    }
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Render every tutorial (or those named by ``--only``), updating the manifest after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tutorials' quick budgets")
    parser.add_argument("--only", nargs="+", default=None, help="tutorial names (file stems)")
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child, quick=args.quick)
        return
    scripts = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
    if args.only:
        unknown = set(args.only) - {s.stem for s in scripts}
        if unknown:
            raise SystemExit(f"--only: no tutorial named {sorted(unknown)}")
        scripts = [s for s in scripts if s.stem in args.only]
    commit = _commit()
    for script in scripts:
        _record(script.stem, render(script, quick=args.quick, commit=commit))


if __name__ == "__main__":
    main()
