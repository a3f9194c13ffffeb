"""Benchmark section ``notebooks``: wall time of each chapter executed alone in a fresh kernel.

The target: each chapter executes in under 90 s on a 2-core CPU machine (chapters 7 and 8,
which sample a trained model or train one, in under 120 s), the NCSN chapter (06) in under
4 minutes. Each ``book/NN_*.ipynb`` is executed with ``nbclient``
in a new ``python3`` kernel (start-up included, as in a book build), its working directory
``book/``; the notebook on disk is left unchanged. ``--quick`` times chapter 1 only.

Run with ``python -m scorelab.bench notebooks`` (from the repository root, or anywhere when
the package is installed in editable mode from a checkout).
"""

from __future__ import annotations

import time
from pathlib import Path

from scorelab.bench import register, row

SECTION = "notebooks"
CHAPTER_LIMIT_S = 90.0
LONG_CHAPTERS = {"06_ncsn.ipynb": 240.0, "07_using_ncsn.ipynb": 120.0, "08_sde.ipynb": 120.0}
CELL_TIMEOUT_S = 600


def book_directory() -> Path | None:
    """The ``book/`` folder: under the working directory, else beside the package's checkout."""
    here = Path(__file__).resolve()
    for candidate in (Path.cwd() / "book", *(parent / "book" for parent in here.parents)):
        if candidate.is_dir() and any(candidate.glob("[0-9][0-9]_*.ipynb")):
            return candidate
    return None


def chapters(book: Path, *, quick: bool) -> list[Path]:
    """The chapter notebooks in order (only the first with ``quick``)."""
    paths = sorted(book.glob("[0-9][0-9]_*.ipynb"))
    return paths[:1] if quick else paths


def execute_seconds(path: Path) -> float:
    """Wall time (s) to execute the notebook at ``path`` in a fresh kernel, start-up included.

    Raises the cell's error (``nbclient.exceptions.CellExecutionError``) if a cell fails.
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


@register(SECTION)
def chapter_times(*, quick: bool) -> list[dict]:
    """Rows: seconds to execute each chapter alone, against its limit."""
    book = book_directory()
    if book is None:
        return [row(SECTION, "chapter execution", float("nan"), ok=False,
                    note="no book/ folder with chapter notebooks; run from the repository root")]
    rows = []
    for path in chapters(book, quick=quick):
        limit = LONG_CHAPTERS.get(path.name, CHAPTER_LIMIT_S)
        try:
            seconds = execute_seconds(path)
        except Exception as error:  # noqa: BLE001 - a failing chapter is a missed figure
            rows.append(row(SECTION, f"{path.stem} execution", float("nan"), unit="s",
                            target=f"< {limit:.0f}", ok=False,
                            note=f"failed: {type(error).__name__}: {str(error)[:120]}"))
            continue
        rows.append(row(SECTION, f"{path.stem} execution", seconds, unit="s",
                        target=f"< {limit:.0f}", ok=seconds < limit,
                        note="fresh kernel, start-up included"))
    return rows
