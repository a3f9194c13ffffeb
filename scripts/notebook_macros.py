"""Give every chapter and solution notebook the maths macros of the book, so it stands alone.

Usage:
    python scripts/notebook_macros.py            # insert or refresh the macros cell
    python scripts/notebook_macros.py --check    # exit 1 when a notebook lacks the current cell

The book defines its LaTeX macros (``\\grad``, ``\\N``, ``\\E``, ``\\R``, ...) once, in _config.yml
(``sphinx.config.mathjax3_config.tex.macros``). A notebook opened in Jupyter or Colab does not
read that file, and its formulas would show MathJax errors. This script writes ONE markdown cell
(id ``maths-macros``) that defines the same macros with ``\\def`` (which MathJax 2 and 3 and
KaTeX all accept; KaTeX refuses to ``\\newcommand`` its own ``\\R`` and ``\\N``):

- in book/*.ipynb it is the first cell; in solutions/*.ipynb it comes right after the Colab
  badge and set-up cells that scripts/make_exercises.py puts first (that script copies it into
  exercises/ at the same place);
- it is tagged ``remove-cell``, so the book, which has the macros from _config.yml, drops it;
  in Jupyter and Colab it renders as an empty line (its source is not folded: JupyterLab does
  not render a folded markdown cell, and its macros would stay undefined);
- running the script twice changes nothing; after editing the macros in _config.yml, run it
  again (and then scripts/make_exercises.py).

A macro defined in one cell is not seen in another by every renderer: GitHub's and VS Code's
notebook views show ``\\grad`` as an error, and Colab's has been reported to. So the notebooks that
readers open as they are, solutions/ (and exercises/, generated from them) and the plain copies
in notebooks/ (scripts/make_notebooks.py), have every macro written out
(:func:`expand_macros`); only book/, which the book renders with _config.yml's macros, keeps
them. The cell stays in every notebook, for formulas a reader writes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"
FOLDERS = ("book", "solutions")
EXPANDED = ("solutions",)  # opened as they are (Colab, GitHub, VS Code): macros written out
CELL_ID = "maths-macros"
# the first cells of a solution notebook, written by scripts/make_exercises.py
HEADER_IDS = ("colab-badge", "colab-setup")


def config_macros(config_path: Path = CONFIG) -> dict[str, str | list]:
    """The MathJax macros of _config.yml: name -> definition, or [definition, number of args]."""
    config = yaml.safe_load(config_path.read_text()) or {}
    try:
        macros = config["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    except (KeyError, TypeError):
        raise ValueError(f"{config_path.name} defines no sphinx.config.mathjax3_config.tex.macros")
    if not isinstance(macros, dict) or not macros:
        raise ValueError(f"{config_path.name}: the MathJax macros must be a non-empty mapping")
    return macros


def definitions(macros: dict[str, str | list]) -> str:
    """``\\def`` definitions of the macros, in the order of the config (``\\def\\R{...}``,
    ``\\def\\norm#1{...}`` for a macro of one argument)."""
    lines = []
    for name, definition in macros.items():
        arguments = ""
        if isinstance(definition, list):
            if len(definition) != 2 or not isinstance(definition[1], int):
                raise ValueError(f"macro {name!r}: expected a string or [definition, n_args], "
                                 f"got {definition!r}")
            definition, n_args = definition
            arguments = "".join(f"#{k}" for k in range(1, n_args + 1))
        lines.append(f"\\def\\{name}{arguments}{{{definition}}}")
    return "\n".join(lines)


def expand_macros(text: str, macros: dict[str, str | list] | None = None) -> str:
    """``text`` with every use of a macro written out, as MathJax would (``\\grad \\log p`` ->
    ``\\nabla_{\\mathbf{x}} \\log p``); a name followed by a letter (``\\Rightarrow``) is another
    command and stays. Only macros without arguments can be written out."""
    macros = config_macros() if macros is None else macros
    for name, definition in macros.items():
        if not isinstance(definition, str):
            raise ValueError(f"macro {name!r} takes arguments: only macros without arguments can "
                             "be written out")
        text = re.sub(rf"\\{re.escape(name)}(?![A-Za-z])", lambda _: definition, text)
    return text


def with_expanded_macros(nb, macros: dict[str, str | list] | None = None):
    """The notebook with the macros written out in every markdown cell but the macros cell."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.get("id") != CELL_ID:
            cell.source = expand_macros(cell.source, macros)
    return nb


def macro_cell(macros: dict[str, str | list] | None = None):
    """The markdown cell that defines the macros (hidden in the book, empty in Jupyter)."""
    macros = config_macros() if macros is None else macros
    source = (
        "<!-- The book's maths macros, for Jupyter and Colab (the book itself reads them from\n"
        "_config.yml and removes this cell). Written by scripts/notebook_macros.py. -->\n"
        f"$$\n{definitions(macros)}\n$$"
    )
    cell = nbformat.v4.new_markdown_cell(source)
    cell.id = CELL_ID
    # Not folded: JupyterLab does not render a markdown cell whose source is hidden, and then
    # the macros would never be defined. Rendered, the cell is an empty line.
    cell.metadata = {"tags": ["remove-cell"]}
    return cell


def with_macros(nb, cell):
    """The notebook with exactly one macros cell, at its place (a new object)."""
    nb = nbformat.from_dict(nb)
    cells = [c for c in nb.cells if c.get("id") != CELL_ID]
    position = 0
    while position < len(cells) and cells[position].get("id") in HEADER_IDS:
        position += 1
    nb.cells = cells[:position] + [cell] + cells[position:]
    return nb


def render(nb) -> str:
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def notebooks(root: Path = ROOT) -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (root / folder).glob("*.ipynb"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a notebook's macros cell is missing or stale")
    parser.add_argument("paths", nargs="*", type=Path,
                        help="notebooks to treat (default: book/*.ipynb and solutions/*.ipynb)")
    args = parser.parse_args(argv)
    cell = macro_cell()
    stale = []
    for path in args.paths or notebooks():
        text = path.read_text()
        nb = with_macros(nbformat.reads(text, as_version=4), cell)
        if path.resolve().parent.name in EXPANDED:
            nb = with_expanded_macros(nb)
        new = render(nb)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
                print(f"wrote the macros of {path}")
    if args.check:
        for path in stale:
            print(f"macros cell missing or out of date: {path}")
        if stale:
            print("run `python scripts/notebook_macros.py` (then `make exercises`) and commit")
            return 1
        print("every notebook defines the book's maths macros")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
