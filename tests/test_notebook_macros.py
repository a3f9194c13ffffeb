"""scripts/notebook_macros.py: one macros cell per notebook, idempotent, kept by make_exercises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import notebook_macros  # noqa: E402


def _notebook(*cells):
    return nbformat.v4.new_notebook(cells=list(cells))


def _markdown(source, cell_id):
    cell = nbformat.v4.new_markdown_cell(source)
    cell.id = cell_id
    return cell


def test_the_cell_defines_every_macro_of_the_config():
    macros = notebook_macros.config_macros()
    source = notebook_macros.macro_cell().source
    for name, definition in macros.items():
        assert f"\\def\\{name}{{{definition}}}" in source
    cell = notebook_macros.macro_cell()
    assert cell.id == "maths-macros" and "remove-cell" in cell.metadata["tags"]


def test_macros_with_arguments_and_bad_definitions():
    assert notebook_macros.definitions({"norm": ["\\lVert #1 \\rVert", 1]}) == \
        "\\def\\norm#1{\\lVert #1 \\rVert}"
    assert notebook_macros.definitions({"ip": ["\\langle #1, #2 \\rangle", 2]}) == \
        "\\def\\ip#1#2{\\langle #1, #2 \\rangle}"
    with pytest.raises(ValueError, match="macro 'norm'"):
        notebook_macros.definitions({"norm": ["\\lVert #1 \\rVert"]})


def test_inserted_once_first_or_after_the_colab_header():
    cell = notebook_macros.macro_cell({"R": "\\mathbb{R}"})
    chapter = _notebook(_markdown("# Title", "title"))
    once = notebook_macros.with_macros(chapter, cell)
    twice = notebook_macros.with_macros(once, cell)
    assert [c.id for c in once.cells] == ["maths-macros", "title"]
    assert notebook_macros.render(once) == notebook_macros.render(twice)

    solution = _notebook(_markdown("badge", "colab-badge"), nbformat.v4.new_code_cell("pass"),
                         _markdown("# Title", "title"))
    solution.cells[1].id = "colab-setup"
    placed = notebook_macros.with_macros(solution, cell)
    assert [c.id for c in placed.cells] == ["colab-badge", "colab-setup", "maths-macros", "title"]


def test_a_stale_cell_is_refreshed_and_check_mode_says_so(tmp_path):
    path = tmp_path / "01_chapter.ipynb"
    old = notebook_macros.macro_cell({"R": "\\mathbb{R}"})
    nbformat.write(_notebook(_markdown("# Title", "title"), old), path)
    script = [sys.executable, str(ROOT / "scripts" / "notebook_macros.py")]
    check = subprocess.run([*script, "--check", str(path)], capture_output=True, text=True)
    assert check.returncode == 1 and "out of date" in check.stdout
    subprocess.run([*script, str(path)], check=True, capture_output=True)
    cells = nbformat.read(path, as_version=4).cells
    assert [c.id for c in cells] == ["maths-macros", "title"]
    assert cells[0].source == notebook_macros.macro_cell().source
    assert subprocess.run([*script, "--check", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("path", notebook_macros.notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_notebook_has_the_current_macros_cell(path):
    text = path.read_text()
    expected = notebook_macros.render(
        notebook_macros.with_macros(nbformat.reads(text, as_version=4), notebook_macros.macro_cell()))
    assert text == expected, f"run `python scripts/notebook_macros.py` (then `make exercises`): {path.name}"


def test_make_exercises_keeps_the_macros_cell(tmp_path):
    """The generated exercise notebook carries the solution's macros cell, after its header."""
    for folder in ("scripts", "solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    run = [sys.executable]
    subprocess.run([*run, str(tmp_path / "scripts" / "notebook_macros.py")], check=True,
                   capture_output=True, cwd=tmp_path)
    subprocess.run([*run, str(tmp_path / "scripts" / "make_exercises.py")], check=True,
                   capture_output=True, cwd=tmp_path)
    check = subprocess.run([*run, str(tmp_path / "scripts" / "notebook_macros.py"), "--check"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stdout  # make_exercises left the solutions' cell alone
    expected = notebook_macros.macro_cell().source
    for exercise in sorted((tmp_path / "exercises").glob("*.ipynb")):
        cells = nbformat.read(exercise, as_version=4).cells
        macros = [i for i, c in enumerate(cells) if c.source == expected]
        assert macros == [2], f"{exercise.name}: macros cell at {macros}, expected right after the header"


def test_expand_macros_writes_out_each_macro_as_mathjax_would():
    macros = {"grad": "\\nabla_{\\mathbf{x}}", "N": "\\mathcal{N}", "R": "\\mathbb{R}"}
    text = "$\\grad \\log \\N(\\mathbf{x}; 0, I)$, $\\R^D \\Rightarrow \\gradient$"
    assert notebook_macros.expand_macros(text, macros) == (
        "$\\nabla_{\\mathbf{x}} \\log \\mathcal{N}(\\mathbf{x}; 0, I)$, "
        "$\\mathbb{R}^D \\Rightarrow \\gradient$")
    with pytest.raises(ValueError, match="norm.*arguments"):
        notebook_macros.expand_macros("$x$", {"norm": ["\\lVert #1 \\rVert", 1]})


def test_the_macros_cell_is_kept_and_other_cells_are_written_out():
    cell = notebook_macros.macro_cell({"E": "\\mathbb{E}"})
    nb = _notebook(cell, _markdown("$\\E[x]$", "text"))
    expanded = notebook_macros.with_expanded_macros(nb, {"E": "\\mathbb{E}"})
    assert [c.source for c in expanded.cells] == [cell.source, "$\\mathbb{E}[x]$"]


OPENED_AS_THEY_ARE = sorted(p for folder in ("solutions", "exercises", "notebooks")
                            for p in (ROOT / folder).glob("*.ipynb"))


@pytest.mark.parametrize("path", OPENED_AS_THEY_ARE, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebooks_opened_as_they_are_use_no_macro(path):
    """GitHub, VS Code (and Colab, by some reports) do not carry a macro from one cell to the next."""
    macros = notebook_macros.config_macros()
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "markdown" and cell.get("id") != notebook_macros.CELL_ID:
            assert notebook_macros.expand_macros(cell.source, macros) == cell.source, (
                f"{path.name}, cell {index} uses a macro: run `python scripts/notebook_macros.py`"
                " and `make exercises notebooks`")
