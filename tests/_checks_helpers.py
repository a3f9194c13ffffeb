"""Helpers shared by the tests of the exercise checks: run a check, see it pass or explain."""

from __future__ import annotations

from scorelab import checks


def run_check(capsys, check, *answers) -> str:
    """Run a check on its answers (it must not raise); return the one line it printed, and see
    that it recorded the outcome and printed no traceback."""
    assert check(*answers) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1, f"a check prints exactly one line, got {out!r}"
    assert checks.results[check.exercise_number] == out.startswith("✅")
    assert "Traceback" not in out
    return out


def assert_passes(capsys, check, *answers) -> None:
    out = run_check(capsys, check, *answers)
    assert out.startswith("✅"), out


def assert_explains(capsys, check, answers, *phrases) -> None:
    """The check fails and its line holds every phrase; ``answers`` is the one answer of the
    check, or a tuple or list of its answers."""
    answers = tuple(answers) if isinstance(answers, (tuple, list)) else (answers,)
    out = run_check(capsys, check, *answers)
    assert out.startswith("❌"), out
    for phrase in phrases:
        assert phrase in out, f"{phrase!r} not in {out!r}"


def with_answer(check, *fixed, first: bool):
    """``check`` with some of its answers fixed to ``fixed`` (right ones), so that a test varies
    the others: ``first`` puts them before the varied answers, else after."""
    def run(*answers):
        return check(*fixed, *answers) if first else check(*answers, *fixed)

    run.exercise_number = check.exercise_number
    return run


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise N.k: not done yet - replace this line with your code")


def lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]
