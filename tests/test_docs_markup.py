"""The API reference's griffe extension turns docstring doctests into fenced code."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import griffe

_PATH = Path(__file__).resolve().parents[1] / "docs" / "_ext" / "griffe_sphinx_markup.py"
_spec = importlib.util.spec_from_file_location("griffe_sphinx_markup", _PATH)
markup = importlib.util.module_from_spec(_spec)
sys.modules.setdefault(_spec.name, markup)
_spec.loader.exec_module(markup)

DOCSTRING = textwrap.dedent(
    """\
    Summary with :class:`Family`.

    Example:
        >>> d = {"a": {"b": [(2,)]}}
        >>> d["a"]["b"]
        [(2,)]

        Some prose, then more:
        >>> 1 + 1
        2
    """
)


def test_doctests_become_pycon_fences_and_prose_stays() -> None:
    text = markup.to_markdown(DOCSTRING)
    assert text.count("```pycon") == 2
    assert "Example:\n    ```pycon\n    >>> d = " in text  # right under the section title
    assert "    Some prose, then more:\n\n    ```pycon\n    >>> 1 + 1\n    2\n    ```" in text
    assert "`Family`" in text


def test_the_example_section_stays_an_admonition_with_code_inside() -> None:
    docstring = griffe.Docstring(markup.to_markdown(DOCSTRING), parser="google")
    sections = docstring.parse()
    admonitions = [s for s in sections if s.kind.value == "admonition"]
    assert len(admonitions) == 1
    body = admonitions[0].value.contents
    assert body.startswith("```pycon\n>>> d = ") and body.count("```") == 4
