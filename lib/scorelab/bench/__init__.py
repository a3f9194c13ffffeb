"""Benchmarks: scripts that measure the figures the course promises and print them beside their targets.

Run ``python -m scorelab.bench`` (``--quick``, ``--only SECTION``, ``--out DIR``; see
``__main__``). Each section is a module of this package that registers one or more
functions returning rows::

    from scorelab.bench import register, row

    @register("sampling")
    def weight_recovery(*, quick: bool) -> list[dict]:
        return [row("sampling", "weight of (5,5), T=100", 0.79, target="|w-0.8| < 0.025", ok=True)]

Each row is a dict with the keys of ``ROW_FIELDS``: section, figure, value, unit, target,
ok (True, False, or None where the figure has no target) and note.

Every module of the package is imported when the benchmarks run, so a new section needs
no edit here. A module that registers nothing but defines ``main()`` (``main()`` or
``main(quick=...)``) runs as a section named after the module that prints its own figures
and contributes no rows; registering its row functions makes its figures part of the table,
the CSV and the JSON.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

__all__ = ["register", "row", "sections", "ROW_FIELDS"]

RowFunction = Callable[..., list[dict]]
ROW_FIELDS = ("section", "figure", "value", "unit", "target", "ok", "note")

_REGISTRY: dict[str, list[RowFunction]] = {}


def register(section: str) -> Callable[[RowFunction], RowFunction]:
    """Decorator: add ``function(*, quick: bool) -> list[dict]`` to the benchmark ``section``."""

    def decorate(function: RowFunction) -> RowFunction:
        functions = _REGISTRY.setdefault(section, [])
        if function not in functions:
            functions.append(function)
        return function

    return decorate


def row(section: str, name: str, value: float, *, unit: str = "", target: str = "",
        ok: bool | None = None, note: str = "") -> dict:
    """One measured figure: what it is (``name``, stored as "figure"), its value and unit, its
    target and whether it met it (None: no target)."""
    return {"section": section, "figure": name, "value": float(value), "unit": unit,
            "target": target, "ok": None if ok is None else bool(ok), "note": note}


def _printing_section(main: Callable[..., None]) -> RowFunction:
    """Wrap a module's ``main()`` as a section that prints its own figures and returns no rows."""
    takes_quick = "quick" in inspect.signature(main).parameters

    def run(*, quick: bool) -> list[dict]:
        if takes_quick:
            main(quick=quick)
        else:
            main()
        return []

    run.__name__ = f"{main.__module__}.main"
    return run


def sections() -> dict[str, list[RowFunction]]:
    """Import every section module of this package and return the registry, section -> functions."""
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        registered = any(getattr(function, "__module__", None) == module.__name__
                         for functions in _REGISTRY.values() for function in functions)
        if not registered and callable(getattr(module, "main", None)):
            _REGISTRY.setdefault(module_info.name, [_printing_section(module.main)])
    return dict(_REGISTRY)
