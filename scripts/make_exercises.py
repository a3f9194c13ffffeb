"""Generate the student notebooks in exercises/ from the solved notebooks in solutions/.

Usage:
    python scripts/make_exercises.py           # write exercises/, normalise solutions/
    python scripts/make_exercises.py --check   # exit 1 when either differs from what it would write

solutions/NN_name.ipynb is the single source of every exercise. In it:

- a code region between the lines ``# BEGIN SOLUTION`` and ``# END SOLUTION`` becomes a stub,
  at the marker's indentation: the region's ``# HINT:`` comment line (one conceptual hint at
  most, tests/test_exercises.py checks; the further tiers are ``checks.hint("N.k")``), then
  ``raise NotImplementedError("Exercise N.k: ...")``; when the region has lines
  ``# EXERCISE: code`` (a *debug* exercise: the buggy code the student starts from), those
  lines' code replaces the region instead of the raise;
- each exercise's heading cell ``## Exercise N.k: title ★★`` carries the cell metadata
  ``"exercise": {"id": "N.k", "kind": "derive"|"implement"|"investigate"|"debug",
  "level": 1|2|3}`` (the stars show the level); it is checked and carried to the exercise;
- a markdown region between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` becomes
  "*Your answer here.*";
- the exercise number N.k comes from the last markdown heading ``Exercise N.k`` above the region;
- cells tagged ``solution-only`` are dropped.

Both folders get the same first two cells, rewritten on every run: an "Open in Colab" badge
(to the notebook's own folder) and a set-up cell that installs the course package from the
repository when it is not importable and enables Colab's widget manager on Colab. The
repository URL and branch come from one place: ``repository:`` in the root _config.yml.
Solution code cells are tagged ``hide-input`` so the book folds them. Exercises get no
outputs, no execution counts, cleaned metadata and the source's cell ids, so the output
depends only on the input and running the script twice changes nothing.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
BOOK = ROOT / "book"
EXERCISES = ROOT / "exercises"
CONFIG = ROOT / "_config.yml"

BEGIN_CODE, END_CODE = "# BEGIN SOLUTION", "# END SOLUTION"
BEGIN_TEXT, END_TEXT = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
HINT_PREFIX = "# HINT:"
PROMPT_PREFIX = "# EXERCISE:"
KINDS = ("derive", "implement", "investigate", "debug")
HEADING = re.compile(r"^##\s+Exercise\s+(\d+\.\d+):\s*([^★]*?)\s*(★{1,3})?\s*$")
EXERCISE_HEADING = re.compile(r"^#+\s.*\bExercise\s+(\d+\.\d+)\b", re.MULTILINE)
SOLUTION_ONLY = "solution-only"
BADGE_ID, SETUP_ID = "colab-badge", "colab-setup"
# Tags the student copy does not need: they shape the rendered book or mark nbval-checked output.
BOOK_ONLY_TAGS = {
    "nbval-check-output",
    "hide-input",
    "hide-output",
    "hide-cell",
    "remove-input",
    "remove-output",
    "remove-cell",
}
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python", "pygments_lexer": "ipython3"},
}
SETUP_SOURCE = """\
# Set-up: install the course package when it is missing (on Colab, for instance).
import importlib.util
import sys

if "google.colab" in sys.modules:
    from google.colab import output

    output.enable_custom_widget_manager()  # the course's ipywidgets render in Colab
if importlib.util.find_spec("scorelab") is None:
    %pip install -q "git+{url}@{branch}"
    importlib.invalidate_caches()"""


class SourceError(ValueError):
    """A solution notebook breaks the marker rules; the message names the notebook and cell."""


def repository() -> tuple[str, str]:
    """The repository URL and branch from _config.yml's ``repository:`` section."""
    config = yaml.safe_load(CONFIG.read_text())
    section = (config or {}).get("repository") or {}
    url = str(section.get("url", "")).rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise SourceError(
            f"{CONFIG.name}: repository.url must be https://github.com/ORG/REPO, got {url!r}"
        )
    return url.removesuffix(".git"), str(section.get("branch", "main"))


def colab_url(url: str, branch: str, path: str) -> str:
    """The Colab address that opens ``path`` (relative to the repository root) of ``url``."""
    org_repo = url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{path}"


def badge_source(url: str, branch: str, folder: str, name: str) -> str:
    """Markdown for the "Open in Colab" badge of ``folder/name``."""
    target = colab_url(url, branch, f"{folder}/{name}")
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({target})"


def header_cells(url: str, branch: str, folder: str, name: str) -> list:
    """The badge and set-up cells that open every exercise and solution notebook."""
    badge = nbformat.v4.new_markdown_cell(badge_source(url, branch, folder, name))
    badge.id = BADGE_ID
    return [badge, setup_cell(url, branch)]


def setup_cell(url: str, branch: str):
    """The set-up cell (hidden in the book) that opens every notebook a student can run."""
    setup = nbformat.v4.new_code_cell(SETUP_SOURCE.format(url=url, branch=branch))
    setup.id = SETUP_ID
    setup.metadata = {"tags": ["remove-input"]}
    return setup


def _stub_code(lines: list[str], number: str, where: str) -> list[str]:
    """Replace each BEGIN/END SOLUTION region of ``lines`` with hint comments and a raise."""
    out, region, indent = [], None, ""
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN_CODE:
            if region is not None:
                raise SourceError(f"{where}: nested {BEGIN_CODE}")
            region, indent = [], line[: len(line) - len(line.lstrip())]
        elif stripped == END_CODE:
            if region is None:
                raise SourceError(f"{where}: {END_CODE} without {BEGIN_CODE}")
            hints = [h.strip() for h in region if h.strip().startswith(HINT_PREFIX)]
            prompt = [_prompt_line(h) for h in region if h.strip().startswith(PROMPT_PREFIX)]
            out += [indent + h for h in hints]
            if prompt:
                out += [line if not line.strip() else indent + line for line in prompt]
            else:
                out.append(
                    f'{indent}raise NotImplementedError("Exercise {number}: not done yet '
                    f'- replace this line with your code")'
                )
            region = None
        elif region is not None:
            region.append(line)
        else:
            out.append(line)
    if region is not None:
        raise SourceError(f"{where}: {BEGIN_CODE} without {END_CODE}")
    return out


def _prompt_line(line: str) -> str:
    """The code of a ``# EXERCISE: code`` line, relative to the region's indentation."""
    text = line.strip()[len(PROMPT_PREFIX):]
    return text[1:] if text.startswith(" ") else text


def exercise_metadata(cell, where: str) -> dict | None:
    """The validated ``exercise`` metadata of a heading cell ``## Exercise N.k: title ★★``.

    None for a cell that is no exercise heading, or a heading without metadata (the
    generator carries what is there; tests/test_exercises.py requires it on every heading);
    SourceError when the heading and its metadata disagree (id, stars and level) or the
    metadata is malformed.
    """
    if cell.cell_type != "markdown":
        if "exercise" in cell.metadata:
            raise SourceError(f"{where}: exercise metadata on a {cell.cell_type} cell")
        return None
    first = cell.source.split("\n", 1)[0]
    match = HEADING.match(first)
    meta = cell.metadata.get("exercise")
    if match is None:
        if meta is not None:
            raise SourceError(f"{where}: exercise metadata on a cell that is no exercise heading")
        return None
    number, _, stars = match.groups()
    if meta is None:
        return None
    if not isinstance(meta, dict) or set(meta) != {"id", "kind", "level"}:
        raise SourceError(
            f"{where}: the heading of Exercise {number} needs the cell metadata "
            '"exercise": {"id", "kind", "level"}'
        )
    if meta["id"] != number:
        raise SourceError(f"{where}: metadata id {meta['id']!r} but the heading says {number}")
    if meta["kind"] not in KINDS:
        raise SourceError(f"{where}: kind must be one of {KINDS}, got {meta['kind']!r}")
    if meta["level"] not in (1, 2, 3):
        raise SourceError(f"{where}: level must be 1, 2 or 3, got {meta['level']!r}")
    if stars is None or len(stars) != meta["level"]:
        raise SourceError(
            f"{where}: the heading must end with {'★' * meta['level']} (level {meta['level']})"
        )
    return dict(meta)


def exercises_of(nb, name: str) -> list[dict]:
    """The validated exercise metadata of a (normalised) solution notebook, in order."""
    found = []
    for index, cell in enumerate(nb.cells):
        meta = exercise_metadata(cell, f"solutions/{name}, cell {index} (id {cell.get('id')})")
        if meta is not None:
            found.append(meta)
    ids = [m["id"] for m in found]
    if len(set(ids)) != len(ids):
        raise SourceError(f"solutions/{name}: an exercise id appears twice: {ids}")
    return found


def _stub_text(source: str, number: str, where: str) -> str:
    pattern = re.compile(re.escape(BEGIN_TEXT) + r".*?" + re.escape(END_TEXT), re.DOTALL)
    result = pattern.sub(f"*Exercise {number}: your answer here.*", source)
    if BEGIN_TEXT in result or END_TEXT in result:
        raise SourceError(f"{where}: unmatched {BEGIN_TEXT} / {END_TEXT}")
    return result


def has_solution(cell) -> bool:
    markers = (BEGIN_CODE, END_CODE) if cell.cell_type == "code" else (BEGIN_TEXT, END_TEXT)
    return any(marker in cell.source for marker in markers)


def normalise_solution(nb, url: str, branch: str, name: str):
    """The solution notebook with canonical header cells, tags and metadata (a new object)."""
    nb = copy.deepcopy(nb)
    body = [c for c in nb.cells if c.get("id") not in (BADGE_ID, SETUP_ID)]
    nb.cells = header_cells(url, branch, "solutions", name) + body
    for cell in body:
        tags = list(cell.metadata.get("tags", []))
        if cell.cell_type == "code" and has_solution(cell) and "hide-input" not in tags:
            tags.append("hide-input")  # the book folds solution code; a click unfolds it
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
    nb.metadata = {
        **{k: v for k, v in nb.metadata.items() if k in NOTEBOOK_METADATA},
        **NOTEBOOK_METADATA,
    }
    return nb


def make_exercise(solution, url: str, branch: str, name: str):
    """The student notebook generated from the (normalised) solution notebook."""
    cells, number, n_stubs = header_cells(url, branch, "exercises", name), None, 0
    for index, cell in enumerate(solution.cells[2:], start=2):
        where = f"solutions/{name}, cell {index} (id {cell.get('id')})"
        if SOLUTION_ONLY in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            headings = EXERCISE_HEADING.findall(cell.source.split(BEGIN_TEXT)[0])
            number = headings[-1] if headings else number
        source = cell.source
        if has_solution(cell):
            if number is None:
                raise SourceError(f"{where}: a solution region before any 'Exercise N.k' heading")
            n_stubs += 1
            if cell.cell_type == "code":
                source = "\n".join(_stub_code(source.split("\n"), number, where))
            else:
                source = _stub_text(source, number, where)
        if cell.cell_type == "code":
            # nbval never runs exercises/, and a check marker without stored output would be stray
            source = "\n".join(l for l in source.split("\n") if l.strip() != "# NBVAL_CHECK_OUTPUT")
        new = (
            nbformat.v4.new_code_cell(source)
            if cell.cell_type == "code"
            else nbformat.v4.new_markdown_cell(source)
            if cell.cell_type == "markdown"
            else nbformat.v4.new_raw_cell(source)
        )
        new.id = cell.get("id") or f"cell-{index:02d}"
        tags = [t for t in cell.metadata.get("tags", []) if t not in BOOK_ONLY_TAGS]
        if tags:
            new.metadata["tags"] = tags
        meta = exercise_metadata(cell, where)
        if meta is not None:
            new.metadata["exercise"] = meta
        cells.append(new)
    if n_stubs == 0:
        raise SourceError(f"solutions/{name}: no solution region, so the exercise would be empty")
    exercise = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(NOTEBOOK_METADATA))
    exercise.nbformat, exercise.nbformat_minor = 4, 5
    return exercise


def render(nb) -> str:
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


KIND_MEANING = {
    "derive": "work a result out on paper, enter it as a function",
    "implement": "write the code",
    "investigate": "run an experiment, report a number or a choice",
    "debug": "find and fix a real bug",
}
EXERCISES_HEADING = "## Exercises"


def exercises_table(solution, url: str, branch: str, name: str) -> str:
    """A chapter's Exercises section: where the notebooks are, and one row per exercise."""
    rows = []
    for cell in solution.cells:
        match = HEADING.match(cell.source.split("\n", 1)[0]) if cell.cell_type == "markdown" else None
        meta = cell.metadata.get("exercise")
        if match and meta:
            rows.append(f"| {meta['id']} | {match.group(2)} | {meta['kind']} | {'★' * meta['level']} |")
    kinds = "; ".join(f"*{kind}*: {meaning}" for kind, meaning in KIND_MEANING.items())
    exercises, solutions = (colab_url(url, branch, f"{folder}/{name}")
                            for folder in ("exercises", "solutions"))
    return (
        f"{EXERCISES_HEADING}\n\n"
        f"Open the [exercise notebook in Colab]({exercises}) (or run "
        f"`exercises/{name}` locally): every exercise there has a check that says in words what "
        f"is still wrong, and `checks.hint(\"N.k\")` gives hints in tiers. The "
        f"[worked solutions]({solutions}) open the same way, and the course's "
        f"HTML book shows them in its Solutions part. Kinds: {kinds}; ★ to ★★★ is the level.\n\n"
        "| exercise | title | kind | level |\n|---|---|---|---|\n" + "\n".join(rows)
    )


def with_exercises_section(chapter, table: str, name: str):
    """The chapter with its Exercises section (from the heading to the end of its cell) replaced
    by ``table``, and any following cells that held only exercise boxes or the badge removed."""
    chapter = copy.deepcopy(chapter)
    found = [i for i, c in enumerate(chapter.cells)
             if c.cell_type == "markdown" and EXERCISES_HEADING + "\n" in c.source + "\n"]
    if len(found) != 1:
        raise SourceError(f"book/{name}: needs exactly one '{EXERCISES_HEADING}' section")
    cell = chapter.cells[found[0]]
    cell.source = cell.source[: cell.source.index(EXERCISES_HEADING)] + table
    following = found[0] + 1
    while following < len(chapter.cells) and chapter.cells[following].source.lstrip().startswith(
            ("```{exercise}", "[![Open In Colab]")):
        del chapter.cells[following]
    return chapter


def planned_files() -> dict[Path, str]:
    """Every file this script owns, mapped to the text it should hold."""
    url, branch = repository()
    files = {}
    sources = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise SourceError(f"no solution notebooks (NN_name.ipynb) in {SOLUTIONS}")
    for path in sources:
        solution = normalise_solution(nbformat.read(path, as_version=4), url, branch, path.name)
        files[path] = render(solution)
        files[EXERCISES / path.name] = render(make_exercise(solution, url, branch, path.name))
        chapter_path = BOOK / path.name
        if chapter_path.exists():
            chapter = nbformat.read(chapter_path, as_version=4)
            table = exercises_table(solution, url, branch, path.name)
            files[chapter_path] = render(with_exercises_section(chapter, table, path.name))
    return files


def write_or_check(files: dict[Path, str], folder: Path, check: bool, source: str,
                   command: str, done: str) -> int:
    """Write the ``files`` that differ and delete the notebooks of ``folder`` that are not
    among them; or, with ``check``, only list them and return 1 when there is any."""
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    extra = sorted(set(folder.glob("*.ipynb")) - set(files))
    if check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)}")
        for path in extra:
            print(f"not generated from {source}: {path.relative_to(ROOT)}")
        if stale or extra:
            print(f"run {command} and commit the result")
            return 1
        print(f"{done} ({len(list(folder.glob('*.ipynb')))} notebooks)")
        return 0
    folder.mkdir(exist_ok=True)
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {path.relative_to(ROOT)}")
    for path in extra:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


def generator_main(argv: list[str], planned, folder: Path, source: str, command: str,
                   done: str) -> int:
    """The command line of a notebook generator: write what ``planned()`` returns, or --check."""
    parser = argparse.ArgumentParser(description=f"Generate {folder.name}/ from {source}")
    parser.add_argument("--check", action="store_true",
                        help=f"write nothing; exit 1 if {folder.name}/ differs from the generated text")
    args = parser.parse_args(argv)
    try:
        files = planned()
    except SourceError as error:
        print(f"{Path(sys.argv[0]).stem}: {error}", file=sys.stderr)
        return 2
    return write_or_check(files, folder, args.check, source, command, done)


def main(argv: list[str]) -> int:
    return generator_main(
        argv, planned_files, EXERCISES, "solutions/",
        "`make exercises` (python scripts/make_exercises.py)",
        "exercises/, solutions/ and the chapters' exercise tables are up to date")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
