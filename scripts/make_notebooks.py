"""Write notebooks/: the chapters of book/ as plain Jupyter notebooks, for Colab, Binder and Jupyter.

Usage:
    python scripts/make_notebooks.py           # write notebooks/
    python scripts/make_notebooks.py --check   # exit 1 when notebooks/ differs from what it would write

The chapters in book/ are written for the book: MyST roles (``{eq}``, ``{numref}``, ``{cite}``),
directives (admonitions, the quiz), equation labels and the figure captions kept in cell metadata
are rendered by Jupyter Book, and show as raw text, or not at all, anywhere else. For each
book/NN_name.ipynb this script writes notebooks/NN_name.ipynb with the same cells and the same
code, in plain Jupyter Markdown:

- a labelled equation ``$$ ... $$ (label)`` gets ``\\tag{C.k}`` and ``{eq}`label``` becomes
  "(C.k)", the number the book gives it (chapter C, k-th labelled equation of the chapter);
- ``{numref}`label``` becomes "Fig. C.k", and each figure cell is followed by a markdown cell
  with its number and caption (the book reads them from the cell's ``mystnb`` metadata);
- ``{cite}``, ``{cite:p}`` and ``{cite:t}`` become author-year citations, as the book's
  bibliography writes them (book/references.bib), linked to the paper;
- admonitions become block quotes under a bold title; the self-check quiz becomes its questions,
  each answer folded under "Answer";
- the book's maths macros (``\\grad``, ``\\E``, ...) are written out (notebook_macros.py says
  why);
- links to the book's other pages point to the repository (a chapter: its copy here, in Colab;
  the notation page: its copy here, notebooks/notation.ipynb, in Colab).

The notation page (book/notation.md) is copied too, as notebooks/notation.ipynb: a notebook of
markdown cells, one per section, with the maths macros, its definition lists written as bullet
lists (Jupyter Markdown has no definition lists) and its equation numbered as the book numbers it.

A markdown cell tagged ``book-only`` (say, "the sliders cannot move in this static page") is
left out; one tagged ``notebook-only`` (which must also be tagged ``remove-cell``, so that the
book leaves it out) is kept. Every notebook opens with an "Open in Colab" badge to its own copy
and the set-up cell of the exercise notebooks, which installs the course package where it is
missing (the book, built where it is installed, needs none). Any other role or directive
stops the script, naming the notebook and cell, so that it gets a plain form here before a
student meets it raw. tests/test_standalone_notebooks.py checks the numbers and citations
against the built book and that no MyST syntax is left; the book's Colab and Binder buttons open
these copies (book/_ext/scorelab_sphinx.py).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_exercises import (BADGE_ID, NOTEBOOK_METADATA, SourceError,  # noqa: E402
                            badge_source, colab_url, generator_main, render, repository,
                            setup_cell)
from notebook_macros import CELL_ID, expand_macros, macro_cell  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = ROOT / "notebooks"
BIBLIOGRAPHY = BOOK / "references.bib"
NOTATION = BOOK / "notation.md"
# book pages that are not chapters, and the name of their copy in notebooks/
PAGE_COPIES = {"notation.md": "notation.ipynb"}
GENERATED = ("<!-- Generated from book/{name} by scripts/make_notebooks.py: edit that file, "
             "then run `make notebooks`. -->")

ROLE = re.compile(r"\{(?P<role>[a-z:]+)\}`(?P<target>[^`]+)`")
# a display equation, with the MyST label that may follow its closing $$
DISPLAY = re.compile(r"\$\$(?P<body>.*?)\$\$(?:[ \t]*\((?P<label>[\w:.-]+)\))?", re.DOTALL)
FENCE = re.compile(r"^(?P<fence>:{3,}|`{3,})\{(?P<name>[\w-]+)\}[ \t]*(?P<argument>.*)$")
OPTION = re.compile(r"^:[\w-]+:")
LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")
ADMONITIONS = {"note": "Note", "tip": "Tip", "hint": "Hint", "important": "Important",
               "warning": "Warning", "caution": "Caution", "attention": "Attention",
               "danger": "Danger", "error": "Error", "seealso": "See also"}
QUIZ_INTRO = ("Test yourself, then unfold each answer to check it. (In the HTML book this quiz "
              "checks your answers as you give them.)")


# ---------------------------------------------------------------- numbers and citations


def numbers(nb, chapter: int) -> tuple[dict[str, str], dict[str, str]]:
    """The book's numbers ``C.k`` of the chapter's labelled equations and of its named figures.

    Sphinx numbers, per chapter and in the order they appear, the labelled display equations and
    the captioned figures (here: code cells with a ``mystnb.figure.caption``)."""
    equations, figures = {}, {}
    n_figures = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for match in DISPLAY.finditer(cell.source):
                if match["label"]:
                    equations[match["label"]] = f"{chapter}.{len(equations) + 1}"
        elif figure_of(cell):
            n_figures += 1
            label = figure_of(cell).get("name") or f"{chapter:02d}#{n_figures}"
            figures[label] = f"{chapter}.{n_figures}"
    return equations, figures


def figure_of(cell) -> dict:
    """The ``mystnb`` figure options of a code cell (caption, name), or {} when it has none."""
    figure = cell.metadata.get("mystnb", {}).get("figure", {})
    return figure if cell.cell_type == "code" and figure.get("caption") else {}


def citations(path: Path = BIBLIOGRAPHY) -> dict[str, tuple[str, str, str]]:
    """Each entry's (authors, year, url), authors as the book's author-year style writes them:
    "Vincent", "Song and Ermon", "Song et al."."""
    from pybtex.database import parse_file
    from pybtex.richtext import Text

    entries = {}
    for key, entry in parse_file(str(path)).entries.items():
        last = [str(Text.from_latex(" ".join(p.last_names))) for p in entry.persons["author"]]
        authors = last[0] if len(last) == 1 else (
            f"{last[0]} and {last[1]}" if len(last) == 2 else f"{last[0]} et al.")
        fields = entry.fields
        url = fields.get("url") or (f"https://doi.org/{fields['doi']}" if "doi" in fields else "")
        # parentheses in a URL (some DOIs have them) would end the Markdown link early
        entries[key] = (authors, fields["year"], url.replace("(", "%28").replace(")", "%29"))
    return entries


# ---------------------------------------------------------------- markdown


class Chapter:
    """What converting one chapter needs: the book's numbers (labels are global, so a chapter
    may refer to another's equation), the bibliography and the repository."""

    def __init__(self, name: str, book_numbers: tuple[dict, dict], bibliography: dict,
                 url: str, branch: str):
        self.name = name
        self.equations, self.figures = book_numbers
        self.bibliography = bibliography
        self.url, self.branch = url, branch
        self.where = ""

    def fail(self, message: str):
        raise SourceError(f"book/{self.name}, {self.where}: {message}")

    def markdown(self, text: str) -> str:
        """A markdown cell of the chapter in plain Jupyter Markdown."""
        text = DISPLAY.sub(self._equation, text)
        text = ROLE.sub(self._role, text)
        text = LINK.sub(self._link, text)
        return expand_macros(self._directives(text))

    def _equation(self, match) -> str:
        body, label = match["body"], match["label"]
        if not label:
            return match[0]
        tag = f"\\tag{{{self.equations[label]}}}"
        if "\n" not in body:
            return f"$${body} {tag}$$"
        indent = body.rsplit("\n", 1)[1]  # an equation inside a list item keeps its indentation
        indent = indent if not indent.strip() else ""
        return f"$${body.rstrip()}\n{indent}{tag}\n{indent}$$"

    def _role(self, match) -> str:
        role, target = match["role"], match["target"]
        if role == "eq":
            if target not in self.equations:
                self.fail(f"{{eq}}`{target}` names no labelled equation of the book")
            return f"({self.equations[target]})"
        if role == "numref":
            text, _, label = target.rpartition("<") if target.endswith(">") else ("", "", target)
            label = label.rstrip(">").strip()
            if label not in self.figures:
                self.fail(f"{{numref}}`{target}` names no figure of the book")
            number = self.figures[label]
            return (text.strip().replace("%s", number).replace("{number}", number)
                    if text else f"Fig. {number}")
        if role in ("cite", "cite:p", "cite:t"):
            return self._citation(role, [key.strip() for key in target.split(",")])
        self.fail(f"the role {{{role}}} has no plain-Markdown form in scripts/make_notebooks.py")

    def _citation(self, role: str, keys: list[str]) -> str:
        parts = []
        for key in keys:
            if key not in self.bibliography:
                self.fail(f"the citation key {key!r} is not in book/references.bib")
            authors, year, url = self.bibliography[key]
            text = f"{authors} ({year})" if role == "cite:t" else f"{authors}, {year}"
            parts.append(f"[{text}]({url})" if url else text)
        return ", ".join(parts) if role == "cite:t" else "(" + "; ".join(parts) + ")"

    def _link(self, match) -> str:
        target, anchor = match["target"], match["anchor"] or ""
        if re.match(r"[a-z]+:", target):
            return match[0]
        page = (BOOK / target).resolve()
        if not page.exists():
            self.fail(f"the link target {target!r} is not a file of book/")
        relative = page.relative_to(ROOT).as_posix()
        copy_name = page.name if page.suffix == ".ipynb" else PAGE_COPIES.get(page.name)
        if page.parent == BOOK and copy_name:  # a page with a plain copy: open the copy in Colab
            return f"]({colab_url(self.url, self.branch, 'notebooks/' + copy_name)})"
        return f"]({self.url}/blob/{self.branch}/{relative}{anchor})"

    def _directives(self, text: str) -> str:
        lines, out, i = text.split("\n"), [], 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if not opening:
                out.append(lines[i])
                i += 1
                continue
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j].strip() == opening["fence"]), None)
            if end is None:
                self.fail(f"the directive {{{opening['name']}}} is never closed")
            body = lines[i + 1:end]
            while body and OPTION.match(body[0]):
                body = body[1:]
            out.extend(self._directive(opening["name"], opening["argument"].strip(), body))
            i = end + 1
        return "\n".join(out)

    def _directive(self, name: str, argument: str, body: list[str]) -> list[str]:
        if name == "admonition" or name in ADMONITIONS:
            title = argument if name == "admonition" else ADMONITIONS[name]
            inner = self._directives("\n".join(body)).split("\n")
            return [f"> **{title}**", ">"] + [f"> {line}".rstrip() for line in inner]
        if name == "quiz":
            return quiz_markdown(json.loads((BOOK / argument).read_text()))
        self.fail(f"the directive {{{name}}} has no plain-Markdown form in scripts/make_notebooks.py")


def quiz_markdown(questions: list[dict]) -> list[str]:
    """The book's quiz (book/quizzes/NN.json) as numbered questions with folded answers."""
    lines = []
    for number, question in enumerate(questions, start=1):
        lines += [f"**Question {number}.** {question['question']}", ""]
        answers = [a for a in question["answers"] if a.get("type") != "default"]
        if question["type"] == "multiple_choice":
            letters = "abcdefghij"
            lines += [f"- ({letters[k]}) {a['answer']}" for k, a in enumerate(answers)] + [""]
            right = [f"**({letters[k]})** {a['feedback']}"
                     for k, a in enumerate(answers) if a["correct"]]
        else:
            right = [f"**{_numeric(a)}.** {a['feedback']}" for a in answers if a["correct"]]
        lines += ["<details><summary>Answer</summary>", "", "\n\n".join(right), "",
                  "</details>", ""]
    return lines[:-1]


def _numeric(answer: dict) -> str:
    if answer["type"] == "range":
        low, high = answer["range"]
        return f"Any number from {low} to {high}"
    return f"{answer['value']}"


# ---------------------------------------------------------------- notebooks


def plain_notebook(book_nb, name: str, book_numbers: tuple[dict, dict], bibliography: dict,
                   url: str, branch: str):
    """The chapter ``book/name`` as the plain notebook ``notebooks/name``."""
    chapter = Chapter(name, book_numbers, bibliography, url, branch)
    setup = setup_cell(url, branch)
    setup.metadata = {}
    cells, n_figures = [_badge_cell(url, branch, name, name), setup], 0
    for index, cell in enumerate(book_nb.cells):
        chapter.where = f"cell {index} ({cell.get('id', '?')})"
        tags = cell.metadata.get("tags", [])
        if "notebook-only" in tags and "remove-cell" not in tags:
            chapter.fail("a notebook-only cell needs the tag remove-cell too, or the book shows it")
        if "book-only" in tags:
            continue
        new = copy.deepcopy(cell)
        new.metadata = {}
        if cell.cell_type == "markdown" and cell.get("id") != CELL_ID:
            new.source = chapter.markdown(cell.source)
            if "```{quiz}" in cell.source:
                new.source = _quiz_cell(new.source)
        elif cell.cell_type == "code":
            new.outputs, new.execution_count = [], None
        cells.append(new)
        if figure_of(cell):
            n_figures += 1
            cells.append(_caption_cell(chapter, cell, n_figures))
    return _notebook(cells)


def _badge_cell(url: str, branch: str, name: str, source: str):
    """The Colab badge of ``notebooks/name``, with the note that it is generated from ``source``."""
    badge = nbformat.v4.new_markdown_cell(
        badge_source(url, branch, "notebooks", name) + "\n" + GENERATED.format(name=source))
    badge.id = BADGE_ID
    return badge


def _notebook(cells):
    nb = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(NOTEBOOK_METADATA))
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb


def definition_lists(text: str) -> str:
    """MyST definition lists (``term`` then ``: definition``) as bullet lists ``- term: definition``.

    Continuation lines of a definition are indented by two spaces in the book, which is also what
    keeps them inside the bullet's list item."""
    lines = text.split("\n")
    out = []
    for line in lines:
        if line.startswith(": ") and out and out[-1].strip():
            out[-1] = f"- {out[-1]}: {line[2:]}"
        else:
            out.append(line)
    return "\n".join(out)


def page_equations(text: str) -> dict[str, str]:
    """The book's numbers of the labelled equations of an unnumbered page: 1, 2, ..."""
    labels = [m["label"] for m in DISPLAY.finditer(text) if m["label"]]
    return {label: str(k) for k, label in enumerate(labels, start=1)}


def notation_notebook(book_numbers: tuple[dict, dict], bibliography: dict, url: str,
                      branch: str):
    """book/notation.md as notebooks/notation.ipynb: a markdown cell per section, macros first."""
    name = PAGE_COPIES[NOTATION.name]
    text = NOTATION.read_text()
    equations = {**book_numbers[0], **page_equations(text)}
    page = Chapter(NOTATION.name, (equations, book_numbers[1]), bibliography, url, branch)
    sections = re.split(r"\n(?=## )", definition_lists(text).strip())
    macros = macro_cell()
    macros.metadata = {}
    cells = [_badge_cell(url, branch, name, NOTATION.name), macros]
    for index, section in enumerate(sections):
        page.where = f"section {index + 1}"
        cell = nbformat.v4.new_markdown_cell(page.markdown(section))
        cell.id = f"section-{index + 1}"
        cells.append(cell)
    return _notebook(cells)


def _quiz_cell(source: str) -> str:
    """The quiz cell: its heading, a plain-notebook introduction, the questions."""
    heading, _, rest = source.partition("\n")
    first_question = rest.index("**Question 1.**")
    return f"{heading}\n\n{QUIZ_INTRO}\n\n{rest[first_question:]}"


def _caption_cell(chapter: Chapter, cell, ordinal: int):
    """A markdown cell with the number and caption of the figure that ``cell`` draws."""
    figure = figure_of(cell)
    number = chapter.figures[figure.get("name") or f"{chapter.name[:2]}#{ordinal}"]
    caption = nbformat.v4.new_markdown_cell(
        f"**Fig. {number}.** {chapter.markdown(figure['caption'])}")
    caption.id = f"{cell.get('id', 'cell')}-caption"[:64]
    return caption


def planned_files() -> dict[Path, str]:
    """Every file this script owns, mapped to the text it should hold."""
    url, branch = repository()
    bibliography = citations()
    files = {}
    sources = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise SourceError(f"no chapter notebooks (NN_name.ipynb) in {BOOK}")
    chapters = {path.name: nbformat.read(path, as_version=4) for path in sources}
    equations, figures = {}, {}
    for name, book_nb in chapters.items():
        chapter_equations, chapter_figures = numbers(book_nb, int(name[:2]))
        equations.update(chapter_equations)
        figures.update(chapter_figures)
    for name, book_nb in chapters.items():
        files[NOTEBOOKS / name] = render(
            plain_notebook(book_nb, name, (equations, figures), bibliography, url, branch))
    files[NOTEBOOKS / PAGE_COPIES[NOTATION.name]] = render(
        notation_notebook((equations, figures), bibliography, url, branch))
    return files


def main(argv: list[str]) -> int:
    return generator_main(argv, planned_files, NOTEBOOKS, "book/",
                          "`make notebooks` (python scripts/make_notebooks.py)",
                          "notebooks/ is up to date")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
