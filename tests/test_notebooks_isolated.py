"""Each chapter stands alone: it imports and seeds for itself and needs nothing another left behind.

nbval already executes every notebook in its own kernel; these static checks (no execution)
say *why* a chapter would fail there, and catch what a kernel run cannot: a chapter that only
works because a file written by another chapter happens to be on disk.

- the first code cell imports what the chapter uses and seeds with ``seed_everything``;
- every name a cell reads was imported or defined in that cell or an earlier one of the
  same notebook (or is a builtin): no state from another kernel;
- no notebook runs another (``%run``, ``%store -r``, ``import`` of a notebook);
- no chapter reads a file that another chapter writes.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
IPYTHON_NAMES = {"display", "get_ipython", "In", "Out", "_", "__", "___"}
# A call that writes a file whose name is its first string argument (or the receiver of
# .write_text / .write_bytes / .savefig / .save).
WRITE_CALLS = {"savefig", "save", "write_text", "write_bytes", "to_csv", "savez", "dump", "imsave"}
PATH_LITERAL = re.compile(r"^[\w./-]+\.(?:pt|pth|npz|npy|csv|json|png|svg|pdf|gif|mp4|pkl|txt|html)$")


def _code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def _python(source: str) -> str:
    """The cell without IPython magics and shell escapes (kept as blank lines)."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            indent = line[: len(line) - len(stripped)]
            lines.append(f"{indent}pass")
        else:
            lines.append(line)
    return "\n".join(lines)


def _defined_and_loaded(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names a cell binds anywhere (incl. in functions), and global names it reads at top level.

    Reads inside function bodies are resolved with the function's own arguments and locals,
    so only free names count.
    """
    defined: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            defined.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            defined.add(node.name)
    loaded = {node.id for node in ast.walk(tree)
              if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return defined, loaded


def _written_files(tree: ast.AST) -> set[str]:
    """String literals that look like file names, passed to a call that writes a file."""
    written = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        mode_w = any(isinstance(arg, ast.Constant) and isinstance(arg.value, str) and "w" in arg.value
                     for arg in node.args[1:]) or any(
            keyword.arg == "mode" and isinstance(keyword.value, ast.Constant)
            and "w" in str(keyword.value.value) for keyword in node.keywords)
        if name in WRITE_CALLS or (name == "open" and mode_w):
            for child in ast.walk(node):
                if isinstance(child, ast.Constant) and isinstance(child.value, str) \
                        and PATH_LITERAL.match(child.value):
                    written.add(child.value)
    return written


@pytest.fixture(scope="module")
def parsed() -> dict[str, list[ast.Module]]:
    return {path.name: [ast.parse(_python(cell)) for cell in _code_cells(path)] for path in CHAPTERS}


def test_there_are_eight_chapters():
    assert [path.name[:2] for path in CHAPTERS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_first_code_cell_imports_and_seeds(path, parsed):
    first = parsed[path.name][0]
    imports = [node for node in ast.walk(first) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert any(isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scorelab")
               for node in imports), f"{path.name}: the first code cell must import from scorelab"
    seeds = [node for node in ast.walk(first) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "seed_everything"]
    assert seeds, f"{path.name}: the first code cell must seed with seed_everything(...)"
    assert all(len(call.args) == 1 and isinstance(call.args[0], ast.Constant) for call in seeds), \
        f"{path.name}: seed_everything must get a literal seed, so a re-run prints the same numbers"
    # Modules the chapter uses are imported up front, not by a later cell after the seed.
    later_imports = {alias.name.split(".")[0] for cell in parsed[path.name][1:] for node in ast.walk(cell)
                     if isinstance(node, ast.Import) for alias in node.names}
    later_imports |= {(node.module or "").split(".")[0] for cell in parsed[path.name][1:]
                      for node in ast.walk(cell) if isinstance(node, ast.ImportFrom)}
    assert not later_imports & {"scorelab", "torch", "numpy", "random"}, \
        f"{path.name}: imports {sorted(later_imports)} after the first cell; move them into it"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_name_is_defined_in_the_chapter_before_use(path, parsed):
    known = set(dir(builtins)) | IPYTHON_NAMES
    for index, tree in enumerate(parsed[path.name], start=1):
        defined, loaded = _defined_and_loaded(tree)
        missing = loaded - known - defined
        assert not missing, (f"{path.name}, code cell {index} reads {sorted(missing)}, which no earlier "
                             "cell of this chapter defines: it would depend on another kernel's state")
        known |= defined


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_chapter_runs_another(path):
    for source in _code_cells(path):
        for line in source.splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("%run", "%store", "%load ")), f"{path.name}: {stripped}"
            assert ".ipynb" not in stripped, f"{path.name} refers to a notebook: {stripped}"


def test_no_chapter_reads_a_file_another_chapter_writes(parsed):
    written = {name: set().union(*(_written_files(tree) for tree in trees))
               for name, trees in parsed.items()}
    sources = {path.name: "\n".join(_code_cells(path)) for path in CHAPTERS}
    for writer, files in written.items():
        for file in files:
            readers = [name for name, source in sources.items() if name != writer and file in source]
            assert not readers, f"{file}, written by {writer}, is used by {readers}"


def test_the_write_detector_sees_writes():
    """The check above is only as good as the detector: it must find the usual ways to write."""
    tree = ast.parse('fig.savefig("figure.png")\ntorch.save(model, "model.pt")\n'
                     'open("table.csv", "w").write(text)\nPath("x.json").write_text(s)\n'
                     'open("read.csv").read()')
    assert _written_files(tree) == {"figure.png", "model.pt", "table.csv", "x.json"}
    defined, loaded = _defined_and_loaded(ast.parse("def f(a):\n    return a + b\nc = f(1)"))
    assert {"f", "a", "c"} <= defined and "b" in loaded - defined
