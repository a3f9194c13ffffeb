"""The outputs nbval checks, compared with the book build's execution of each notebook.

Every chapter and solution is executed once, by the book build (``make book``:
``scripts/execute_notebooks.py`` fills the execution cache two notebooks at a time, then
``jupyter-book build`` renders them and fails on any error). The build writes each executed
notebook to ``_build/jupyter_execute/``. Executing them all again under nbval only to compare
the cells marked ``# NBVAL_CHECK_OUTPUT`` doubled the time of ``make test``; this test makes
the same comparison, by nbval's rules (streams coalesced, text and every data type but images
compared exactly, metadata and execution counts ignored), on the build's execution.

Without an executed copy that matches the notebook's code and the current package, the test
is skipped, or fails when ``SCORELAB_REQUIRE_BUILD=1`` (``make test`` sets it after building).
``make nbval NOTEBOOKS=...`` still runs nbval itself on chosen notebooks.
"""

from __future__ import annotations

import copy
import os
import sys
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import coalesce_streams, transform_streams_for_comparison

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = Path(os.environ.get("BOOK_EXECUTED", ROOT / "_build" / "jupyter_execute"))
sys.path.insert(0, str(ROOT / "scripts"))
import execute_notebooks  # noqa: E402

MARKER = "NBVAL_CHECK_OUTPUT"
# nbval's comparison skips these keys (nbval.plugin.IPyNbFile.setup, without --nbdime).
SKIP_COMPARE = {"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"}


def comparable(outputs) -> dict[str, list]:
    """nbval's view of a cell's outputs: key (stream name or MIME type) -> values, in order."""
    flat: dict[str, list] = defaultdict(list)
    outputs = copy.deepcopy(list(outputs))  # coalesce_streams edits the outputs it joins
    for output in transform_streams_for_comparison(coalesce_streams(outputs)):
        for key, value in output.items():
            if key == "data":
                for mime, data in value.items():
                    if mime not in SKIP_COMPARE:
                        flat[mime].append(data)
            elif key not in SKIP_COMPARE:
                flat[key].append(value)
    return dict(flat)


def checked_cells(nb) -> list[int]:
    """Indices of the cells nbval compares: marked, and run (nbval skips a cell never run)."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and (MARKER in cell.source or "nbval-check-output" in cell.metadata.get("tags", []))
            and cell.execution_count is not None]


def _code(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def _executed(path: Path):
    """The build's execution of ``path``, or a reason why there is none that can be used."""
    executed = EXECUTED / path.relative_to(ROOT)  # the build mirrors the root's folders
    if not executed.is_file():
        return None, f"{executed} does not exist: build the book first (make book)"
    fingerprint = execute_notebooks.FINGERPRINT
    if not fingerprint.is_file() or fingerprint.read_text() != execute_notebooks.package_fingerprint():
        return None, "lib/scorelab changed since the book was built: build it again (make book)"
    nb = nbformat.read(executed, as_version=4)
    if _code(nb) != _code(nbformat.read(path, as_version=4)):
        return None, f"{executed} is older than {path.name}: build the book again (make book)"
    return nb, None


NOTEBOOKS = [p for p in execute_notebooks.book_notebooks()
             if checked_cells(nbformat.read(p, as_version=4))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_outputs_match_the_build(path):
    executed, reason = _executed(path)
    if executed is None:
        if os.environ.get("SCORELAB_REQUIRE_BUILD") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    committed = nbformat.read(path, as_version=4)
    for index in checked_cells(committed):
        expected, got = comparable(committed.cells[index].outputs), comparable(
            executed.cells[index].outputs)
        assert got == expected, (
            f"{path.name}, cell {index}: the build printed\n{got}\nbut the notebook holds\n"
            f"{expected}\n(a deliberate change: re-run scripts/strip_outputs.py on it)")


def test_comparison_follows_nbval():
    """Streams split over several outputs compare equal to one stream; a changed digit,
    a missing output or another stream name does not; images are not compared."""
    def stream(text, name="stdout"):
        return nbformat.v4.new_output("stream", name=name, text=text)

    def result(text, png="iVBOR"):
        return nbformat.v4.new_output("execute_result", data={"text/plain": text, "image/png": png},
                                      execution_count=3)

    reference = [stream("a 0.8\n"), stream("b 0.2\n"), result("(1, 2)")]
    assert comparable([stream("a 0.8\nb 0.2\n"), result("(1, 2)", png="other")]) == comparable(
        reference)
    assert comparable([stream("a 0.8\nb 0.3\n"), result("(1, 2)")]) != comparable(reference)
    assert comparable([stream("a 0.8\nb 0.2\n")]) != comparable(reference)
    assert comparable([stream("a 0.8\nb 0.2\n", "stderr"), result("(1, 2)")]) != comparable(
        reference)


def test_every_chapter_with_checked_outputs_is_compared():
    names = {p.name for p in NOTEBOOKS if p.parent.name == "book"}
    assert {"03_annealed_langevin.ipynb", "06_ncsn.ipynb"} <= names
