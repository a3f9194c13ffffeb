"""make grade: students' notebooks run in fresh kernels with hidden cases; grades.csv says what passed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_densities_and_scores.ipynb"  # the cheapest chapter
EXPECTED = ["1.1", "1.2", "1.3", "1.4", "1.5"]


def _cell(nb, prefix: str):
    """The code cell whose source starts with ``prefix``."""
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(prefix)]
    return cell


def _submissions(folder: Path) -> None:
    """Three students: all solved; untouched (one check cell deleted, one answer that only
    knows the public cases); solved but with an endless loop in exercise 1.1."""
    solved = nbformat.read(ROOT / "solutions" / NOTEBOOK, as_version=4)
    nbformat.write(solved, folder / "solved.ipynb")

    untouched = nbformat.read(ROOT / "exercises" / NOTEBOOK, as_version=4)
    untouched.cells.remove(_cell(untouched, "checks.exercise_1_3("))
    # 1.5 answered by rote: right on the two public mixtures, so only the hidden cases catch it
    _cell(untouched, "def merging_sigma").source = (
        "def merging_sigma(mixture):\n"
        "    return 3**0.5 if abs(mixture.weights[0].item() - 0.5) < 1e-6 else 1.1406"
    )
    nbformat.write(untouched, folder / "untouched.ipynb")

    looping = nbformat.read(ROOT / "solutions" / NOTEBOOK, as_version=4)
    cell = _cell(looping, "def perturbed_covariance")
    cell.source = cell.source.replace("    mean = ", "    while True:\n        pass\n    mean = ", 1)
    nbformat.write(looping, folder / "looping.ipynb")


@pytest.mark.slow
def test_make_grade_on_three_submissions(tmp_path):
    _submissions(tmp_path)
    cell_timeout = 20  # well above the slowest cell of chapter 1 (importing torch)
    run = subprocess.run(
        [sys.executable, "-m", "scorelab.grading", str(tmp_path), "--solutions",
         str(ROOT / "solutions"), "--timeout", "300", "--cell-timeout", str(cell_timeout)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(tmp_path / "grades.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["student", "exercise", "passed", "feedback"]
    grades = {(r["student"], r["exercise"]): r for r in rows}
    assert len(rows) == len(grades) == 3 * len(EXPECTED)

    for number in EXPECTED:  # the solutions pass, hidden cases included
        assert grades["solved", number]["passed"] == "1", grades["solved", number]

    untouched = {n: grades["untouched", n] for n in EXPECTED}
    assert all(r["passed"] == "0" for r in untouched.values()), untouched
    assert "not attempted" in untouched["1.1"]["feedback"]
    assert "never ran" in untouched["1.3"]["feedback"]  # its check cell was deleted
    assert "changed the points it was given" in untouched["1.4"]["feedback"]  # the bug is named
    assert "hidden" in untouched["1.5"]["feedback"]  # the public cases pass; a hidden one fails

    assert grades["looping", "1.1"]["passed"] == "0"
    assert f"time limit of {cell_timeout} s" in grades["looping", "1.1"]["feedback"]
    for number in EXPECTED[1:]:
        assert grades["looping", number]["passed"] == "1", grades["looping", number]
    assert "solved: chapter 1, 5/5 passed" in run.stdout
    assert "looping: chapter 1, 4/5 passed" in run.stdout


def test_grade_refuses_a_missing_folder(tmp_path):
    from scorelab.grading import grade

    with pytest.raises(ValueError, match="submissions must be a folder"):
        grade(tmp_path / "absent", ROOT / "solutions")


def test_a_notebook_of_no_chapter_gets_one_row(tmp_path):
    """A notebook with no exercise left in it is reported, not run, and does not stop the rest."""
    from scorelab.grading import grade

    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]),
                   tmp_path / "empty.ipynb")
    (tmp_path / "broken.ipynb").write_text("{not json")
    rows = grade(tmp_path, ROOT / "solutions")
    assert [(r.student, r.exercise, r.passed) for r in rows] == [
        ("broken", "?", False), ("empty", "?", False)
    ]
    assert "which chapter" in rows[1].feedback
    assert (tmp_path / "grades.csv").read_text().startswith("student,exercise,passed,feedback")


def test_chapter_is_recognised_from_what_is_left():
    from scorelab.grading import chapter_of, expected_exercises

    chapters = expected_exercises(ROOT / "solutions")
    assert chapters["1"] == EXPECTED
    nb = nbformat.read(ROOT / "exercises" / NOTEBOOK, as_version=4)
    assert chapter_of(nb) == "1"
    # with every heading gone, the check calls still tell
    nb.cells = [c for c in nb.cells if c.cell_type == "code"]
    assert chapter_of(nb) == "1"
