"""Griffe extension for the API reference: Sphinx markup and doctests in docstrings to Markdown.

The package's docstrings are Google style but use a few reStructuredText constructs that
Markdown does not know: cross-reference roles (``:class:`Family```), inline math
(``:math:`\\log p```) and ``.. math::`` blocks. mkdocstrings would print them verbatim, so
this extension rewrites them before rendering: roles become inline code, math becomes
``$...$`` / ``$$...$$`` for ``pymdownx.arithmatex``. Google style's ``Example:`` section is
an admonition whose body is Markdown, where a doctest's ``>>>`` reads as a quote and
``x["a"]["b"]`` as a link, so every doctest becomes fenced ``pycon`` code. The docstrings
themselves are left as they are (they also read well with ``help()``).

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*(.*)$")


def _role(match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _math_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group(1)
        body = [match.group(2)] if match.group(2).strip() else []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        while body and not body[0]:
            body.pop(0)
        math = "\n".join(indent + line for line in body if line)
        if "&" in math or "\\\\" in math:
            math = f"{indent}\\begin{{aligned}}\n{math}\n{indent}\\end{{aligned}}"
        out += ["", f"{indent}$$", math, f"{indent}$$", ""]
    return "\n".join(out)


def _doctest_blocks(text: str) -> str:
    """Fence every doctest (a ``>>>`` line up to the next blank line) as ``pycon`` code.

    Google style's ``Example:`` is an admonition whose body is Markdown, where ``>>>`` would
    be a nested quote and ``x["a"]["b"]`` a reference link.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        previous = out[-1] if out else ""
        if previous.strip() and len(previous) - len(previous.lstrip()) >= len(indent):
            out.append("")  # not right under a section title such as "Example:"
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out += [f"{indent}```", ""]
    return "\n".join(out)


def to_markdown(text: str) -> str:
    """Rewrite the Sphinx constructs of one docstring as Markdown."""
    text = _doctest_blocks(text)
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(_role, text)


class SphinxMarkup(griffe.Extension):
    """Rewrite Sphinx roles and math in every docstring (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
