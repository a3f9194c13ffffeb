"""Checks for *derive* exercises: a worked-out formula, entered as a Python function, tried at
random parameter values against the truth; a wrong formula is explained by naming the known
mistake it equals or the regime of parameters where it fails ("right for small noise, wrong
for large noise").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from scorelab.checks._core import Mismatch, call_student, to_float

Point = dict[str, float]


def random_points(seed: int, n: int, ranges: dict[str, tuple]) -> list[Point]:
    """``n`` parameter points drawn with ``seed``: each range is ``(low, high)`` (uniform),
    ``(low, high, "log")`` (log-uniform) or ``(low, high, "int")`` (integers, both ends in)."""
    generator = torch.Generator().manual_seed(seed)
    points = []
    for _ in range(n):
        point = {}
        for name, spec in ranges.items():
            low, high, *scale = spec
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            if scale == ["log"]:
                point[name] = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            elif scale == ["int"]:
                point[name] = int(low + math.floor(u * (high - low + 1)))
            else:
                point[name] = low + u * (high - low)
        points.append(point)
    return points


def _argument(value):
    # A 0-d float64 tensor works with math.* and torch.* alike; counts stay Python ints.
    return value if isinstance(value, int) else torch.tensor(value, dtype=torch.float64)


def _evaluate(fn: Callable, point: Point, what: str) -> float:
    args = [_argument(v) for v in point.values()]
    return to_float(call_student(fn, *args, what=what), what=f"{what}{_show(point)}")


def _show(point: Point) -> str:
    parts = ", ".join(
        f"{k}={v}" if isinstance(v, int) else f"{k}={v:.3g}" for k, v in point.items()
    )
    return f"({parts})"


def _close(got: float, expected: float, rtol: float) -> bool:
    return math.isfinite(got) and math.isclose(got, expected, rel_tol=rtol, abs_tol=1e-12)


def check_formula(
    fn: Callable,
    truth: Callable[..., float],
    points: Sequence[Point],
    *,
    what: str,
    regimes: Sequence[Sequence[tuple[str, Callable[[Point], bool]]]] = (),
    mutants: Sequence[tuple[str, Callable[..., float]]] = (),
    rtol: float = 1e-6,
) -> None:
    """Return when ``fn`` equals ``truth`` at every point; else raise a Mismatch in words.

    ``mutants`` are (explanation, formula) pairs of known mistakes: a student's formula equal
    to one at every point gets that explanation. Otherwise the message says in which regime
    the formula is right and in which it is wrong. ``regimes`` is a list of groups, each a
    list of (description, predicate) that split the points one way (small / large noise,
    mu = 0 / mu != 0); a group in which every regime is either right at all of its points or
    wrong at all of them is named first, else one with some regime right at all its points
    and some wrong at all of its points (its mixed regimes left out). One failing point is
    always shown.
    """
    got = {i: _evaluate(fn, p, what) for i, p in enumerate(points)}
    expected = {i: float(truth(**p)) for i, p in enumerate(points)}
    wrong = {i for i in got if not _close(got[i], expected[i], rtol)}
    if not wrong:
        return
    for explanation, formula in mutants:
        if all(_close(got[i], float(formula(**p)), rtol) for i, p in enumerate(points)):
            raise Mismatch(f"{what}: {explanation}")
    first = min(wrong)
    example = (
        f"at {_show(points[first])} it gives {got[first]:.5g} instead of {expected[first]:.5g}"
    )
    if not math.isfinite(got[first]):
        example = f"at {_show(points[first])} it gives {got[first]}"
    named = []  # per group: (all regimes clean?, right ones, wrong ones)
    for group in regimes:
        right_in, wrong_in, clean = [], [], True
        for description, predicate in group:
            members = {i for i, p in enumerate(points) if predicate(p)}
            if not members:
                continue
            if not members & wrong:
                right_in.append(description)
            elif members <= wrong:
                wrong_in.append(description)
            else:
                clean = False
        if right_in and wrong_in:
            named.append((clean, right_in, wrong_in))
    # a group that splits the points cleanly first; else one whose mixed regimes are left out
    for clean, right_in, wrong_in in sorted(named, key=lambda n: not n[0]):
        raise Mismatch(
            f"{what} is right {' and '.join(right_in)}, but wrong "
            f"{' and '.join(wrong_in)}: {example}."
        )
    raise Mismatch(f"{what} is wrong at {len(wrong)} of {len(points)} test points: {example}.")
