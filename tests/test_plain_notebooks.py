"""notebooks/: the chapters as plain Jupyter notebooks (scripts/make_notebooks.py).

notebooks/ must be what the script writes from book/; each copy keeps the chapter's code cell for
cell; its equation and figure numbers and its citations must be those of the built book
(``_build/html``, skipped without a build that is newer than the chapter, failed then under
``SCORELAB_REQUIRE_BUILD=1``); the book's Colab and Binder buttons open the copy, and its
download button gives it. The conversion
rules themselves are tested on small cells, the refusal of an unknown role or directive too.
tests/test_standalone_notebooks.py renders the copies in a browser and fails on any MyST
syntax left or any MathJax error.
"""

from __future__ import annotations

import html as html_lib
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html" / "book"
sys.path.insert(0, str(ROOT / "scripts"))
import make_exercises  # noqa: E402
import make_notebooks  # noqa: E402
from make_notebooks import Chapter, SourceError  # noqa: E402

CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
URL, BRANCH = "https://github.com/org/repo", "main"


@pytest.fixture(scope="module")
def book_numbers():
    equations, figures = {}, {}
    for path in CHAPTERS:
        found = make_notebooks.numbers(nbformat.read(path, as_version=4), int(path.name[:2]))
        equations.update(found[0])
        figures.update(found[1])
    return equations, figures


@pytest.fixture(scope="module")
def bibliography():
    return make_notebooks.citations()


def test_notebooks_folder_is_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_copy_keeps_every_code_cell_after_the_set_up_and_has_no_output(path):
    book = nbformat.read(path, as_version=4)
    plain = nbformat.read(ROOT / "notebooks" / path.name, as_version=4)
    url, branch = make_exercises.repository()
    assert [c.source for c in plain.cells if c.cell_type == "code"] == [
        make_exercises.setup_cell(url, branch).source] + [
        c.source for c in book.cells if c.cell_type == "code"]
    assert "google.colab" not in "".join(c.source for c in book.cells), "the copy installs"
    for cell in plain.cells:
        assert not cell.metadata, f"{path.name}: cell {cell.id} keeps the book's metadata"
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
    assert "notebooks/" + path.name in plain.cells[0].source  # the Colab badge opens the copy


# ---------------------------------------------------------------- against the built book


def _built_page(path: Path) -> str:
    page = HTML / path.with_suffix(".html").name
    if page.exists() and page.stat().st_mtime >= path.stat().st_mtime:
        return page.read_text()
    reason = f"no build of {path.name} newer than the chapter (make book)"
    if os.environ.get("SCORELAB_REQUIRE_BUILD") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _text(fragment: str) -> str:
    return html_lib.unescape(re.sub(r"<[^>]+>", "", fragment))


def _plain_citation(text: str) -> str:
    """A citation as words and years only: the book writes [A, 2019], the copy ([A, 2019](url))."""
    text = re.sub(r"\]\([^)]*\)", "", text)  # drop the link targets of the copy
    return " ".join(re.sub(r"[\[\]();,]", " ", text).split())


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_numbers_and_citations_match_the_book(path, book_numbers, bibliography):
    page = _built_page(path)
    equations = dict(re.findall(r'id="equation-([\w:.-]+)">\s*<span class="eqno">\(([\d.]+)\)', page))
    figures = re.findall(r'<figure[^>]*id="([\w:.-]+)"[^>]*>.*?<span class="caption-number">'
                         r'Fig\. ([\d.]+)\s*</span>', page, re.DOTALL)
    chapter = int(path.name[:2])
    ours_eq = {k: v for k, v in book_numbers[0].items() if v.startswith(f"{chapter}.")}
    ours_fig = {k: v for k, v in book_numbers[1].items() if v.startswith(f"{chapter}.")}
    assert equations == ours_eq
    assert dict(figures) == ours_fig
    book_citations = [_plain_citation(_text(m)) for m in re.findall(
        r'<span class="bibtex-citation"[^>]*>(.*?)</span>', page, re.DOTALL)]
    converter = Chapter(path.name, book_numbers, bibliography, URL, BRANCH)
    ours = []
    for cell in nbformat.read(path, as_version=4).cells:
        text = cell.source if cell.cell_type == "markdown" else make_notebooks.figure_of(
            cell).get("caption", "")
        for match in make_notebooks.ROLE.finditer(text):
            if match["role"].startswith("cite"):
                ours.append(_plain_citation(converter._role(match)))
    assert ours == book_citations


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_launch_buttons_open_the_plain_copy(path):
    page = _built_page(path)
    links = re.findall(r'href="(https://(?:colab\.research\.google\.com|mybinder\.org)[^"]+)"', page)
    launch = [link for link in map(html_lib.unescape, links)  # not the exercise table's links
              if path.name in link and "/exercises/" not in link and "/solutions/" not in link]
    assert len(launch) == 2, links
    for link in launch:
        assert f"notebooks/{path.name}" in link and f"book/{path.name}" not in link, link


# ---------------------------------------------------------------- the conversion rules


@pytest.fixture
def chapter(book_numbers, bibliography):
    numbers = ({**book_numbers[0], "eq-a": "3.1", "eq-b": "3.2"},
               {**book_numbers[1], "fig-a": "3.4"})
    return Chapter("03_test.ipynb", numbers, bibliography, URL, BRANCH)


def test_equations_get_the_book_number(chapter):
    text = "Take\n\n$$\nx = 1\n$$ (eq-b)\n\nand $$y$$ (eq-a), then {eq}`eq-b` and {eq}`eq-a`."
    out = chapter.markdown(text)
    assert "$$\nx = 1\n\\tag{3.2}\n$$" in out
    assert "$$y \\tag{3.1}$$" in out
    assert out.endswith("then (3.2) and (3.1).")
    assert "$$\na\n$$\n\nplain" == chapter.markdown("$$\na\n$$\n\nplain")  # no label, no tag


def test_an_equation_in_a_list_item_keeps_its_indentation(chapter):
    text = "- **Step**:\n\n  $$\n  x = 1\n  $$ (eq-b)\n\n- next"
    assert "  $$\n  x = 1\n  \\tag{3.2}\n  $$\n\n- next" in chapter.markdown(text)


def test_figure_references_and_citations(chapter):
    assert chapter.markdown("{numref}`fig-a`") == "Fig. 3.4"
    assert chapter.markdown("{numref}`Figure %s <fig-a>`") == "Figure 3.4"
    assert chapter.markdown("{cite:t}`vincent2011connection`").startswith("[Vincent (2011)](http")
    cited = chapter.markdown("{cite}`song2019generative,song2019sliced`")
    assert _plain_citation(cited) == "Song and Ermon 2019 Song et al. 2019"
    assert cited.startswith("([Song and Ermon, 2019](https://arxiv.org/abs/1907.05600); ")
    assert chapter.markdown("{cite:t}`hyvarinen2005estimation`").startswith("[Hyvärinen (2005)]")


def test_admonitions_become_block_quotes(chapter):
    text = ":::{admonition} Before you start\n:class: note\n- one\n\n- two {eq}`eq-a`\n:::\nafter"
    assert chapter.markdown(text) == (
        "> **Before you start**\n>\n> - one\n>\n> - two (3.1)\nafter")
    assert chapter.markdown(":::{note}\nx\n:::").startswith("> **Note**\n>\n> x")


def test_links_to_other_pages_point_to_the_repository(chapter):
    assert chapter.markdown("[notation](notation.md)") == (  # the page's own plain copy
        "[notation](https://colab.research.google.com/github/org/repo/blob/main/"
        "notebooks/notation.ipynb)")
    assert chapter.markdown("[API](api.md#scores)") == f"[API]({URL}/blob/{BRANCH}/book/api.md#scores)"
    assert chapter.markdown("[ch. 2](02_langevin_dynamics.ipynb)") == (
        "[ch. 2](https://colab.research.google.com/github/org/repo/blob/main/"
        "notebooks/02_langevin_dynamics.ipynb)")
    assert chapter.markdown("[web](https://example.org/a.md)") == "[web](https://example.org/a.md)"


def test_definition_lists_become_bullet_lists():
    text = "Intro\n\n$x$\n: a point,\n  in $\\R^D$.\n\n$s$\n: the score.\n\n: not a definition"
    assert make_notebooks.definition_lists(text) == (
        "Intro\n\n- $x$: a point,\n  in $\\R^D$.\n\n- $s$: the score.\n\n: not a definition")


def test_the_notation_page_has_a_plain_copy():
    """book/notation.md as notebooks/notation.ipynb: macros, no MyST, its equation numbered (1)."""
    page = (ROOT / "book" / "notation.md").read_text()
    plain = nbformat.read(ROOT / "notebooks" / "notation.ipynb", as_version=4)
    assert "notebooks/notation.ipynb" in plain.cells[0].source
    assert plain.cells[1].id == "maths-macros" and "\\def\\grad{" in plain.cells[1].source
    assert all(c.cell_type == "markdown" and not c.metadata for c in plain.cells)
    text = "\n".join(c.source for c in plain.cells[2:])
    assert not make_notebooks.ROLE.search(text) and "\n: " not in text
    assert "\\tag{1}" in text and "half** the\n$\\alpha$ of (1)" in text
    terms = [line for line in page.splitlines() if line.startswith(": ")]
    assert len(terms) >= 8 and text.count("\n- ") == len(terms)
    for heading in re.findall(r"^#+ .*$", page, re.MULTILINE):
        assert heading in text


def test_quiz_becomes_questions_with_folded_answers():
    questions = [
        {"question": "Pick one", "type": "multiple_choice",
         "answers": [{"answer": "A", "correct": False, "feedback": "no"},
                     {"answer": "B", "correct": True, "feedback": "yes, B"}]},
        {"question": "How much?", "type": "numeric",
         "answers": [{"type": "range", "range": [1.3, 1.4], "correct": True, "feedback": "ok"},
                     {"type": "default", "feedback": "try again"}]},
    ]
    text = "\n".join(make_notebooks.quiz_markdown(questions))
    assert "**Question 1.** Pick one\n\n- (a) A\n- (b) B" in text
    assert "<details><summary>Answer</summary>\n\n**(b)** yes, B\n\n</details>" in text
    assert "**Any number from 1.3 to 1.4.** ok" in text
    assert "try again" not in text and "no" not in text.split("\n")


@pytest.mark.parametrize("text, named", [
    ("see {doc}`intro`", "{doc}"),
    ("{eq}`eq-nowhere`", "eq-nowhere"),
    ("{numref}`fig-nowhere`", "fig-nowhere"),
    ("{cite}`nobody2020`", "nobody2020"),
    ("```{figure} x.png\n```", "{figure}"),
    (":::{admonition} open\nnever closed", "never closed"),
    ("[gone](missing.md)", "missing.md"),
])
def test_unknown_syntax_is_refused_by_name(chapter, text, named):
    chapter.where = "cell 7 (cell-x)"
    with pytest.raises(SourceError, match=re.escape(named)) as error:
        chapter.markdown(text)
    assert "book/03_test.ipynb, cell 7 (cell-x)" in str(error.value)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_download_button_gives_the_plain_copy(path):
    page = _built_page(path)
    assert f'href="../_sources/book/{path.name}"' in page
    downloaded = ROOT / "_build" / "html" / "_sources" / "book" / path.name
    assert downloaded.read_text() == (ROOT / "notebooks" / path.name).read_text()


def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    for source, tags in cells:
        cell = nbformat.v4.new_markdown_cell(source)
        cell.metadata = {"tags": tags} if tags else {}
        nb.cells.append(cell)
    return nb


def test_book_only_cells_are_left_out_and_notebook_only_cells_kept(book_numbers, bibliography):
    nb = _notebook(("shared", []), ("in the static book, look at the figure", ["book-only"]),
                   ("run the cell below", ["notebook-only", "remove-cell"]))
    plain = make_notebooks.plain_notebook(nb, "03_test.ipynb", book_numbers, bibliography, URL,
                                          BRANCH)
    assert [c.source for c in plain.cells[2:]] == ["shared", "run the cell below"]
    assert all(not c.metadata for c in plain.cells)
    nb.cells[2].metadata = {"tags": ["notebook-only"]}  # the book would show it
    with pytest.raises(SourceError, match="remove-cell"):
        make_notebooks.plain_notebook(nb, "03_test.ipynb", book_numbers, bibliography, URL, BRANCH)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_the_book_leaves_out_the_notebook_only_text(path):
    page = _text(_built_page(path))
    for cell in nbformat.read(path, as_version=4).cells:
        tags = cell.metadata.get("tags", [])
        first_words = " ".join(cell.source.split()[:6])
        if "notebook-only" in tags:
            assert first_words not in " ".join(page.split()), first_words
        if "book-only" in tags:
            assert first_words in " ".join(page.split()), first_words


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_each_cell_shows_its_printed_text_as_one_block(path):
    """A loop that prints slowly leaves several stdout chunks; the book merges them
    (nb_merge_streams), so a table is never split into boxes with an empty one between."""
    page = _built_page(path)
    outputs = page.split('<div class="cell_output docutils container">')[1:]
    split = [o for o in outputs
             if o.split('<div class="cell ')[0].count('class="output stream') > 1]
    assert not split, f"{path.name}: {len(split)} cell(s) with stdout split into several blocks"
