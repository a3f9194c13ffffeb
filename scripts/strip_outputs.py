"""Execute notebooks and keep only the outputs that nbval checks.

Usage: python scripts/strip_outputs.py [--no-execute] NOTEBOOK.ipynb ...

Every code cell loses its outputs and execution count, except the cells whose source
holds ``# NBVAL_CHECK_OUTPUT`` (or that carry the ``nbval-check-output`` tag): those keep
the outputs of a fresh execution, so nbval compares the next run against them. Notebook
metadata is reduced to the kernelspec and language info; widget state is dropped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KEEP_METADATA = ("kernelspec", "language_info", "colab", "accelerator")


def is_checked(cell) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return "NBVAL_CHECK_OUTPUT" in cell.get("source", "") or "nbval-check-output" in tags


def strip(nb) -> None:
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_METADATA}
    nb.metadata.setdefault(
        "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}
    )
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            # drop display-only outputs (widgets, images) that cannot be compared as text
            cell.outputs = _joined_streams(
                [o for o in cell.outputs if o.get("output_type") in ("stream", "execute_result")])
            continue
        cell.outputs = []
        cell.execution_count = None


def _joined_streams(outputs: list) -> list:
    """Consecutive prints to one stream as one output: how a run splits them depends on timing."""
    joined = []
    for output in outputs:
        previous = joined[-1] if joined else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream"
                and previous.get("name") == output.get("name")):
            previous["text"] = "".join(previous["text"]) + "".join(output["text"])
        else:
            joined.append(output)
    return joined


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--no-execute", action="store_true", help="strip without executing")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if not args.no_execute:
            NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        strip(nb)
        nbformat.write(nb, path)
        print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
