"""exercises/ is what scripts/make_exercises.py generates from solutions/, and it fails only where it should."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
STUB = re.compile(r'raise NotImplementedError\("Exercise (\d+\.\d+): ')
CHECK_CALL = re.compile(r"checks\.exercise_(\d+)_(\d+)\(")


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_exercises", ROOT / "scripts" / "make_exercises.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_exercises = _generator()


def test_every_chapter_has_a_solution_notebook():
    assert [p.name[:2] for p in SOLUTIONS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


def test_exercises_are_generated_from_solutions():
    """The committed exercises/ and solutions/ are byte for byte what the generator writes."""
    stale = [
        str(p.relative_to(ROOT))
        for p, text in make_exercises.planned_files().items()
        if not p.exists() or p.read_text() != text
    ]
    assert not stale, f"run `make exercises`: out of date: {stale}"
    assert sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb")) == [
        p.name for p in SOLUTIONS
    ]


def test_generator_is_idempotent():
    """Normalising an already normalised solution, or regenerating an exercise, changes nothing."""
    url, branch = make_exercises.repository()
    for path in SOLUTIONS:
        once = make_exercises.normalise_solution(
            nbformat.read(path, as_version=4), url, branch, path.name
        )
        twice = make_exercises.normalise_solution(once, url, branch, path.name)
        assert make_exercises.render(once) == make_exercises.render(twice)
        first = make_exercises.render(make_exercises.make_exercise(once, url, branch, path.name))
        second = make_exercises.render(make_exercises.make_exercise(twice, url, branch, path.name))
        assert first == second


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_exercise_structure(path):
    url, branch = make_exercises.repository()
    exercise = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    badge, setup = exercise.cells[0], exercise.cells[1]
    assert f"/blob/{branch}/exercises/{path.name})" in badge.source
    assert f'pip install -q "git+{url}@{branch}"' in setup.source
    assert "importlib.invalidate_caches()" in setup.source
    assert "enable_custom_widget_manager" in setup.source
    text = "\n".join(c.source for c in exercise.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "NBVAL_CHECK_OUTPUT", "assert_all_passed"):
        assert marker not in text
    stubs = [m.group(1) for c in exercise.cells for m in STUB.finditer(c.source)]
    assert 2 <= len(set(stubs)), "an exercise notebook needs at least two exercises"
    assert all(n.startswith(f"{int(path.name[:2])}.") for n in stubs)
    for cell in exercise.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
    # cell ids are the solution's (deterministic), in the same order
    ids = [c.id for c in exercise.cells]
    solution_ids = [c.id for c in nbformat.read(path, as_version=4).cells]
    assert ids == [i for i in solution_ids if i in set(ids)]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_header_and_folding(path):
    """Solutions open with their own badge and the same set-up cell; solution code is folded in the book."""
    solution = nbformat.read(path, as_version=4)
    assert f"/solutions/{path.name})" in solution.cells[0].source
    assert solution.cells[1].id == make_exercises.SETUP_ID
    for cell in solution.cells:
        if cell.cell_type == "code" and make_exercises.BEGIN_CODE in cell.source:
            assert "hide-input" in cell.metadata.get("tags", [])


def _notebook(cells):
    nb = nbformat.v4.new_notebook(cells=cells)
    for index, cell in enumerate(nb.cells):
        cell.id = f"c{index}"
    return nb


def test_stub_keeps_indentation_hints_and_number():
    nb = _notebook(
        [
            nbformat.v4.new_markdown_cell("## Exercise 9.2: a thing"),
            nbformat.v4.new_code_cell(
                "def f(x):\n    y = 1\n    # BEGIN SOLUTION\n    # HINT: add one\n"
                "    return x + y\n    # END SOLUTION"
            ),
            nbformat.v4.new_markdown_cell(
                "Why?\n<!-- BEGIN SOLUTION -->\nBecause.\n<!-- END SOLUTION -->"
            ),
            nbformat.v4.new_code_cell("secret = 1", metadata={"tags": ["solution-only"]}),
        ]
    )
    solution = make_exercises.normalise_solution(nb, "https://github.com/o/r", "main", "09_x.ipynb")
    exercise = make_exercises.make_exercise(
        solution, "https://github.com/o/r", "main", "09_x.ipynb"
    )
    sources = [c.source for c in exercise.cells[2:]]
    assert sources[1] == (
        "def f(x):\n    y = 1\n    # HINT: add one\n"
        '    raise NotImplementedError("Exercise 9.2: not done yet - replace this line with your code")'
    )
    assert sources[2] == "Why?\n*Exercise 9.2: your answer here.*"
    assert len(sources) == 3  # the solution-only cell is gone


@pytest.mark.parametrize(
    "source",
    [
        "# BEGIN SOLUTION\nx = 1",
        "x = 1\n# END SOLUTION",
        "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION",
    ],
)
def test_unbalanced_markers_are_refused(source):
    nb = _notebook(
        [nbformat.v4.new_markdown_cell("## Exercise 1.1"), nbformat.v4.new_code_cell(source)]
    )
    solution = make_exercises.normalise_solution(nb, "https://github.com/o/r", "main", "01_x.ipynb")
    with pytest.raises(make_exercises.SourceError, match="01_x.ipynb, cell 3"):
        make_exercises.make_exercise(solution, "https://github.com/o/r", "main", "01_x.ipynb")


def _execute(path: Path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_exercise_fails_only_in_its_todo_cells(path):
    """Run with every stub unfilled (fresh kernel): only TODO cells (and cells tagged
    ``depends-on-exercise``) raise, always NotImplementedError; every check says "not done yet",
    except a debug exercise's whose copy holds the buggy code itself: that check names the bug."""
    nb = _execute(ROOT / "exercises" / path.name)
    kinds = {
        c.metadata["exercise"]["id"]: c.metadata["exercise"]["kind"]
        for c in nb.cells
        if "exercise" in c.metadata
    }
    stubbed = {  # exercises whose copy has a stub raising NotImplementedError
        f"{match.group(1)}" for cell in nb.cells if cell.cell_type == "code"
        for match in re.finditer(r'NotImplementedError\("Exercise (\d+\.\d+)', cell.source)
    }
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        top_level_stub = any(
            line.startswith("raise NotImplementedError") for line in cell.source.splitlines()
        )
        allowed = bool(STUB.search(cell.source)) or "depends-on-exercise" in cell.metadata.get(
            "tags", []
        )
        where = f"{path.name} cell {index} (id {cell.id})"
        if errors:
            assert allowed, f"{where} raised {errors[0].ename}: {errors[0].evalue}"
            assert errors[0].ename == "NotImplementedError", (
                f"{where} raised {errors[0].ename}: {errors[0].evalue}"
            )
        assert not (top_level_stub and not errors), f"{where}: its stub did not raise"
        if CHECK_CALL.search(cell.source):
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            number = "{}.{}".format(*CHECK_CALL.search(cell.source).groups())
            if kinds.get(number) == "debug" and number not in stubbed:
                # the student's copy holds the buggy code itself: the check names the bug
                assert text.startswith(f"❌ Exercise {number}:"), f"{where}: printed {text!r}"
            else:  # a stub to fill (a debug exercise may show the bug in a cell of its own)
                assert "not done yet" in text, f"{where}: the check printed {text!r}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_chapter_links_its_exercise_notebook(path):
    """Each chapter's Exercises section (written by scripts/make_exercises.py from the
    solutions' metadata) links its exercise notebook in Colab."""
    chapter = ROOT / "book" / path.name
    assert chapter.exists(), f"book/{path.name} is missing"
    url, branch = make_exercises.repository()
    org_repo = url.removeprefix("https://github.com/")
    target = (
        f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/exercises/{path.name}"
    )
    cells = nbformat.read(chapter, as_version=4).cells
    markdown = [c.source for c in cells if c.cell_type == "markdown"]
    assert any(f"]({target})" in text for text in markdown), (
        f"book/{path.name} does not link {target}"
    )


# ---------------------------------------------------------------- exercise metadata (issue 10)

KINDS = {"derive", "implement", "investigate", "debug"}
HEADING = re.compile(r"^##\s+Exercise\s+(\d+\.\d+):\s*\S.*?\s(★{1,3})\s*$")


def _exercise_cells(nb):
    """(cell, heading match) for every markdown cell whose first line names an exercise."""
    found = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and re.match(r"^#+\s.*\bExercise\s+\d", cell.source):
            found.append((cell, HEADING.match(cell.source.split("\n", 1)[0])))
    return found


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_carries_valid_metadata(path):
    """Each heading "## Exercise N.k: title ★★" carries {"id", "kind", "level"} that agree with
    it; at least four exercises, in rising difficulty, with every kind (derive, implement,
    investigate, debug) among them; the exercise notebook carries the same metadata."""
    chapter = str(int(path.name[:2]))
    metas = []
    for cell, heading in _exercise_cells(nbformat.read(path, as_version=4)):
        first = cell.source.split("\n", 1)[0]
        assert heading, f"{path.name}: {first!r} is not '## Exercise N.k: title ★..★'"
        meta = cell.metadata.get("exercise")
        assert isinstance(meta, dict) and set(meta) == {"id", "kind", "level"}, (
            f"{path.name}: {first!r} lacks the exercise metadata"
        )
        assert meta["id"] == heading.group(1), f"{path.name}: {first!r} has id {meta['id']}"
        assert meta["kind"] in KINDS, f"{path.name}: {first!r} has kind {meta['kind']!r}"
        assert meta["level"] == len(heading.group(2)), f"{path.name}: {first!r}: stars vs level"
        metas.append(meta)
    ids = [m["id"] for m in metas]
    assert ids == [f"{chapter}.{k}" for k in range(1, len(ids) + 1)], ids
    assert len(metas) >= 4, f"{path.name}: {len(metas)} exercises, at least four wanted"
    assert {m["kind"] for m in metas} == set(KINDS), metas
    levels = [m["level"] for m in metas]
    assert levels == sorted(levels), f"{path.name}: difficulty must rise: {levels}"
    exercise = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    carried = [c.metadata["exercise"] for c in exercise.cells if "exercise" in c.metadata]
    assert carried == metas


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_a_solution_region_keeps_one_conceptual_hint_line(path):
    """The notebook shows at most one `# HINT:` line an exercise; further tiers are checks.hint."""
    counts: dict[str, int] = {}
    number = None
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown" and "exercise" in cell.metadata:
            number = cell.metadata["exercise"]["id"]
        elif cell.cell_type == "code":
            n_hints = sum(
                line.strip().startswith(make_exercises.HINT_PREFIX)
                for line in cell.source.splitlines()
            )
            counts[number] = counts.get(number, 0) + n_hints
    too_many = {n: c for n, c in counts.items() if c > 1}
    assert not too_many, f"{path.name}: exercises with more than one # HINT: line: {too_many}"


def _one_exercise(source: str, meta=None):
    heading = nbformat.v4.new_markdown_cell("## Exercise 9.1: a thing ★★")
    if meta is not None:
        heading.metadata["exercise"] = meta
    return _notebook([heading, nbformat.v4.new_code_cell(source)])


def test_debug_region_shows_the_buggy_code_and_metadata_is_carried():
    nb = _one_exercise(
        "def f(x):\n    # BEGIN SOLUTION\n    # HINT: look at the sign\n"
        "    # EXERCISE: y = -x\n    # EXERCISE: return y\n    return x\n    # END SOLUTION",
        {"id": "9.1", "kind": "debug", "level": 2},
    )
    url = "https://github.com/o/r"
    solution = make_exercises.normalise_solution(nb, url, "main", "09_x.ipynb")
    exercise = make_exercises.make_exercise(solution, url, "main", "09_x.ipynb")
    assert exercise.cells[3].source == (
        "def f(x):\n    # HINT: look at the sign\n    y = -x\n    return y"
    )
    assert exercise.cells[2].metadata["exercise"] == {"id": "9.1", "kind": "debug", "level": 2}


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"id": "9.2", "kind": "debug", "level": 2}, "heading says 9.1"),
        ({"id": "9.1", "kind": "proof", "level": 2}, "kind must be one of"),
        ({"id": "9.1", "kind": "derive", "level": 3}, "must end with ★★★"),
        ({"id": "9.1", "kind": "derive"}, "needs the cell metadata"),
    ],
)
def test_metadata_that_disagrees_with_the_heading_is_refused(meta, message):
    url = "https://github.com/o/r"
    nb = _one_exercise("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", meta)
    solution = make_exercises.normalise_solution(nb, url, "main", "09_x.ipynb")
    with pytest.raises(make_exercises.SourceError, match=message):
        make_exercises.make_exercise(solution, url, "main", "09_x.ipynb")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_the_introduction_states_the_range_of_difficulty_the_exercises_have(path):
    """"These exercises go with chapter N, in rising difficulty (★ to ★★)" names the lowest and
    the highest level among the chapter's exercises ("(★★)" alone when all share one level)."""
    nb = nbformat.read(path, as_version=4)
    intro = next(c.source for c in nb.cells if c.source.startswith("# Exercises"))
    stated = re.search(r"\((★{1,3})(?: to (★{1,3}))?\)", intro)
    assert stated, f"{path.name}: the introduction does not state the difficulty (★ to ★★★)"
    low, high = len(stated.group(1)), len(stated.group(2) or stated.group(1))
    levels = [c.metadata["exercise"]["level"] for c in nb.cells if "exercise" in c.metadata]
    assert (low, high) == (min(levels), max(levels)), (
        f"{path.name}: the introduction says {stated.group(0)}, the exercises' levels are {levels}"
    )
