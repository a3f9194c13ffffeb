"""Execute notebooks in fresh kernels and print how long each takes (and, optionally, what it printed).

Usage: python scripts/time_notebooks.py [--show-output] [--budget SECONDS] NOTEBOOK.ipynb ...

Nothing is written back. The exit status is 1 when a notebook raises (exercise notebooks
raise by design: use this on solutions/ and book/) or runs over its budget (default 90 s;
notebooks whose name starts with 06_ get 240 s, the NCSN chapter's budget).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def budget_for(path: Path, default: float) -> float:
    return 240.0 if path.name.startswith("06_") else default


def run(path: Path) -> tuple[float, str | None, list[str]]:
    """Seconds to execute ``path``, the error (if any), and the text its cells printed."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start, error = time.perf_counter(), None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc).strip().splitlines()[-1]
    seconds = time.perf_counter() - start
    printed = [
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    ]
    return seconds, error, printed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--show-output", action="store_true", help="print what the cells printed")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds allowed per notebook")
    args = parser.parse_args(argv)
    status = 0
    for path in args.notebooks:
        seconds, error, printed = run(path)
        budget = budget_for(path, args.budget)
        verdict = (
            "ok" if error is None and seconds <= budget else ("FAILED" if error else "OVER BUDGET")
        )
        print(f"{seconds:7.1f} s  (budget {budget:.0f} s)  {verdict:11s} {path}", flush=True)
        if error:
            print(f"          {error}")
        if args.show_output:
            for text in printed:
                print("          | " + text.rstrip().replace("\n", "\n          | "))
        status |= verdict != "ok"
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
