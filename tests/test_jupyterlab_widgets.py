"""The chapters' explorers where a student uses them: in JupyterLab, with a live kernel.

A JupyterLab server starts on 127.0.0.1 (a free port, a random token) in a temporary folder that
holds copies of chapters 2 and 4 (so nothing is written into book/); headless Chromium opens
each chapter, runs all its cells from the Run menu, checks that no cell failed, then types a new
value into the first slider of the chapter's explorer (the Langevin explorer of chapter 2, the
DSM noise-level explorer of chapter 4) and waits for the explorer's figure to be redrawn by the
kernel. The server (and its kernels) are stopped at the end. Screenshots of both explorers go
to ``_build/screenshots/jupyterlab_*.png``.

The whole chapters run, training included (about a minute each on a 2-core CPU), because that
is what a student does; the test is marked slow. It is skipped without JupyterLab, Chromium or
Playwright, except under CI=true, where that fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from test_browser import CHROMIUM_ARGS, _chromium, _local_context, _missing_browser

ROOT = Path(__file__).resolve().parents[1]
# chapter -> the explorer's value typed into its first slider (its start value differs)
EXPLORERS = {"02_langevin_dynamics.ipynb": "0.5", "04_denoising_score_matching.ipynb": "1"}
RUN_SECONDS = 600  # a generous bound on running a whole chapter
DONE = "all cells have run"  # printed by a last cell added to the copies


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    reason = _missing_browser()
    if reason is None and importlib.util.find_spec("jupyterlab") is None:
        reason = "jupyterlab is not installed (pip install -e '.[test]')"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the JupyterLab test cannot run: {reason}")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("lab")
    for name in EXPLORERS:  # the chapter, plus a last cell that marks the end of "Run All"
        nb = nbformat.read(ROOT / "book" / name, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(f"print({DONE!r})"))
        nbformat.write(nb, folder / name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_CONFIG_DIR": str(folder / ".config"), "JUPYTER_RUNTIME_DIR": str(folder / ".runtime"),
           "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
         f"--LabApp.workspaces_dir={folder / '.workspaces'}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=(folder / "server.log").open("w"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n"
                                       + (folder / "server.log").read_text()[-3000:])
                time.sleep(1)
        yield base, token
    finally:
        server.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode is not None


def _run_all(page) -> None:
    """Run every cell from the Run menu and wait until the kernel is done."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    accept = page.locator(".jp-Dialog .jp-mod-accept").first  # "Select Kernel", at times
    try:
        accept.wait_for(state="visible", timeout=5_000)
        accept.click()  # the preferred kernel, already selected
    except PlaywrightTimeout:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    for attempt in range(3):  # a click before the kernel is connected runs nothing: retry
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(
                """() => [...document.querySelectorAll('.jp-InputPrompt')]
                    .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))""",
                timeout=60_000, polling=500)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    page.wait_for_function(
        """done => [...document.querySelectorAll('.jp-OutputArea-output')].some(el =>
            el.textContent.trim() === done  // the last cell ran, or a cell failed
            || el.dataset.mimeType === 'application/vnd.jupyter.stderr'
               && /Traceback|Error/.test(el.textContent))""",
        arg=DONE, timeout=RUN_SECONDS * 1000, polling=1000)


def _errors(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
        .map(e => e.textContent).filter(t => /Traceback|Error/.test(t)).map(t => t.slice(0, 300))""")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", sorted(EXPLORERS))
def test_explorer_redraws_in_jupyterlab(jupyterlab, chapter):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        context = _local_context(browser, 1300, 1000)
        page = context.new_page()
        # a workspace of its own, reset: only this chapter is open (no tab of the other one)
        workspace = Path(chapter).stem.replace("_", "-")
        page.goto(f"{base}/lab/workspaces/{workspace}/tree/{chapter}?reset&token={token}",
                  wait_until="load")
        try:
            _run_all(page)
        finally:
            page.screenshot(path=str(shots / f"jupyterlab_{Path(chapter).stem}_run.png"))
        assert not _errors(page), f"{chapter}: a cell failed in JupyterLab:\n" + "\n".join(_errors(page))
        maths_errors = page.evaluate("""() => [...document.querySelectorAll(
            'mjx-merror, [data-mjx-error]')].map(e => e.getAttribute('data-mjx-error')
            || e.textContent)""")
        assert not maths_errors, f"{chapter}: MathJax errors in JupyterLab: {maths_errors[:5]}"
        explorer = page.locator(".widget-interact").first
        explorer.wait_for(state="attached", timeout=60_000)
        explorer.evaluate("el => el.scrollIntoView({block: 'center'})")  # off-screen cells are
        explorer.wait_for(state="visible", timeout=60_000)  # not drawn until scrolled to
        image = explorer.locator("img").first
        image.wait_for(timeout=120_000)
        before = image.get_attribute("src")
        readout = explorer.locator(".widget-readout").first
        old_value = readout.text_content().strip()
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(EXPLORERS[chapter])
        page.keyboard.press("Enter")
        page.wait_for_function(
            "([el, before]) => { const img = el.querySelector('img'); "
            "return img && img.getAttribute('src') !== before; }",
            arg=[explorer.element_handle(), before], timeout=120_000, polling=500)
        new_value = readout.text_content().strip()
        explorer.screenshot(path=str(shots / f"jupyterlab_{Path(chapter).stem}.png"))
        browser.close()
    assert new_value != old_value, f"{chapter}: the slider stayed at {old_value}"


@pytest.mark.parametrize("package", ["jupyterlab", "nbconvert"])
def test_the_test_tools_are_pinned_alike(package):
    """pyproject's test extra admits the version that requirements.txt and environment.yml pin."""
    import tomllib

    from packaging.requirements import Requirement

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    specs = [Requirement(r) for r in extra["test"] if Requirement(r).name == package]
    assert specs, f"pyproject's test extra lacks {package}"
    pins = re.findall(rf"^{package}==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    conda = re.findall(rf"^\s+- {package}==(\S+)$", (ROOT / "environment.yml").read_text(), re.M)
    assert len(pins) == 1 and conda == pins, (pins, conda)
    assert specs[0].specifier.contains(pins[0]), f"{package}=={pins[0]} is outside {specs[0]}"
