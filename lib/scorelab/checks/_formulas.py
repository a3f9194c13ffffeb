"""Checks for *derive* exercises: a worked-out formula, entered as a Python function, tried at
random parameter values against the truth; a wrong formula is explained by naming the known
mistake it equals or the regime of parameters where it fails ("right for small noise, wrong
for large noise").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence

import torch

from scorelab.checks._core import Mismatch, _kind, call_student, to_float

Point = dict[str, object]
Regime = tuple[str, Callable[[Point], bool]]


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


def random_values(low: float, high: float, n: int, seed: int, *, log: bool = False) -> list[float]:
    """``n`` seeded draws from [low, high] (log-uniform when ``log``), rounded to 4 significant
    digits: :func:`random_points` for one parameter."""
    spec = (low, high, "log") if log else (low, high)
    return [float(f"{p['v']:.4g}") for p in random_points(seed, n, {"v": spec})]


def points_with_special(
    seeds: Iterable[int], ranges: dict[str, tuple], special: Callable[[Point], Point]
) -> list[Point]:
    """For each seed, 24 random points and 4 more made special by ``special`` (e.g. mu = 0),
    so that a regime such as "when mu = 0" can be named."""
    return [
        point
        for seed in seeds
        for point in random_points(seed, 24, ranges)
        + [special(p) for p in random_points(seed + 100, 4, ranges)]
    ]


def by_regime(named: dict[str, list[Point]]) -> tuple[list[Point], list[Regime]]:
    """All the points of ``named`` (description -> its points) and the group of regimes that
    says which description each point was drawn for (for :func:`check_formula`)."""
    points = [p for members in named.values() for p in members]
    group = [
        (description, lambda p, ids=frozenset(map(id, members)): id(p) in ids)
        for description, members in named.items()
    ]
    return points, group


def _argument(value, tensors: bool = False):
    # Numbers go in as Python numbers, as in the student's own calls (or as 0-d float64
    # tensors where the course calls the formula on tensors); counts stay ints.
    if isinstance(value, torch.Tensor):
        return value.clone()
    if tensors and isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    return value


def _show(point: Point) -> str:
    parts = []
    for key, value in point.items():
        if isinstance(value, int):
            parts.append(f"{key}={value}")
        elif isinstance(value, numbers.Real):
            parts.append(f"{key}={value:.3g}")
        else:
            parts.append(key)  # a tensor argument is shown by its name
    return f"({', '.join(parts)})"


def _short(value: torch.Tensor) -> str:
    if value.numel() == 1:
        return f"{value.item():.5g}"
    shown = ", ".join(f"{v:.3g}" for v in value.flatten().tolist()[:6])
    return f"[{shown}{', ...' if value.numel() > 6 else ''}]"


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def _read(got, expected: torch.Tensor, call: str) -> torch.Tensor:
    """The student's value as a float64 tensor: one number where the truth is a number, else
    a tensor (or a number) of the truth's shape; Mismatch in words otherwise."""
    if expected.ndim == 0:
        return torch.tensor(to_float(got, what=call), dtype=torch.float64)
    if isinstance(got, bool) or not isinstance(got, (torch.Tensor, numbers.Real)):
        raise Mismatch(
            f"{call} should return a number (or a tensor), but returned {_kind(got)}."
        )
    got = _as_tensor(got)
    if got.shape != expected.shape:
        raise Mismatch(
            f"{call} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}."
        )
    return got


def _close(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> bool:
    return (
        got.shape == expected.shape
        and bool(torch.isfinite(got).all())
        and bool(torch.allclose(got, expected, rtol=rtol, atol=atol))
    )


def _named_regimes(
    regimes: Sequence[Sequence[Regime]], points: Sequence[Point], wrong: set[int]
) -> list[tuple[bool, list[str], list[str]]]:
    """Per group that splits the points into right and wrong regimes: (every regime clean?,
    the regimes right at all of their points, those wrong at all of theirs)."""
    named = []
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
    return named


def _relative_error(got: torch.Tensor, expected: torch.Tensor, atol: float) -> float:
    """The largest entry of |got - expected| / max(|expected|, atol)."""
    return ((got - expected).abs() / expected.abs().clamp_min(atol)).max().item()


def check_formula(
    fn: Callable,
    truth: Callable,
    points: Sequence[Point],
    *,
    what: str,
    regimes: Sequence[Sequence[Regime]] = (),
    mutants: Sequence[tuple[str, Callable]] = (),
    rtol: float = 1e-6,
    atol: float = 1e-12,
    tensors: bool = False,
) -> None:
    """Return when ``fn`` equals ``truth`` at every point; else raise a Mismatch in words.

    ``fn`` is called with the point's values in order (numbers as Python floats and ints, or,
    with ``tensors``, real numbers as 0-d float64 tensors, for a formula the course also calls
    on tensors; tensors as copies), ``truth`` and the mutants with them by name; a
    formula returns a number, or a tensor of the truth's shape. ``mutants`` are
    (explanation, formula) pairs of known mistakes: a student's formula equal to one at every
    point gets that explanation. Otherwise the message says in which regime the formula is
    right and in which it is wrong. ``regimes`` is a list of groups, each a list of
    (description, predicate) that split the points one way (small / large noise, mu = 0 /
    mu != 0; see :func:`by_regime`); a group in which every regime is either right at all of
    its points or wrong at all of them is named first, else one with some regime right at all
    its points and some wrong at all of its points (its mixed regimes left out). One failing
    point is always shown.
    """
    calls = [f"{what}{_show(p)}" for p in points]
    expected = [_as_tensor(truth(**p)) for p in points]
    got = [
        _read(call_student(fn, *(_argument(v, tensors) for v in p.values()), what=what), e, call)
        for p, e, call in zip(points, expected, calls)
    ]
    wrong = {i for i in range(len(points)) if not _close(got[i], expected[i], rtol, atol)}
    if not wrong:
        return
    for explanation, formula in mutants:
        if all(_close(g, _as_tensor(formula(**p)), rtol, atol) for g, p in zip(got, points)):
            raise Mismatch(f"{what}: {explanation}")
    if all(_close(g, e, 1e-3, atol) for g, e in zip(got, expected)):
        i = min(wrong)
        gap = _relative_error(got[i], expected[i], atol)
        raise Mismatch(
            f"{what} agrees with the formula to 1e-3 at every point, but the check asks for "
            f"{rtol:g}: {calls[i]} is off by a relative {gap:.2g}. That is round-off (compute "
            "with Python floats or float64, not float32 tensors), rounded numbers, or a very "
            "precise simulation: the check wants the exact formula."
        )
    # the point where the formula is furthest off (the first of equals), so the example shows it
    first = max(sorted(wrong), key=lambda i: _relative_error(got[i], expected[i], atol))
    example = f"{calls[first]} = {_short(got[first])}, expected {_short(expected[first])}"
    if got[first].numel() == 1 and _short(got[first]) == _short(expected[first]):
        example = (f"{calls[first]} = {got[first].item():.10g}, expected "
                   f"{expected[first].item():.10g}")  # 5 digits would show them equal
    named = _named_regimes(regimes, points, wrong)
    if named:  # a group that splits the points cleanly first; else one with mixed regimes left out
        _, right_in, wrong_in = min(named, key=lambda n: not n[0])
        raise Mismatch(
            f"{what} is right {' and '.join(right_in)}, but wrong "
            f"{' and '.join(wrong_in)}: {example}."
        )
    if all(_close(g, e, 0.05, atol) for g, e in zip(got, expected)):
        raise Mismatch(
            f"{what} is within a few per cent of the formula at every point, but not exact "
            f"({example}): that looks like a simulation or a fit. Derive it on paper: the "
            "check wants the formula itself."
        )
    raise Mismatch(f"{what} is wrong at {len(wrong)} of {len(points)} test points: {example}.")
