"""Every notebook as a student sees it outside the book: plain Jupyter or Colab, no _config.yml.

Each chapter (book/), exercise (exercises/) and solution (solutions/) notebook is converted with
nbconvert to plain HTML and opened in headless Chromium with the local MathJax 3 (the same bundle
and the same offline routing as tests/test_browser.py), configured as JupyterLab configures it:
``$...$`` and ``$$...$$`` delimiters and no macros of its own. The maths macros of the book
(``\\grad``, ``\\N``, ...) must then come from the notebook itself (its ``maths-macros`` cell,
written by scripts/notebook_macros.py); any MathJax error or undefined macro fails the test.

MyST roles (``{eq}``, ``{numref}``, ``{cite}``, ...), directives (``:::{note}``, the quiz) and
equation labels only render in the book: outside it they show as raw text, or vanish. The test
reports how many roles remain visible in each chapter of book/ (written for the book, so this is
a report), and fails when a notebook a student opens in Colab shows any MyST syntax: the
chapters' plain copies (notebooks/, which the book's Colab and Binder buttons open), the
exercises and the solutions. Skipped without Chromium, Playwright or the MathJax bundle,
except under CI=true, where that fails.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from test_browser import (CHROMIUM_ARGS, MATHJAX_CDN, MATHJAX_DIR, _chromium, _missing_browser,
                          _serve_mathjax_offline, _wait_for_mathjax)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for folder in ("book", "notebooks", "exercises", "solutions")
                   for p in (ROOT / folder).glob("[0-9][0-9]_*.ipynb")) + [
    ROOT / "notebooks" / "notation.ipynb"]
# nbconvert turns the role's `target` into <code>, so the visible text shows "{eq}" then the target
ROLE = re.compile(r"\{(?:eq|numref|cite(?::[a-z]+)?|ref|doc|term|math)\}")
# in a markdown source: a directive's opening fence, or the label after an equation's closing $$
DIRECTIVE = re.compile(r"^(?::{3,}|`{3,})\{[\w-]+\}|\$\$[ \t]*\([\w:.-]+\)", re.M)
# JupyterLab 4 and Notebook 7 run MathJax 3 with these delimiters; Colab's are the same
JUPYTER_MATHJAX = """window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true},
  startup: {typeset: true}
};"""


def _html(path: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab",
                            mathjax_url=MATHJAX_CDN + "es5/tex-mml-chtml.js")
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    return body


@pytest.fixture(scope="module")
def browser_context():
    reason = _missing_browser()
    if reason is None and not (MATHJAX_DIR / "es5" / "tex-mml-chtml.js").exists():
        reason = f"no MathJax bundle in {MATHJAX_DIR} (make browser)"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the standalone-notebook test cannot run: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.route(re.compile(r"^(?!file:).*"), lambda route: route.abort())
        assert _serve_mathjax_offline(context)
        context.add_init_script(JUPYTER_MATHJAX)
        yield context
        browser.close()


def _render(context, html_path: Path) -> dict:
    page = context.new_page()
    page.goto(html_path.as_uri(), wait_until="load")
    _wait_for_mathjax(page)
    result = page.evaluate(r"""() => {
        const problems = [];
        for (const el of document.querySelectorAll('mjx-merror, [data-mjx-error]'))
            problems.push('MathJax error: ' +
                          (el.getAttribute('data-mjx-error') || el.textContent).slice(0, 80));
        for (const el of document.querySelectorAll(
                'mjx-container [mathcolor="red"], mjx-container mjx-mtext[style*="color: red"]'))
            problems.push('undefined macro: ' + el.textContent.slice(0, 60));
        const body = document.body.cloneNode(true);
        body.querySelectorAll('pre, script, style, mjx-container, .jp-InputArea-editor')
            .forEach(el => el.remove());
        return {problems, formulas: document.querySelectorAll('mjx-container').length,
                text: body.textContent};
    }""")
    page.close()
    return result


def _write_notebook(path: Path, markdown: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(m) for m in markdown])
    nbformat.write(nb, path)
    return path


def _directives(path: Path) -> list[str]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return [m[0] for c in nb.cells if c.cell_type == "markdown" for m in DIRECTIVE.finditer(c.source)]


def test_directive_pattern():
    sources = [":::{note}", "```{quiz} quizzes/01.json", "$$ (eq-langevin)", "$$\n\\tag{2.1}\n$$",
               "> **Note**", "```python"]
    assert [bool(DIRECTIVE.search(s)) for s in sources] == [True, True, True, False, False, False]


def test_the_check_sees_undefined_macros_and_roles(browser_context, tmp_path):
    """Without the macros cell \\grad is undefined; with it, it typesets; roles show as text."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from notebook_macros import macro_cell

    text = "The score $\\grad \\log p$ of {eq}`eq-score` and $\\N(0, 1)$."
    bare = _write_notebook(tmp_path / "bare.ipynb", [text])
    defined = _write_notebook(tmp_path / "defined.ipynb", [macro_cell().source, text])
    results = {}
    for path in (bare, defined):
        html_path = path.with_suffix(".html")
        html_path.write_text(_html(path))
        results[path.stem] = _render(browser_context, html_path)
    assert any("grad" in p for p in results["bare"]["problems"]), results["bare"]["problems"]
    assert results["defined"]["problems"] == []
    assert len(ROLE.findall(results["defined"]["text"])) == 1


def test_every_notebook_renders_its_maths_outside_the_book(browser_context, tmp_path):
    failures, report = {}, []
    for path in NOTEBOOKS:
        name = str(path.relative_to(ROOT))
        html_path = tmp_path / (name.replace("/", "__") + ".html")
        html_path.write_text(_html(path))
        result = _render(browser_context, html_path)
        roles = ROLE.findall(result["text"])
        report.append(f"{name}: {result['formulas']} formulas, {len(roles)} raw MyST roles")
        problems = list(dict.fromkeys(result["problems"]))  # one line per distinct problem
        if result["formulas"] == 0 and "$" in path.read_text():
            problems.append("MathJax typeset nothing")
        if roles and not name.startswith("book/"):
            problems.append(f"{len(roles)} raw MyST roles, e.g. {roles[:3]} (Colab shows them as text)")
        directives = _directives(path)
        if directives and not name.startswith("book/"):
            problems.append(f"MyST directives or equation labels left: {directives[:3]}")
        if problems:
            failures[name] = problems
    print("\nstandalone notebooks (nbconvert + MathJax 3, no book config):\n  "
          + "\n  ".join(report))
    assert not failures, "\n".join(f"{name}: {problem}" for name, problems in failures.items()
                                   for problem in problems)
