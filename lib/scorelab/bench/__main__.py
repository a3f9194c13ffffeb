"""Command line: ``python -m scorelab.bench [--quick] [--only SECTION] [--out DIR] [SECTION ...]``.

Runs every registered section (or those named by ``--only``), prints one table of the
figures with their targets, and with ``--out`` writes them to ``DIR/bench.json`` and
``DIR/bench.csv``. The exit status is 0 even when a target is missed: benchmarks report.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
from pathlib import Path

import torch

from scorelab.bench import ROW_FIELDS, sections


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scorelab.bench",
                                     description="Measure and print the figures of the benchmarks.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller settings, for a check in a minute or two")
    parser.add_argument("--only", action="append", default=[], metavar="SECTION",
                        help="run only this section (repeatable)")
    parser.add_argument("sections", nargs="*", metavar="SECTION", help="same as --only SECTION")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write bench.json and bench.csv into DIR")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the per-step tensors are small, "
                             "and one thread gives the steadiest timings)")
    return parser.parse_args(argv)


def _format_value(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def print_table(rows: list[dict]) -> None:
    """Print the rows as an aligned text table."""
    status = {True: "ok", False: "MISSED", None: ""}
    lines = [(r["section"], r["name"], _format_value(r["value"]), r["unit"], r["target"],
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
            rows.extend(function(quick=arguments.quick))
    print()
    print_table(rows)
    if arguments.out is not None:
        _write(arguments.out, rows, arguments)
        print(f"\nwrote {arguments.out / 'bench.json'} and {arguments.out / 'bench.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
