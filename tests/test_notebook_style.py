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
