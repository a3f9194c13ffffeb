"""A simulated Colab start: the set-up cell installs the course package where it is missing.

Colab's runtime has torch, numpy, matplotlib and ipywidgets but not ``scorelab``. The test
makes such an environment: a fresh virtual environment that sees this environment's
third-party packages (through a ``.pth`` line, which does not process the editable install of
``scorelab`` found there) but cannot import ``scorelab``. It then runs, in IPython (the
``%pip`` magic is IPython's), the set-up cell of the first exercise and solution notebooks with
the repository URL (and branch) replaced by a copy of the working tree, the imports, the first
solution and its check, and asserts the check's success line. The chapters' plain copies in
notebooks/ open with the same set-up cell.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

from scorelab.checks._core import PASS_MARK

pytestmark = pytest.mark.slow  # a fresh virtual environment and a pip install

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_densities_and_scores.ipynb"
COPIED = ["lib", "pyproject.toml", "README.md", "requirements.txt"]


def _code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def _repository() -> tuple[str, str]:
    section = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return section["url"], section.get("branch", "main")


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> Path:
    """A virtual environment without scorelab that sees this one's third-party packages."""
    folder = tmp_path_factory.mktemp("colab")
    venv.EnvBuilder(with_pip=True).create(folder / "venv")
    python = folder / "venv" / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "colab_runtime.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    missing = subprocess.run([python, "-c", "import torch, IPython; import scorelab"],
                             capture_output=True, text=True)
    assert "No module named 'scorelab'" in missing.stderr, missing.stderr
    return python


def _source_copy(folder: Path) -> Path:
    """The files ``pip install`` needs from the working tree (what the URL would fetch)."""
    copy = folder / "scorelab-source"
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info", "build"))
        else:
            copy.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def test_set_up_cell_installs_scorelab_then_the_first_check_passes(fresh_python, tmp_path):
    url, branch = _repository()
    solution = _code_cells(ROOT / "solutions" / NOTEBOOK)
    exercise = _code_cells(ROOT / "exercises" / NOTEBOOK)
    chapter = _code_cells(ROOT / "notebooks" / NOTEBOOK)
    set_up = exercise[0]
    assert set_up == solution[0] == chapter[0] and f"git+{url}@{branch}" in set_up
    local = set_up.replace(f"git+{url}@{branch}", str(_source_copy(tmp_path)))
    check = next(k for k, cell in enumerate(solution) if "checks.exercise_1_1(" in cell)
    cells = [local, *solution[1:check + 1]]  # set-up, imports, Exercise 1.1 up to its check
    script = tmp_path / "colab.py"
    script.write_text(
        "import json, sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        f"for source in json.loads({json.dumps(json.dumps(cells))}):\n"
        "    result = shell.run_cell(source)\n"
        "    if not result.success:\n"
        "        sys.exit(1)\n"
        "import scorelab\n"
        "print('scorelab from', scorelab.__file__)\n"
    )
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    environment.update(PATH=f"{fresh_python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                       MPLBACKEND="Agg", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run = subprocess.run([fresh_python, script], capture_output=True, text=True, cwd=tmp_path,
                         env=environment, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"{PASS_MARK} Exercise 1.1:" in run.stdout, run.stdout
    installed_at = run.stdout.rsplit("scorelab from", 1)[1].strip()
    assert str(fresh_python.parents[1]) in installed_at  # installed by the cell, not found elsewhere
