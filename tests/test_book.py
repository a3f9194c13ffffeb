"""The book's configuration and table of contents agree with the files in book/.

These checks catch, in a second, what would otherwise fail a full book build with -W:
a table-of-contents entry without its file, a citation key missing from references.bib,
an equation reference without its label, a settings mistake that sends launch buttons elsewhere,
a quiz file jupyterquiz could not read.

The book is built from the repository root (``jupyter-book build .``, which ``make book`` runs):
_config.yml, _toc.yml and every path in them are relative to the root.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())

CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
EQ_REF = re.compile(r"\{eq\}`([^`]+)`")
EQ_LABEL = re.compile(r"\$\$\s*\(([A-Za-z0-9_:\-]+)\)|:label:\s*([A-Za-z0-9_:\-]+)")
BIB_KEY = re.compile(r"^@\w+\{([^,\s]+),", re.M)


def _toc_files(entries) -> list[str]:
    files = []
    for entry in entries or []:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("parts", "chapters", "sections"):
            files.extend(_toc_files(entry.get(key)))
    return files


def toc_files() -> list[str]:
    return [TOC["root"], *_toc_files([TOC])]


def _source_path(name: str) -> Path | None:
    for suffix in (".md", ".ipynb"):
        if (ROOT / f"{name}{suffix}").exists():
            return ROOT / f"{name}{suffix}"
    return None


def _markdown(path: Path) -> str:
    if path.suffix == ".md":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def page_texts() -> dict[str, str]:
    """Markdown of every page the book builds (notebooks: their markdown cells), by path."""
    paths = set(BOOK.glob("*.md")) | set(BOOK.glob("*.ipynb"))
    paths |= {p for p in map(_source_path, toc_files()) if p is not None}
    return {str(p.relative_to(ROOT)): _markdown(p) for p in sorted(paths)}


def test_toc_format_and_parts():
    assert TOC["format"] == "jb-book"
    assert TOC["root"] == "book/intro"
    captions = [part["caption"] for part in TOC["parts"]]
    assert captions[:2] == ["Foundations", "Sampling with scores"]
    for part in TOC["parts"]:
        assert part.get("chapters"), f"part {part['caption']!r} needs at least one chapter"


@pytest.mark.parametrize("name", toc_files())
def test_every_toc_entry_exists(name):
    assert _source_path(name) is not None, f"_toc.yml lists {name!r} but there is no {name}.md or .ipynb"


def test_toc_lists_each_file_once():
    files = toc_files()
    assert len(files) == len(set(files)), f"duplicate entries in _toc.yml: {files}"


def test_every_page_is_in_the_toc():
    listed = set(toc_files())
    pages = {f"book/{p.stem}" for p in [*BOOK.glob("*.md"), *BOOK.glob("*.ipynb")]}
    pages |= {f"solutions/{p.stem}" for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")}
    assert pages <= listed, f"pages missing from _toc.yml: {sorted(pages - listed)}"


def test_every_citation_is_in_references_bib():
    bib_keys = set(BIB_KEY.findall((BOOK / "references.bib").read_text()))
    assert CONFIG["bibtex_bibfiles"] == ["book/references.bib"]
    for name, text in page_texts().items():
        for group in CITE.findall(text):
            for key in (k.strip() for k in group.split(",")):
                assert key in bib_keys, f"{name} cites {key!r}, which book/references.bib lacks"


def test_references_bib_keys_are_unique_and_complete():
    keys = BIB_KEY.findall((BOOK / "references.bib").read_text())
    assert len(keys) == len(set(keys)), "duplicate keys in references.bib"
    required = {
        "song2019generative", "song2019sliced", "vincent2011connection", "hyvarinen2005estimation",
        "welling2011bayesian", "roberts1996exponential", "haario1999adaptive", "song2020improved",
        "song2021scorebased", "ho2020denoising", "lin2017refinenet", "ulyanov2016instance",
        "dumoulin2017learned",
    }
    assert required <= set(keys)


def test_every_equation_reference_has_a_label():
    texts = page_texts()
    labels = {a or b for text in texts.values() for a, b in EQ_LABEL.findall(text)}
    for name, text in texts.items():
        for label in EQ_REF.findall(text):
            assert label in labels, f"{name} refers to equation {label!r}, which no page labels"


def test_bibliography_page_exists():
    assert "```{bibliography}" in (BOOK / "bibliography.md").read_text()
    assert "book/bibliography" in toc_files()


def test_config_points_at_the_repository_and_launchers():
    # the source folder is the root, so a page's docname is already its path in the repository:
    # Colab opens {url}/blob/{branch}/book/01_densities_and_scores.ipynb
    assert CONFIG["repository"] == {
        "url": "https://github.com/scorelab-course/scorelab", "path_to_book": "", "branch": "main",
    }
    for name in toc_files():
        assert name.split("/")[0] in ("book", "solutions"), f"{name}: pages live in book/ or solutions/"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert CONFIG["html"]["use_repository_button"] and CONFIG["html"]["use_issues_button"]


def test_config_executes_with_cache_and_visible_failures():
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "cache"
    assert execute["timeout"] >= 600
    assert execute.get("raise_on_error") or not execute.get("allow_errors", False)
    assert CONFIG["only_build_toc_files"] is True


def test_config_paths_resolve_against_the_root():
    """`jupyter-book build .` resolves the logo, favicon and bibliography against the root."""
    for path in (CONFIG["logo"], CONFIG["html"]["favicon"], *CONFIG["bibtex_bibfiles"]):
        assert (ROOT / path).is_file(), f"{path} (relative to the repository root) is missing"
    for name, folder in CONFIG["sphinx"]["local_extensions"].items():
        assert (ROOT / folder / f"{name}.py").is_file()


def test_make_book_runs_the_guides_command():
    """`make book` is `jupyter-book build .` from the root, strict; the browser test builds the same."""
    makefile = (ROOT / "Makefile").read_text()
    command = re.search(r"^BOOK_BUILD := (.+)$", makefile, re.M).group(1).split()
    assert command[0].endswith("jupyter-book") and command[1:3] == ["build", "."]
    assert "-W" in command and "--toc" not in command and "--config" not in command
    # make book first executes the notebooks into the build's cache, then runs the build
    assert re.search(r"^book: .*\n\t\$\(PY\) scripts/execute_notebooks\.py\n\t\$\(BOOK_BUILD\)$",
                     makefile, re.M)
    assert not (BOOK / "_toc.yml").exists() and not (BOOK / "_config.yml").exists()


def test_myst_extensions_are_listed_and_installed():
    extensions = set(CONFIG["parse"]["myst_enable_extensions"])
    assert {"amsmath", "dollarmath", "colon_fence", "deflist", "substitution"} <= extensions
    if "linkify" in extensions:
        assert importlib.util.find_spec("linkify_it") is not None, "linkify needs linkify-it-py"
    texts = "\n".join(page_texts().values())
    if re.search(r"^:::", texts, re.M):
        assert "colon_fence" in extensions
    if "\\begin{align" in texts:
        assert "amsmath" in extensions


def test_sphinx_extensions_are_importable():
    for name in CONFIG["sphinx"]["extra_extensions"]:
        assert importlib.util.find_spec(name) is not None, f"sphinx extension {name} is not installed"


@pytest.mark.parametrize("image", ["logo.png", "favicon.png", "welcome.png"])
def test_static_images_are_small(image):
    path = BOOK / "_static" / image
    assert path.exists(), f"book/_static/{image} is missing (run book/_static/make_images.py)"
    assert path.stat().st_size < 100 * 1024


# --- self-check quizzes: book/quizzes/NN.json, shown by the {quiz} directive of book/_ext ----------

QUIZZES = BOOK / "quizzes"
QUIZ_DIRECTIVE = re.compile(r"^```\{quiz\}\s+(\S+)\s*$", re.M)


def _quiz_checker():
    spec = importlib.util.spec_from_file_location("scorelab_sphinx", BOOK / "_ext" / "scorelab_sphinx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check_quiz


def _chapters() -> list[Path]:
    return sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("chapter", _chapters(), ids=lambda p: p.stem)
def test_every_chapter_ends_with_its_quiz(chapter):
    cells = json.loads(chapter.read_text())["cells"]
    last = "".join(cells[-1]["source"])
    targets = QUIZ_DIRECTIVE.findall(last)
    assert cells[-1]["cell_type"] == "markdown" and targets, f"{chapter.name} must end with a quiz"
    assert targets == [f"quizzes/{chapter.name[:2]}.json"], targets
    assert (chapter.parent / targets[0]).is_file(), f"{chapter.name}: {targets[0]} is missing"


@pytest.mark.parametrize("path", sorted(QUIZZES.glob("*.json")), ids=lambda p: p.name)
def test_quiz_files_are_valid_jupyterquiz(path):
    """3-6 questions in jupyterquiz's format, each with a right and a wrong answer and feedback."""
    questions = _quiz_checker()(json.loads(path.read_text()), where=path.name)
    assert 3 <= len(questions) <= 6, f"{path.name}: {len(questions)} questions, expected 3 to 6"
    for question in questions:
        answers = question["answers"]
        assert any(a.get("correct") is False for a in answers), f"{path.name}: no wrong answer to explain"
        assert all(a.get("feedback") for a in answers), f"{path.name}: an answer without feedback"
    used = {target for chapter in _chapters() for target in QUIZ_DIRECTIVE.findall(_markdown(chapter))}
    assert f"quizzes/{path.name}" in used, f"no chapter shows {path.name}"


@pytest.mark.parametrize("broken, message", [
    ([], "1 to 10 questions"),
    ([{"question": "q", "type": "essay", "answers": []}], "'type' must be one of"),
    ([{"question": "q", "type": "multiple_choice",
       "answers": [{"answer": "a", "correct": True, "feedback": "f"}]}], "one wrong choice"),
    ([{"question": "q", "type": "numeric",
       "answers": [{"type": "range", "range": [2, 1], "correct": True, "feedback": "f"}]}], "range"),
    ([{"question": "q", "type": "numeric",
       "answers": [{"type": "value", "value": 1, "correct": False, "feedback": "f"}]}], "no numeric"),
])
def test_a_malformed_quiz_is_named(broken, message):
    with pytest.raises(ValueError, match=message):
        _quiz_checker()(broken, where="broken.json")
