"""Hints in tiers never hand over the code: no tier spells out more than 30 % of its solution.

The measure (issue 10): the longest common subsequence of the hint's tokens and the solution's
tokens, divided by the number of solution tokens. The solution is the code between
``# BEGIN SOLUTION`` and ``# END SOLUTION`` of an exercise in solutions/ (its comments, its
``# HINT:`` line and a debug exercise's ``# EXERCISE:`` lines left out). Every tier registered
with ``register_hints`` counts, and so does the one ``# HINT:`` line the exercise notebook shows.
"""

from __future__ import annotations

import io
import re
import textwrap
import tokenize
from pathlib import Path

import nbformat
import pytest
from _checks_helpers import lcs
from scorelab import checks

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
MAX_SHARE = 0.30
TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?|\*\*|//|==|<=|>=|!=|->|[^\s\w]")
HEADING = re.compile(r"^#+\s.*\bExercise\s+(\d+\.\d+)\b", re.MULTILINE)


def tokens(text: str) -> list[str]:
    """Identifiers, numbers and operators, in order (the same rule for hints and code)."""
    return TOKEN.findall(text)


def code_without_comments(code: str) -> str:
    """``code`` with its comments removed (by Python's tokenizer, so '#' in strings stays)."""
    code = textwrap.dedent(code)
    try:
        kept = [
            tok.string
            for tok in tokenize.generate_tokens(io.StringIO(code + "\n").readline)
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE,
                                tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
        ]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        kept = [line.split("#", 1)[0] for line in code.splitlines()]
    return " ".join(kept)


def share(hint: str, solution_tokens: list[str]) -> float:
    return lcs(tokens(hint), solution_tokens) / len(solution_tokens)


def exercises() -> dict[str, dict]:
    """Exercise id -> {"solution": its solution tokens, "hint_lines": its # HINT: texts}."""
    found: dict[str, dict] = {}
    for path in SOLUTIONS:
        number = None
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                meta = cell.metadata.get("exercise")
                headings = HEADING.findall(cell.source.split("<!--")[0])
                number = meta["id"] if isinstance(meta, dict) else (headings or [number])[-1]
                continue
            region = None
            for line in cell.source.splitlines():
                stripped = line.strip()
                if stripped == "# BEGIN SOLUTION":
                    region = []
                elif stripped == "# END SOLUTION":
                    entry = found.setdefault(number, {"code": [], "hint_lines": []})
                    entry["code"].append("\n".join(region))
                    region = None
                elif region is not None:
                    if stripped.startswith("# HINT:"):
                        found.setdefault(number, {"code": [], "hint_lines": []})["hint_lines"].append(
                            stripped.removeprefix("# HINT:").strip()
                        )
                    elif not stripped.startswith("# EXERCISE:"):
                        region.append(line)
    for entry in found.values():
        entry["solution"] = [t for code in entry["code"] for t in tokens(code_without_comments(code))]
    return found


EXERCISES = exercises()


def tiers_of(number: str) -> list[tuple[str, str]]:
    """(name, text) of every hint of an exercise: registered tiers and the notebook's line."""
    named = [(f"tier {i + 1}", text) for i, text in enumerate(checks.HINTS.get(number, ()))]
    named += [("the # HINT: line", text) for text in EXERCISES[number]["hint_lines"]]
    return named


def test_the_measure():
    solution = tokens("return x + step_size / 2 * score")
    assert lcs(tokens("x + ____ * score"), solution) == 4
    assert share("x + ____ * score", solution) == pytest.approx(4 / 8)
    assert share("the idea in words", solution) == 0
    assert code_without_comments("y = 1  # a comment with x + y\n") == "y = 1"


@pytest.mark.parametrize("number", sorted(EXERCISES), ids=str)
def test_no_hint_tier_spells_out_the_solution(number):
    solution = EXERCISES[number]["solution"]
    assert solution, f"exercise {number} has no solution code"
    too_much = {
        name: round(share(text, solution), 3)
        for name, text in tiers_of(number)
        if share(text, solution) > MAX_SHARE
    }
    assert not too_much, f"exercise {number}: hints over {MAX_SHARE:.0%} of its code: {too_much}"


@pytest.mark.parametrize("number", sorted(EXERCISES), ids=str)
def test_every_exercise_has_tiered_hints(number):
    """checks.hint("N.k") has at least the idea and the equation (and usually checks to run on the answer)."""
    assert len(checks.HINTS.get(number, ())) >= 2, f"exercise {number}: register_hints is missing"


def test_every_registered_hint_belongs_to_an_exercise():
    assert set(checks.HINTS) <= set(EXERCISES), set(checks.HINTS) - set(EXERCISES)


def test_the_readme_quotes_each_chapters_largest_hint_share():
    """The README's exercise table gives, per chapter, the largest share of any hint and the
    exercise it belongs to: both are this file's measure, rounded to two decimals."""
    rows = re.findall(r"^\| (\d) \|.*\| (0\.\d\d) \((\d+\.\d+)\) \|$",
                      (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    quoted = {chapter: (float(value), number) for chapter, value, number in rows}
    largest: dict[str, tuple[float, str]] = {}
    for number in EXERCISES:
        chapter = number.split(".")[0]
        for _, text in tiers_of(number):
            value = share(text, EXERCISES[number]["solution"])
            if value > largest.get(chapter, (-1.0, ""))[0]:
                largest[chapter] = (value, number)
    measured = {chapter: (round(value, 2), number) for chapter, (value, number) in largest.items()}
    assert quoted == measured
