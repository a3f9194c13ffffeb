"""Notebook style the book's page needs: code lines fit its column (88 characters).

The book's code column shows about 88 characters; longer lines get a scroll bar or are cut
(chapter 6's ``train_NCSN(...)`` call was). Every line of a code cell, and of a fenced code block
in a markdown cell, of the chapters (book/) and of the solutions (solutions/, which the book
also shows) must fit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINE = 88
NOTEBOOKS = sorted(p for folder in ("book", "solutions") for p in (ROOT / folder).glob("*.ipynb"))
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def code_lines(path: Path):
    """(cell index, line) for every line of code in the notebook."""
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            blocks = [source]
        elif cell["cell_type"] == "markdown":
            blocks = [b for b in FENCE.findall(source) if not b.lstrip().startswith(":")]
        else:
            blocks = []
        for block in blocks:
            for line in block.splitlines():
                yield index, line


def long_lines(path: Path) -> list[str]:
    return [f"cell {index}: {len(line)} characters: {line.strip()[:60]}..."
            for index, line in code_lines(path) if len(line) > MAX_LINE]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_lines_fit_the_books_column(path):
    too_long = long_lines(path)
    assert not too_long, f"{path.name}: lines over {MAX_LINE} characters:\n" + "\n".join(too_long)


def test_the_check_sees_a_long_line(tmp_path):
    cells = [{"cell_type": "code", "metadata": {}, "source": ["x = 1\n", "y = " + "1 + " * 30 + "1"],
              "outputs": [], "execution_count": None},
             {"cell_type": "markdown", "metadata": {}, "source": ["```python\n", "z" * 89 + "\n", "```"]}]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert [line.split(":")[0] for line in long_lines(path)] == ["cell 0", "cell 1"]


# ------------------------------------------------------- inline maths cut by a block marker

PAGES = NOTEBOOKS + sorted((ROOT / "book").glob("*.md"))
BLOCK_START = re.compile(r"^ {0,3}([-+*]|\d{1,9}[.)]|#{1,6}|>)(\s|$)")
CODE_SPAN = re.compile(r"`[^`]*`")


def markdown_sources(path: Path) -> list[tuple[int, str]]:
    """(cell index, source) of every markdown cell (a .md page is one cell, index 0)."""
    if path.suffix == ".md":
        return [(0, path.read_text())]
    return [(index, "".join(cell["source"]))
            for index, cell in enumerate(json.loads(path.read_text())["cells"])
            if cell["cell_type"] == "markdown"]


def cut_inline_maths(source: str) -> list[str]:
    """Lines that continue an open ``$...$`` but start like a list item, heading or quote.

    Markdown reads such a line as a new block (``- x`` is a list item even in the middle of a
    paragraph), which cuts the formula in two: MathJax then gets neither half and the page
    shows raw LaTeX. Display maths (``$$``, which must stand apart from the text: see
    :func:`displays_inside_a_paragraph`) and code are left out.
    """
    found, open_maths, in_display, in_fence = [], False, False, False
    for line in source.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.strip().startswith("$$"):
            in_display = not in_display if line.strip().count("$$") == 1 else in_display
            continue
        if in_display:
            continue
        if not line.strip():
            open_maths = False  # a blank line ends the paragraph
            continue
        if open_maths and BLOCK_START.match(line):
            found.append(line.strip()[:60])
        text = CODE_SPAN.sub("", line).replace("\\$", "")
        if text.count("$") % 2:
            open_maths = not open_maths
    return found


def found_in(path: Path, finder) -> str:
    """Every line ``finder`` reports in the markdown of ``path``, one per line, by cell."""
    return "\n".join(f"cell {index}: {line}" for index, source in markdown_sources(path)
                     for line in finder(source))


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_formula_is_cut_by_a_line_that_starts_a_block(path):
    cut = found_in(path, cut_inline_maths)
    assert not cut, (f"{path.name}: a line inside $...$ starts like a list item, heading or "
                     "quote (move the operator to the end of the line above):\n" + cut)


def displays_inside_a_paragraph(source: str) -> list[str]:
    """``$$`` displays that do not stand apart from the text around them.

    MyST reads a ``$$`` block as display maths only when it starts a block, after a blank line,
    and a line of text right after its closing ``$$`` runs on into it: otherwise the dollars
    pair up with the inline ``$`` that follow, and the rest of the paragraph shows raw LaTeX
    (MathJax reports no error, so only this check sees it). The book's macros cell, which the
    book removes, is left out.
    """
    if source.lstrip().startswith("<!-- The book's maths macros"):
        return []
    found, inside, lines = [], False, source.splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not (stripped.startswith("$$") and stripped.count("$$") == 1):
            continue
        if not inside and index > 0 and lines[index - 1].strip():
            found.append(f"before {stripped[:40]!r}: {lines[index - 1].strip()[:50]}")
        if inside and index + 1 < len(lines) and lines[index + 1].strip():
            found.append(f"after {stripped[:40]!r}: {lines[index + 1].strip()[:50]}")
        inside = not inside
    return found


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_display_maths_stands_apart_from_the_text(path):
    found = found_in(path, displays_inside_a_paragraph)
    assert not found, f"{path.name}: a $$ display needs a blank line before and after it:\n{found}"


def test_the_check_sees_a_display_inside_a_paragraph():
    assert displays_inside_a_paragraph("text\n\n$$\nx\n$$\n\nmore") == []
    assert displays_inside_a_paragraph("text\n\n$$\nx\n$$ (eq-x)\n\nmore") == []
    assert len(displays_inside_a_paragraph("gives\n$$\nx\n$$\nso $y$")) == 2


def test_the_check_sees_a_cut_formula():
    assert cut_inline_maths("so $a = b\n- c$ holds") == ["- c$ holds"]
    assert cut_inline_maths("so $a = b -\nc$ holds\n\n- a list item") == []
    assert cut_inline_maths("$$\nx\n- y\n$$") == []
