"""Command line: ``python -m scorelab.bench [--quick] [--only SECTION] [--out DIR] [SECTION ...]``.

Runs every registered section (or those named by ``--only``), prints one table of the
figures with their targets, and writes them to ``DIR/bench.json`` and ``DIR/bench.csv``
(``--out``, default ``_build/bench``; ``--no-write`` writes nothing). A section that fails
is reported as a row (value NaN, missed, the error in the note) and the others still run.
The exit status is 0 even when a target is missed (benchmarks report), 1 with ``--strict``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from scorelab.bench import ROW_FIELDS, row, sections

DEFAULT_OUT = Path("_build") / "bench"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scorelab.bench",
                                     description="Measure and print the figures of the benchmarks.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller settings, for a check in a minute or two")
    parser.add_argument("--only", action="append", default=[], metavar="SECTION",
                        help="run only this section (repeatable)")
    parser.add_argument("sections", nargs="*", metavar="SECTION", help="same as --only SECTION")
    parser.add_argument("--out", type=Path, metavar="DIR", default=DEFAULT_OUT,
                        help=f"write bench.json and bench.csv into DIR (default {DEFAULT_OUT})")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a figure misses its target")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the per-step tensors are small, "
                             "and one thread gives the steadiest timings)")
    return parser.parse_args(argv)


def _format_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def print_table(rows: list[dict]) -> None:
    """Print the rows as an aligned text table."""
    status = {True: "ok", False: "MISSED", None: ""}
    lines = [(r["section"], r["figure"], _format_value(r["value"]), r["unit"], r["target"],
              status[r["ok"]], r["note"]) for r in rows]
    header = ("section", "figure", "value", "unit", "target", "met", "note")
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, tuple("-" * width for width in widths), *lines]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())


def _write(out: Path, rows: list[dict], arguments: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "quick": arguments.quick, "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(), "machine": platform.machine()}
    # JSON has no NaN: a figure that could not be measured is written as null.
    rows = [{**r, "value": r["value"] if math.isfinite(r["value"]) else None} for r in rows]
    document = {"metadata": metadata, "rows": rows}
    (out / "bench.json").write_text(json.dumps(document, indent=2) + "\n")
    with open(out / "bench.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    arguments = _parse(argv)
    torch.set_num_threads(arguments.threads)
    registry = sections()
    chosen = [*arguments.only, *arguments.sections] or sorted(registry)
    unknown = [name for name in chosen if name not in registry]
    if unknown:
        raise SystemExit(f"--only must name a section among {sorted(registry)}, got {unknown}")
    rows: list[dict] = []
    for section in chosen:
        for function in registry[section]:
            rows.extend(_run(section, function, quick=arguments.quick))
    print()
    print_table(rows)
    if not arguments.no_write:
        _write(arguments.out, rows, arguments)
        print(f"\nwrote {arguments.out / 'bench.json'} and {arguments.out / 'bench.csv'}")
    missed = [r for r in rows if r["ok"] is False]
    return 1 if arguments.strict and missed else 0


def _run(section: str, function, *, quick: bool) -> list[dict]:
    """Rows of one benchmark function, timed; a failure becomes one missed row, not a crash."""
    name = getattr(function, "__name__", repr(function))
    print(f"[{section}] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        rows = function(quick=quick)
    except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
        traceback.print_exc()
        rows = [row(section, f"{name}: failed", float("nan"), ok=False,
                    note=f"{type(error).__name__}: {error}"[:200])]
    print(f"[{section}] {name} done in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
