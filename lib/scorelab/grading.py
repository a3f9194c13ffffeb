"""Grade students' exercise notebooks: ``python -m scorelab.grading DIR`` writes ``DIR/grades.csv``.

Each ``DIR/*.ipynb`` is one student's completed exercise notebook (the student is the file's
stem). The grader runs it top to bottom in a fresh kernel, in a scratch copy, with the
environment variable ``SCORELAB_GRADING=1`` so that every check also tries its *hidden*
cases (parameter values the notebook never shows), then reads the one line each check prints
(``✅ Exercise N.k: ...``, ``❌ ...``, ``⏳ ...``) from the outputs. The exercises expected of
a notebook come from the ``exercise`` metadata of the matching solutions notebook (its
chapter is recognised from the submission's headings, metadata, stubs or check calls), so a
deleted cell cannot hide an exercise: one with no check line is marked as not passed, with
the reason in words (its cell ran out of time, the kernel died, the notebook's time ran out,
or its check never ran).

Limits: ``--cell-timeout`` seconds per cell (a cell past it is interrupted and the run goes
on with the next cell) and ``--timeout`` seconds per notebook (after which the rest of that
notebook is not run). A notebook that crashes, loops forever or kills its kernel only ever
costs its own exercises; the other notebooks are graded as usual.

Output: ``DIR/grades.csv`` with the columns ``student, exercise, passed, feedback``
(``passed`` is 1 or 0; one row per expected exercise of each notebook), and a summary on
standard output.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

CHECK_LINE = re.compile(r"^(✅|❌|⏳) Exercise (\d+\.\d+):\s?(.*)$", re.MULTILINE)
CHECK_CALL = re.compile(r"\bexercise_(\d+)_(\d+)\s*\(")
STUB = re.compile(r"Exercise (\d+\.\d+): not done yet")
HEADING = re.compile(r"^#+\s.*\bExercise\s+(\d+\.\d+)\b", re.MULTILINE)
TIMEOUT_ENAME = "GradingCellTimeout"
COLUMNS = ("student", "exercise", "passed", "feedback")


@dataclass
class Row:
    """One line of grades.csv."""

    student: str
    exercise: str
    passed: bool
    feedback: str

    def as_csv(self) -> dict[str, str]:
        return {
            "student": self.student,
            "exercise": self.exercise,
            "passed": "1" if self.passed else "0",
            "feedback": self.feedback,
        }


def expected_exercises(solutions: Path) -> dict[str, list[str]]:
    """Chapter number -> the exercise ids of its solutions notebook, from cell metadata."""
    chapters: dict[str, list[str]] = {}
    for path in sorted(solutions.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        ids = [
            str(cell.metadata["exercise"]["id"])
            for cell in nb.cells
            if isinstance(cell.metadata.get("exercise"), dict) and "id" in cell.metadata["exercise"]
        ]
        if ids:
            chapters[str(int(path.name[:2]))] = ids
    if not chapters:
        raise ValueError(
            f"solutions must be a folder of solution notebooks whose exercise headings carry "
            f"'exercise' metadata; found none in {solutions}"
        )
    return chapters


def chapter_of(nb) -> str | None:
    """The chapter a submission belongs to: the most frequent N of the 'N.k' it mentions."""
    votes: collections.Counter[str] = collections.Counter()
    for cell in nb.cells:
        meta = cell.metadata.get("exercise")
        if isinstance(meta, dict) and "id" in meta:
            votes[str(meta["id"]).split(".")[0]] += 3
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        numbers = HEADING.findall(source) + STUB.findall(source)
        numbers += [f"{a}.{b}" for a, b in CHECK_CALL.findall(source)]
        for number in numbers:
            votes[number.split(".")[0]] += 1
    return votes.most_common(1)[0][0] if votes else None


def _section_of_cells(nb) -> list[str | None]:
    """For every cell, the exercise whose heading last preceded it (None before the first)."""
    current, sections = None, []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            meta = cell.metadata.get("exercise")
            found = HEADING.findall(cell.source)
            if isinstance(meta, dict) and "id" in meta:
                current = str(meta["id"])
            elif found:
                current = found[-1]
        sections.append(current)
    return sections


@dataclass
class Run:
    """What happened when a notebook ran: its executed cells and how the run ended."""

    nb: object
    timed_out_cells: list[int]
    stopped: str | None  # why the run stopped early, in words; None when every cell ran
    stopped_at: int | None  # index of the first cell not run
    seconds: float


def execute(path: Path, *, timeout: float, cell_timeout: float) -> Run:
    """Run ``path`` in a fresh kernel in a scratch folder; never raise for the student's code."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # a submission's stored outputs (or stored check lines) count for nothing
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.monotonic()
    timed_out, stopped, stopped_at = [], None, None
    with tempfile.TemporaryDirectory(prefix="grading-") as workdir:
        client = NotebookClient(
            nb,
            kernel_name="python3",
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={
                "ename": TIMEOUT_ENAME,
                "evalue": f"the cell ran past the time limit of {cell_timeout:g} s",
                "traceback": [],
            },
            resources={"metadata": {"path": workdir}},
        )
        try:
            with client.setup_kernel():
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type != "code":
                        continue
                    remaining = timeout - (time.monotonic() - start)
                    if remaining < 1:
                        stopped = f"the notebook's time limit of {timeout:g} s ran out"
                        stopped_at = index
                        break
                    client.timeout = max(1, int(min(cell_timeout, remaining)))
                    began = time.monotonic()
                    try:
                        client.execute_cell(cell, index)
                    except DeadKernelError:
                        stopped, stopped_at = f"the kernel died in cell {index}", index
                        break
                    # nbclient interrupts a cell at its limit and reports no output for it
                    if time.monotonic() - began >= client.timeout:
                        timed_out.append(index)
        except Exception as error:  # noqa: BLE001 -- e.g. a kernel that never starts
            if stopped is None:
                stopped = f"the notebook could not be run ({type(error).__name__}: {error})"
                stopped_at = stopped_at if stopped_at is not None else 0
    return Run(nb, timed_out, stopped, stopped_at, time.monotonic() - start)


def check_lines(nb) -> dict[str, tuple[str, str]]:
    """Exercise -> (mark, message) of the last check line printed by a cell that calls a check."""
    found: dict[str, tuple[str, str]] = {}
    for cell in nb.cells:
        if cell.cell_type != "code" or not CHECK_CALL.search(cell.source):
            continue
        text = "".join(
            o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
        )
        for mark, number, message in CHECK_LINE.findall(text):
            found[number] = (mark, message.strip())
    return found


def grade_run(student: str, run: Run, expected: list[str], cell_timeout: float) -> list[Row]:
    """One row per expected exercise, from the check lines and how the run ended."""
    lines = check_lines(run.nb)
    sections = _section_of_cells(run.nb)
    timed_out_in = {sections[i] for i in run.timed_out_cells}
    rows = []
    for number in expected:
        if number in lines:
            mark, message = lines[number]
            passed = mark == "✅"
            feedback = message.removeprefix("not yet right. ")
            if mark == "⏳":
                feedback = "not attempted: the exercise's cell is still the unfilled stub"
        elif number in timed_out_in:
            passed, feedback = False, (
                f"no result: a cell of this exercise ran past the time limit of "
                f"{cell_timeout:g} s (an endless loop?) and was interrupted"
            )
        elif run.stopped is not None:
            passed, feedback = False, f"no result: {run.stopped} before this exercise's check ran"
        else:
            passed, feedback = False, (
                "no result: the check of this exercise never ran (its cell was deleted, "
                "or the check was interrupted)"
            )
        rows.append(Row(student, number, passed, feedback))
    return rows


def grade(
    submissions: Path, solutions: Path, *, timeout: float = 600, cell_timeout: float = 120
) -> list[Row]:
    """Grade every ``*.ipynb`` in ``submissions``, write ``grades.csv`` there, return the rows."""
    submissions, solutions = Path(submissions), Path(solutions)
    if not submissions.is_dir():
        raise ValueError(f"submissions must be a folder of .ipynb files, got {submissions}")
    if timeout <= 0 or cell_timeout <= 0:
        raise ValueError(
            f"timeout and cell_timeout must be positive seconds, got {timeout}, {cell_timeout}"
        )
    chapters = expected_exercises(solutions)
    os.environ["SCORELAB_GRADING"] = "1"  # the kernels inherit it: checks try hidden cases
    os.environ.setdefault("MPLBACKEND", "Agg")
    rows: list[Row] = []
    for path in sorted(submissions.glob("*.ipynb")):
        student = path.stem
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:  # noqa: BLE001 -- not a notebook: say so, grade the others
            rows.append(Row(student, "?", False, f"not a readable notebook: {error}"))
            print(f"{student}: not a readable notebook", flush=True)
            continue
        chapter = chapter_of(nb)
        if chapter not in chapters:
            rows.append(
                Row(student, "?", False, "could not tell which chapter's exercises these are: "
                    "no 'Exercise N.k' heading, stub or check is left in the notebook")
            )
            print(f"{student}: no chapter recognised", flush=True)
            continue
        run = execute(path, timeout=timeout, cell_timeout=cell_timeout)
        graded = grade_run(student, run, chapters[chapter], cell_timeout)
        rows += graded
        score = sum(r.passed for r in graded)
        note = f"; {run.stopped}" if run.stopped else ""
        print(
            f"{student}: chapter {chapter}, {score}/{len(graded)} passed "
            f"({run.seconds:.1f} s{note})",
            flush=True,
        )
    with open(submissions / "grades.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(row.as_csv() for row in rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submissions", type=Path, help="folder of students' .ipynb files")
    parser.add_argument(
        "--solutions", type=Path, default=Path("solutions"),
        help="the course's solutions/ folder (default: ./solutions)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per notebook")
    parser.add_argument("--cell-timeout", type=float, default=120, help="seconds per cell")
    args = parser.parse_args(argv)
    try:
        rows = grade(
            args.submissions, args.solutions, timeout=args.timeout, cell_timeout=args.cell_timeout
        )
    except ValueError as error:
        print(f"grading: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.submissions / 'grades.csv'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
