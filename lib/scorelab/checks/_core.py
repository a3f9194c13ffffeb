"""The machinery behind every exercise check: run, compare, explain in words.

A check runs the student's function on fixed inputs, compares the result with the
package's reference and prints one plain-language line. It never lets a wrong answer
escape as a stack trace: a ``NotImplementedError`` (an unfilled stub) becomes a
"not done yet" line, any other exception is reported by type and message, and a
wrong value is explained by :class:`Mismatch`. Known mistakes ("mutants") are
recognised by computing them and comparing, so the message can name the mistake.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterable

import numpy as np
import torch

PASS_MARK = "✅"
FAIL_MARK = "❌"
TODO_MARK = "⏳"

# Outcome of every check run in this process, by exercise number (used by the solutions).
results: dict[str, bool] = {}

#: True while an instructor's grader runs the notebook (environment variable SCORELAB_GRADING=1):
#: checks then also try their hidden cases, parameter values the student's notebook never shows.
GRADING = os.environ.get("SCORELAB_GRADING") == "1"

#: Hint tiers by exercise number: the idea, then the equation to use, then checks to run on
#: one's own answer.
HINTS: dict[str, tuple[str, ...]] = {}
_hints_shown: dict[str, int] = {}


def cases(public: Iterable, hidden: Iterable = ()) -> list:
    """The parameter values a check tries: ``public`` always, ``hidden`` too while grading."""
    return list(public) + (list(hidden) if GRADING else [])


def register_hints(number: str, *tiers: str) -> None:
    """Record the hint tiers of exercise ``number``, from the most general to the most precise."""
    if not tiers:
        raise ValueError(f"exercise {number} needs at least one hint tier")
    HINTS[number] = tuple(tiers)


def hint(number: str) -> None:
    """Print the next hint tier of exercise ``number`` (the last one again once all are shown)."""
    number = str(number)
    if number not in HINTS:
        known = ", ".join(sorted(HINTS, key=lambda n: tuple(map(int, n.split(".")))))
        raise ValueError(f"number must be one of the exercises with hints ({known}), got {number!r}")
    tiers = HINTS[number]
    shown = min(_hints_shown.get(number, 0), len(tiers) - 1)
    _hints_shown[number] = shown + 1
    last = " (the last hint)" if shown == len(tiers) - 1 else ""
    print(f"Hint {shown + 1} of {len(tiers)} for exercise {number}{last}: {tiers[shown]}")


class Mismatch(Exception):
    """Raised inside a check body: the student's answer is wrong, and the message says how."""


def exercise(number: str, success: str) -> Callable:
    """Turn a check body into a student-facing check for exercise ``number``.

    The body raises :class:`Mismatch` (or any exception coming from the student's code)
    when the answer is wrong and returns normally when it is right (returning a string to say
    something else than ``success``, e.g. for the first part of a two-part exercise); the
    wrapper prints one line and records the outcome in :data:`results`. It returns ``None`` so
    that a notebook cell shows only the printed line. The global random state is restored
    afterwards, so running a check does not change what the notebook's later cells draw.
    """

    def wrap(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(*args, **kwargs) -> None:
            passed = False
            try:
                with torch.random.fork_rng(devices=[]):
                    said = body(*args, **kwargs)
            except NotImplementedError:
                message = (
                    f"{TODO_MARK} Exercise {number}: not done yet. Fill in the TODO cell "
                    "above, run it, then run this check again."
                )
            except Mismatch as mismatch:
                message = f"{FAIL_MARK} Exercise {number}: not yet right. {mismatch}"
            except Exception as error:  # noqa: BLE001 -- the student's code failed: say how, no traceback
                message = (
                    f"{FAIL_MARK} Exercise {number}: your code raised {type(error).__name__}: "
                    f"{_first_line(error)}{_known_error_hint(error)}"
                )
            else:
                passed = True
                message = f"{PASS_MARK} Exercise {number}: {said or success}"
            results[number] = passed
            print(message)

        run.exercise_number = number
        return run

    return wrap


def assert_all_passed(numbers: Iterable[str]) -> None:
    """Raise AssertionError unless every exercise in ``numbers`` was checked and passed.

    The solution notebooks end with this call, so a solution that stops passing its own
    check fails the notebook tests instead of printing a red line nobody reads.
    """
    numbers = list(numbers)
    missing = [n for n in numbers if n not in results]
    failed = [n for n in numbers if n in results and not results[n]]
    if missing or failed:
        raise AssertionError(f"exercise checks not run: {missing}; failed: {failed}")


# Frequent error messages and what to do about them.
KNOWN_ERRORS = {
    "grad can be implicitly created only for scalar outputs": "sum the outputs before differentiating (the gradient of a sum of per-point terms is each "
    "point's own gradient)",
    "does not require grad": "differentiate with respect to a tensor on which you called .requires_grad_(True)",
    "shapes cannot be multiplied": "check the shapes of the two tensors in that product",
    "must match the size of tensor": "print the shapes: a dimension does not line up for broadcasting",
    "Trying to backward through the graph a second time": "pass create_graph=True when the result "
    "must itself be differentiated",
    "must be Tensor, not float": "the numbers are Python floats, as in your own calls: torch "
    "functions such as torch.sqrt and torch.exp take tensors, so use math.sqrt, math.exp (or "
    "** 0.5) on floats",
    "vmap: It looks like you're": "the package's densities and networks check their input "
    "(finite values, the right shape), which torch.func.vmap cannot trace; work on the whole "
    "batch instead: differentiate a sum over the points, torch.autograd.grad(log_p.sum(), x) "
    "(each point's gradient is its own term's), or take vector-Jacobian products",
    "must have shape (N, ": "the network takes a batch of points (N, D): flatten any extra leading "
    "dimensions with x.reshape(-1, D), call it, and reshape its output back",
}


def expect_untouched(given: torch.Tensor, original: torch.Tensor, *, call: str) -> None:
    """Mismatch if the student's function wrote into the tensor ``given`` (a copy of
    ``original`` that it received), or switched on its ``requires_grad``."""
    if given.requires_grad != original.requires_grad or given.grad is not None:
        raise Mismatch(
            f"{call} switched on requires_grad (or stored .grad) on the tensor it was given: "
            "the caller's tensor then drags an autograd graph into everything done with it "
            "next. Differentiate with respect to a copy: x = x.detach().requires_grad_(True)."
        )
    if torch.equal(given.detach(), original.detach()):
        return
    moved = (given.double() - original.double()).abs().max().item()
    raise Mismatch(
        f"{call} changed the tensor it was given in place (by up to {moved:.3g}): a function "
        "that writes into its input (x += ..., x[...] = ...) changes the caller's tensor under "
        "it. Return a new tensor (x = x + ...), or work on a copy."
    )


@contextlib.contextmanager
def refuse_calls(functions: Iterable[Callable], message: str):
    """While active, notice every call of ``functions`` (Python functions: the package's own
    answer to an exercise); when the block ends, raise ``Mismatch(message)`` if one ran.

    Works through any alias or wrapper the student made, since it watches the functions' code.
    It watches through ``sys.setprofile``, so while a profiler of the student's own runs
    (``%prun``, cProfile, torch.profiler) it steps aside and watches nothing.
    """
    if sys.getprofile() is not None:
        yield
        return
    codes = {inspect.unwrap(function).__code__ for function in functions}
    called = []

    def watch(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            called.append(frame.f_code.co_name)

    sys.setprofile(watch)
    try:
        yield
    except Exception:
        if called:  # the package's function ran (and perhaps raised): say that first
            raise Mismatch(message) from None
        raise
    finally:
        sys.setprofile(None)
    if called:
        raise Mismatch(message)


def package_refused(*functions: Callable, what: str):
    """:func:`refuse_calls` with the usual message: the exercise asks for the student's own
    ``what``, and the named package functions already do what it asks."""
    names = " or ".join(f"{function.__qualname__}" for function in functions)
    return refuse_calls(functions, (
        f"your {what} calls the package's {names}, which already does what the exercise "
        "asks: write it yourself (and compare with the package afterwards)."))


def without_package(fn, *functions: Callable, what: str):
    """``fn`` (the student's function) with the package's ``functions`` refused while it runs,
    for checks that call it from elsewhere (e.g. :func:`check_formula`)."""
    if not callable(fn):
        return fn

    @functools.wraps(fn)
    def own(*args, **kwargs):
        with package_refused(*functions, what=what):
            return fn(*args, **kwargs)

    return own


#: Seeds torch's global generator before the student's code runs, so that any
#: torch.manual_seed(seed) or draw without a generator shows as a change of its state.
GLOBAL_PROBE_SEED = 20_190_712


@contextlib.contextmanager
def global_rng_untouched(what: str, *,
                         advice: str = "Draw every random number from the generator you are "
                                       "given."):
    """While active, the student's code may not reseed or draw from torch's global generator:
    Mismatch when the block ends if the global random state changed. It seeds the global
    generator first; a check runs under ``fork_rng``, which restores the caller's state."""
    torch.random.default_generator.manual_seed(GLOBAL_PROBE_SEED)
    before = torch.random.get_rng_state()
    yield
    if not torch.equal(torch.random.get_rng_state(), before):
        raise Mismatch(
            f"your {what} changed torch's global random state (torch.manual_seed, or a draw "
            f"without generator=): that reseeds or advances every other random draw of the "
            f"notebook. {advice}"
        )


def _known_error_hint(error: BaseException) -> str:
    text = str(error)
    for fragment, hint in KNOWN_ERRORS.items():
        if fragment in text:
            return f". Hint: {hint}."
    return ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else "(no message)"


def expect_tensor(
    value, *, what: str, shape: tuple[int, ...], dtype: torch.dtype | None = torch.float32
) -> torch.Tensor:
    """Return ``value`` if it is a tensor of ``shape`` (and ``dtype``); else say what it is instead."""
    if isinstance(value, tuple) and len(value) > 0 and isinstance(value[0], torch.Tensor):
        raise Mismatch(
            f"{what} should be one tensor of shape {shape}, but your code returned a tuple "
            f"of {len(value)} items."
        )
    if not isinstance(value, torch.Tensor):
        raise Mismatch(
            f"{what} should be a torch.Tensor of shape {shape}, but your code returned "
            f"{_kind(value)}.{_missing_return(value)}"
        )
    if tuple(value.shape) != tuple(shape):
        hint = ""
        if (
            value.numel() == math.prod(shape)
            and value.ndim == len(shape)
            and tuple(value.shape[::-1]) == tuple(shape)
        ):
            hint = " It looks transposed."
        elif value.numel() == math.prod(shape):
            hint = " It has the right number of entries: check the reshape."
        elif value.ndim > len(shape):
            hint = " Did you forget to sum or average over a dimension?"
        elif value.ndim < len(shape):
            hint = " Did you sum or average over one dimension too many?"
        raise Mismatch(
            f"{what} has the wrong shape: got {tuple(value.shape)}, expected {tuple(shape)}.{hint}"
        )
    if dtype is not None and value.dtype != dtype:
        avoid = {torch.float32: ".double()", torch.float64: ".float()"}.get(dtype, ".to(...)")
        raise Mismatch(
            f"{what} has dtype {value.dtype}, expected {dtype}: keep the input's dtype "
            f"(avoid {avoid} or integer tensors)."
        )
    return value


def expect_finite(value: torch.Tensor, *, what: str, where: str = "") -> None:
    """Mismatch when ``value`` holds NaN or infinity."""
    finite = torch.isfinite(value)
    if not finite.all():
        kind = "NaN" if torch.isnan(value).any() else "infinite values"
        raise Mismatch(f"{what} contains {kind}{where}.")


def is_close(
    got: torch.Tensor, expected: torch.Tensor, *, rtol: float = 1e-4, atol: float = 1e-5
) -> bool:
    """Elementwise closeness that tolerates float32 round-off, with NaN never close."""
    got = got.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    return got.shape == expected.shape and bool(torch.allclose(got, expected, rtol=rtol, atol=atol))


def diagnose(
    got: torch.Tensor,
    expected: torch.Tensor,
    *,
    what: str,
    mutants: dict[str, torch.Tensor] | None = None,
    factors: dict[str, float | tuple[float, str, str]] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> None:
    """Return when ``got`` matches ``expected``; otherwise raise a Mismatch that names the mistake.

    The tests, in order: a known mistake from ``mutants`` (name -> the value that mistake
    produces); a wrong sign; a constant factor named in ``factors`` (name -> value, e.g.
    ``{"sigma^2": 4.0}``, or name -> (value, advice when ``got`` is that many times too large,
    advice when it is that many times too small)); any other constant factor; and finally the
    largest error.
    """
    if is_close(got, expected, rtol=rtol, atol=atol):
        return
    for explanation, value in (mutants or {}).items():
        if is_close(got, value, rtol=rtol, atol=atol):
            raise Mismatch(explanation)
    if is_close(got, -expected, rtol=rtol, atol=atol):
        raise Mismatch(f"{what} has the wrong sign: it equals minus the reference.")
    ratio = _constant_ratio(got, expected)
    if ratio is not None:
        for name, spec in (factors or {}).items():
            factor, too_large, too_small = spec if isinstance(spec, tuple) else (spec, "", "")
            value = f"{factor:.4g}"
            shown = name if name == value or name.endswith(f"= {value}") else f"{name} (= {value})"
            if math.isclose(ratio, factor, rel_tol=1e-3):
                raise Mismatch(f"{what} is {shown} times the reference"
                               + (f": {too_large}" if too_large else "."))
            if math.isclose(ratio, 1.0 / factor, rel_tol=1e-3):
                raise Mismatch(f"{what} is the reference divided by {shown}"
                               + (f": {too_small}" if too_small else "."))
        if ratio < 0:
            raise Mismatch(
                f"{what} is the reference times {ratio:.4g}: it points the opposite way, and its "
                f"size is {-ratio:.4g} times the reference's.")
        raise Mismatch(
            f"{what} is the reference times {ratio:.4g}: the direction is right, the scale is not."
        )
    error = (got.detach().double() - expected.detach().double()).abs()
    index = int(torch.argmax(error.flatten()))
    raise Mismatch(
        f"{what} differs from the reference: the largest error is {error.max().item():.3g} "
        f"(got {got.flatten()[index].item():.4g} where {expected.flatten()[index].item():.4g} was expected)."
    )


def _constant_ratio(got: torch.Tensor, expected: torch.Tensor) -> float | None:
    """The scalar c with got == c * expected (least squares), when it fits to 1e-4, else None."""
    got, expected = got.detach().double().flatten(), expected.detach().double().flatten()
    norm = expected.dot(expected)
    if norm == 0 or not torch.isfinite(got).all():
        return None
    c = (got.dot(expected) / norm).item()
    if c == 0 or not torch.allclose(got, c * expected, rtol=1e-4, atol=1e-6 * max(1.0, abs(c))):
        return None
    return c


def _shown(value) -> str:
    """A short description of a value for a message: its repr, cut at 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value) -> str:
    """What a value is, for a message: "None", "`...`", "a numpy array of shape (3,)",
    "a string ('1')", "an int"."""
    if value is None:
        return "None"
    if value is Ellipsis:
        return "`...`"
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape}"
    if isinstance(value, str):
        return f"a string ({_shown(value)})"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def bisect(below: Callable[[float], bool], low: float, high: float, steps: int) -> float:
    """The point of [low, high] where ``below`` turns from True to False, by ``steps`` halvings
    (``below`` True at ``low``, False at ``high``, changing once in between)."""
    for _ in range(steps):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if below(middle) else (low, middle)
    return 0.5 * (low + high)


def call_under_no_grad(fn: Callable, *args, what: str, after: str = ""):
    """``fn(*args)`` under ``torch.no_grad()``, where the course's samplers call score functions:
    a RuntimeError there (autograd switched off) becomes a Mismatch that says so. The student's
    function already passed outside it; ``after`` ends the advice ("as in exercise 1.2")."""
    try:
        with torch.no_grad():
            return fn(*args)
    except RuntimeError as error:
        raise Mismatch(
            "right, but under torch.no_grad(), where the course's samplers run, your "
            f"{what} raised RuntimeError ({str(error).splitlines()[0]}): autograd records "
            "nothing there until you switch it back on inside the function "
            f"(torch.enable_grad()){after}."
        ) from None


def call_student(fn: Callable, *args, what: str, **kwargs):
    """Call the student's function; a non-callable becomes a Mismatch rather than a TypeError."""
    if not callable(fn):
        raise Mismatch(
            f"pass your function itself to the check (got {_shown(fn)}, not a function; "
            f"expected the function {what})."
        )
    return fn(*args, **kwargs)


def to_float(value, *, what: str) -> float:
    """Read a Python number (or one-element tensor or array) returned by the student, else
    Mismatch.

    ``...`` (the placeholder an exercise notebook leaves for an answer) is "not done yet".
    """
    if value is Ellipsis:
        raise NotImplementedError(f"{what} is still ...")
    if isinstance(value, np.ndarray) and value.size == 1 and np.isrealobj(value) \
            and value.dtype != bool:
        value = value.item()  # e.g. from np.array(x), np.mean or an array of one value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise Mismatch(
                f"{what} should be a single number, but your code returned a tensor of shape {tuple(value.shape)}."
            )
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise Mismatch(
            f"{what} should be a number, but it is {_kind(value)}.{_missing_return(value)}"
        )
    return float(value)


def _missing_return(value) -> str:
    """A hint for an answer that is None: a function without ``return`` gives None."""
    return " Is a return statement missing?" if value is None else ""


def expect_loss(value, *, name: str, what: str, n: int) -> torch.Tensor:
    """Return ``value`` if it is a finite per-example loss (n,) that carries a gradient; else
    Mismatch naming the problem (a Python float, the shape, no gradient, NaN)."""
    if isinstance(value, float):
        raise Mismatch(
            f"{name} returned a Python float (did you call .item()?): return a tensor of shape "
            "(N,), so that loss.backward() can train the model."
        )
    value = expect_tensor(value, what=what, shape=(n,))
    if value.grad_fn is None:
        raise Mismatch(
            "the loss carries no gradient (computed under torch.no_grad(), or detached): the "
            "model could not be trained with it."
        )
    expect_finite(value, what=what)
    return value


def expect_same_draws(
    rerun: Callable[[], object],
    got,
    *,
    outputs: str = "losses",
    draw: str = "draw the noise from the generator, z = torch.randn(x.shape, generator=generator)",
) -> None:
    """Mismatch unless ``rerun()``, the student's call again with an identically seeded
    generator, gives ``got`` again: the random draws must come from that generator."""
    if not torch.equal(rerun(), got):
        raise Mismatch(
            f"two calls with identically seeded generators gave different {outputs}: {draw}."
        )


def check_choice(answer, options: dict[str, str], correct: str, *, what: str) -> None:
    """Mismatch unless ``answer`` is the letter ``correct``; a wrong letter gets its own feedback.

    ``options`` maps each letter to the feedback a student who picks it should read; the
    letter may come in brackets or with a full stop ("(b)", "b)", "b."); ``...`` and ``None``
    (the placeholders) are "not done yet".
    """
    if answer is Ellipsis or answer is None:
        raise NotImplementedError(f"{what} is still unset")
    letter = answer.strip().strip("().").strip().lower() if isinstance(answer, str) else None
    if letter not in options:
        letters = ", ".join(repr(k) for k in options)
        raise Mismatch(f"{what} should be one of the letters {letters}, got {answer!r}.")
    if letter != correct:
        raise Mismatch(f"({letter}) is not it: {options[letter]}")


def expect_given_noise(step: Callable[[torch.Tensor], object], z: torch.Tensor, got: torch.Tensor,
                       *, what: str, without_noise: torch.Tensor | None = None) -> None:
    """Mismatch unless the student's step uses the noise ``z`` it is given.

    ``step(z)`` calls the student's function again with every other argument as before, and
    ``got`` is what the first call returned. The same z must give the same result (else the
    step draws noise of its own) and -z a different one (else z never enters it: noise from a
    fixed seed). When ``got`` equals ``without_noise``, the step with its noise term left out,
    the check returns and lets :func:`diagnose` name that mistake.
    """
    advice = ("Use the z it is given: the sampler draws z from its generator, so that a run "
              "can be repeated (and the check passes the same z to compare draw for draw).")
    again = step(z.clone())
    if isinstance(again, torch.Tensor) and not torch.equal(again, got):
        raise Mismatch(f"two calls of {what} with the same arguments gave different results: "
                       f"it draws noise of its own. {advice}")
    if without_noise is not None and torch.allclose(got, without_noise, rtol=1e-4, atol=1e-4):
        return
    flipped = step(-z)
    if isinstance(flipped, torch.Tensor) and torch.equal(flipped, got):
        raise Mismatch(f"{what} gives the same result for z and for -z: z never enters it. "
                       "Either its noise term is missing, or it draws noise of its own from a "
                       f"fixed seed. {advice}")


class FormulaMatches:
    """Counts the settings where a student's *measurement* equals its formula to six digits.

    A simulation's relative error is far above 1e-6, so one such match is an accident and a
    second one is the formula itself, typed in instead of measured: :meth:`record` raises
    :class:`Mismatch` then. ``formula`` names it in the message; ``advice`` says what to do.
    """

    def __init__(self, formula: str, *, advice: str) -> None:
        self.formula, self.advice, self.matches = formula, advice, 0

    def record(self, got: float, formula_value: float, *, where: str) -> None:
        """Count ``got`` if it equals ``formula_value`` to six digits; Mismatch at the second."""
        self.matches += abs(got / formula_value - 1.0) < 1e-6
        if self.matches == 2:
            raise Mismatch(f"{where} equals {self.formula} to six digits, and so did an earlier "
                           f"setting: that is the formula, not a measurement (a simulation's "
                           f"error is far larger than 1e-6). {self.advice}")


def answer_number(value, *, what: str) -> float:
    """Read a number the student enters as an answer (``best_step = ...`` in an exercise
    notebook); the placeholders ``...`` and ``None`` are "not done yet"."""
    if value is None:
        raise NotImplementedError(f"{what} is still unset")
    return to_float(value, what=what)


def expect_derived(got: float, want: float, *, call: str, wrong: str, slips: dict[float, str],
                   otherwise: str, measured: tuple[float, str] | None = None,
                   tolerance: float = 1e-6, absolute: bool = False) -> None:
    """Mismatch unless ``got``, a number the student derived, equals ``want`` within
    ``tolerance`` (relative, or ``absolute``).

    A known slip (a value of ``slips``, matched within the same tolerance) is named by its text;
    an answer within ``measured[0]`` of ``want`` (relative, or ``absolute``) gets
    ``measured[1]`` (close, but not what the derivation gives: a measured value, too few
    digits); anything else gets ``otherwise``. The message reads "``call`` = got ``wrong``:
    cause".
    """
    def near(value: float, within: float) -> bool:
        scale = 1.0 if absolute else abs(value)
        return math.isfinite(got) and abs(got - value) <= within * scale

    if near(want, tolerance):
        return
    named = [text for value, text in slips.items() if near(value, tolerance)]
    if named:
        cause = named[0]
    elif measured is not None and near(want, measured[0]):
        cause = measured[1]
    else:
        cause = otherwise
    raise Mismatch(f"{call} = {got:.6g} {wrong}: {cause}")
