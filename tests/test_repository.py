"""The repository's own rules: install lists agree, notebooks carry no stray outputs, CI runs the README command."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# conda-forge spells some packages differently from PyPI
CONDA_NAMES = {"torch": {"pytorch", "pytorch-cpu"}}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject_dependencies() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {_name(r) for r in data["project"]["dependencies"]}


def _conda_dependencies(path: Path) -> set[str]:
    names, in_dependencies = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("dependencies:"):
            in_dependencies = True
            continue
        match = re.match(r"^  - ([A-Za-z0-9_.\-]+)", line)
        if in_dependencies and match and match.group(1) not in ("pip", "python"):
            names.add(match.group(1).lower())
    return names


@pytest.mark.parametrize("env_file", ["environment.yml", "binder/environment.yml"])
def test_environment_matches_pyproject(env_file):
    conda = _conda_dependencies(ROOT / env_file)
    for dependency in _pyproject_dependencies():
        accepted = CONDA_NAMES.get(dependency, {dependency})
        assert conda & accepted, f"{env_file} lacks {dependency} (pyproject.toml lists it)"
    assert len(conda) == len(_pyproject_dependencies()), f"{env_file} lists extra packages: {conda}"


def test_environment_installs_the_repository():
    assert re.search(r"^\s+- -e \.\[book,test\]$", (ROOT / "environment.yml").read_text(), re.M)


def test_pyproject_declares_lower_bounds_only():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in data["project"]["dependencies"]:
        assert "==" not in requirement and "<" not in requirement, requirement


def test_requirements_pin_the_cpu_torch():
    pins = (ROOT / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins
    assert any(re.fullmatch(r"jupyter-book==1\.[\d.a-z]+", p) for p in pins)


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    commands = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def _notebooks():
    return sorted(p for d in ("book", "solutions", "exercises", "notebooks")
                  for p in (ROOT / d).glob("*.ipynb"))


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_has_no_stray_outputs(path):
    """Only cells marked NBVAL_CHECK_OUTPUT keep outputs (and their execution count); the plain
    copies of the chapters in notebooks/ keep none (nbval reads book/)."""
    nb = json.loads(path.read_text())
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        marked = "NBVAL_CHECK_OUTPUT" in source or "nbval-check-output" in cell["metadata"].get("tags", [])
        checked = marked and path.parent.name != "notebooks"
        if checked:
            assert cell["outputs"] and cell["execution_count"], f"cell {index}: checked cell without output"
        else:
            assert not cell["outputs"], f"cell {index} of {path.name} carries committed output"
    assert "widgets" not in nb["metadata"], f"{path.name} carries widget state"


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _text_sources():
    folders = ("book", "solutions", "notebooks", "exercises", "lib", "scripts", "tests")
    suffixes = {".ipynb", ".md", ".json", ".py", ".bib", ".yml"}
    return sorted(p for d in folders for p in (ROOT / d).rglob("*")
                  if p.suffix in suffixes and "_build" not in p.parts and p.is_file())


def test_no_control_characters_in_sources():
    """A stray control character (a backspace where "\\b" of "\\boldsymbol" was meant) breaks
    MathJax in every page that shows the formula."""
    found = []
    for path in _text_sources():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":  # the cells' text, as JSON decodes it
            cells = json.loads(text)["cells"]
            text = "\n".join("".join(c["source"]) for c in cells)
        for match in CONTROL.finditer(text):
            context = text[max(0, match.start() - 25):match.start() + 25]
            found.append(f"{path.relative_to(ROOT)}: {context!r}")
    assert not found, "\n".join(found)


#: What the repository's top level holds: the book's sources and configuration, the package,
#: the generated exercises and notebooks, scripts, tests and the files that install them.
TOP_LEVEL = {".ci", ".gitignore", "Makefile", "README.md", "_config.yml", "_toc.yml", "binder",
             "book", "environment.yml", "exercises", "lib", "notebooks", "pyproject.toml",
             "requirements.txt", "scripts", "solutions", "tests"}


def test_no_stray_files_at_the_top_level():
    """A run's leftovers (process ids, logs, checkpoints) must not be committed by mistake."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    stray = {path.split("/", 1)[0] for path in listed} - TOP_LEVEL
    assert not stray, f"unexpected files at the repository's top level: {sorted(stray)}"
