"""The built HTML book, as a reader's browser shows it (headless Chromium driven by Playwright).

The book in ``_build/html`` is used when it is newer than every source it is built from;
otherwise the test builds it first (the same command as ``make book``). Set ``BOOK_HTML`` to
a folder of built HTML to check that folder instead (a build shared with another target).
The pages are served on 127.0.0.1 by a thread-run ``http.server``; every request to another
host is aborted (the network is closed here, and a reader's CDN is not ours to test).

For each page: no console errors (except failed loads of other hosts), maths wrapped for
MathJax with no raw ``$$`` or MyST roles left, every image loaded with a non-zero natural
size, every animation's controls present and advancing a frame on click, launch buttons
(Colab, Binder) and the download button on notebook pages, no broken internal links
(file and anchor), the logo and the favicon loaded. On every page with a self-check quiz, one
question answered right and one answered wrong, and both feedbacks seen (no kernel involved).
One screenshot per page goes to ``_build/screenshots/``.

The book is built with the Makefile's own command (``jupyter-book build .`` from the root),
so the test checks the book that ``make book`` makes.

MathJax comes from a CDN (Sphinx's default ``mathjax_path``). ``make test`` installs the same
MathJax 3 release from the npm registry into ``.venv/mathjax`` (``MATHJAX_DIR`` overrides the
folder), and the test answers the CDN's requests from there: every formula must then be
typeset by MathJax (an ``mjx-container`` in every ``.math`` element), with no MathJax error and
no undefined macro. Without that folder (no npm) the check falls back to the markup: every
formula reached the page inside Sphinx's MathJax containers (``span.math``/``div.math`` with
``\\(...\\)``/``\\[...\\]`` delimiters). In both cases no ``$$``, ``{eq}`` or ``{cite}`` source
may be left in the text.

Without a browser (no ``chromium`` or no ``playwright``) the test is skipped with the reason,
except under ``CI=true``, where a missing browser fails.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest

pytestmark = pytest.mark.slow  # a built book, every page in headless Chromium

ROOT = Path(__file__).resolve().parents[1]
# what the book is built from
SOURCES = [ROOT / "_config.yml", ROOT / "_toc.yml", *(ROOT / "book").rglob("*.ipynb"),
           *(ROOT / "book").rglob("*.md"), *(ROOT / "solutions").glob("*.ipynb"),
           ROOT / "book" / "references.bib", *(ROOT / "book" / "_ext").glob("*.py"),
           *(ROOT / "book" / "quizzes").glob("*.json"), *(ROOT / "book" / "_static").rglob("*.*"),
           *(ROOT / "lib" / "scorelab").rglob("*.py")]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MAX_PAGE_BYTES = 5 * 2**20
MAX_BOOK_BYTES = 50 * 2**20
#: MyST roles, reStructuredText that reached the page as text (autodoc output parsed as MyST)
#: or other markup left in the text, and TeX outside any formula: a dollar or a command
#: such as \mathbf (a $$ display run into its paragraph pairs the dollars wrongly and leaves
#: such fragments, which MathJax does not report).
RAW_SOURCE = re.compile(r"\$|\{(?:eq|cite(?::[a-z]+)?|numref|ref|doc)\}`"
                        r"|\.\. [a-z:]+::|:(?:mod|func|class|meth|attr|math|param|type|rtype):`?"
                        r"|\\[a-zA-Z]+\b")


MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"
MATHJAX_DIR = Path(os.environ.get("MATHJAX_DIR", ROOT / ".venv" / "mathjax" / "node_modules" / "mathjax"))


def _serve_mathjax_offline(context) -> bool:
    """Answer requests for the MathJax CDN from the local bundle; False when there is none."""
    if not (MATHJAX_DIR / "es5" / "tex-mml-chtml.js").exists():
        return False

    def fulfil(route):
        path = MATHJAX_DIR / unquote(urlparse(route.request.url[len(MATHJAX_CDN):]).path)
        if path.is_file():
            route.fulfill(path=str(path))
        else:
            route.abort()

    context.route(MATHJAX_CDN + "**", fulfil)  # registered last, so it wins over the abort-all
    return True


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _missing_browser() -> str | None:
    if _chromium() is None:
        return "no chromium executable on PATH (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def book_command() -> list[str]:
    """The Makefile's book command (``jupyter-book build . ...``), with this Python's jupyter-book."""
    line = re.search(r"^BOOK_BUILD := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    words = line.split()
    assert words[0].endswith("/jupyter-book"), f"unexpected book command: {line}"
    return [str(Path(sys.executable).with_name("jupyter-book")), *words[1:]]


def _newest(paths) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def _book_html() -> Path:
    """A built book that is up to date with its sources, building it when it is not."""
    if os.environ.get("BOOK_HTML"):
        html = Path(os.environ["BOOK_HTML"]).resolve()
        assert (html / "index.html").exists(), f"BOOK_HTML={html} holds no built book"
        return html
    html = ROOT / "_build" / "html"
    built = _newest(html.glob("*.html")) if html.exists() else 0.0
    if built < _newest(SOURCES):
        start = time.perf_counter()
        subprocess.run(book_command(), cwd=ROOT, check=True)
        print(f"built the book in {time.perf_counter() - start:.0f} s")
    return html


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports what matters itself
        pass


@pytest.fixture(scope="module")
def site():
    reason = _missing_browser()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        print(f"SKIPPED the browser test: {reason}")
        pytest.skip(reason)
    html = _book_html()
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield html, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _pages(html: Path) -> list[str]:
    skip = {"_static", "_sources", "_images", "reports", "_panels_static"}
    return sorted(str(p.relative_to(html)) for p in html.rglob("*.html")
                  if not skip & set(p.relative_to(html).parts))


def _is_notebook_page(html: Path, page: str) -> bool:
    return (html / "_sources" / page).with_suffix(".ipynb").exists()


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset[str]:
    text = path.read_text(errors="replace")
    return frozenset(re.findall(r'\b(?:id|name)="([^"]+)"', text))


def _broken_link(html: Path, base: str, page_url: str, href: str) -> str | None:
    url = urljoin(page_url, href)
    if not url.startswith(base):
        return None
    path, fragment = urldefrag(url)
    relative = unquote(urlparse(path).path).lstrip("/")
    target = html / relative
    if target.is_dir():
        target = target / "index.html"
    if not target.exists():
        return f"{href} (no file {relative})"
    if fragment and target.suffix == ".html" and unquote(fragment) not in _anchors(target):
        return f"{href} (no anchor #{fragment} in {relative})"
    return None


def _local_context(browser, width: int, height: int):
    """A browser context that reaches only this machine's servers (127.0.0.1) and data: URLs.

    The network is closed: other hosts fail at once instead of waiting for time-outs.
    """
    context = browser.new_context(viewport={"width": width, "height": height})
    context.route(re.compile(r"^(?!http://127\.0\.0\.1:).*"),
                  lambda route: route.continue_() if route.request.url.startswith("data:")
                  else route.abort())
    return context


def _wait_for_mathjax(page) -> None:
    """Wait until MathJax has started and typeset the page."""
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                           timeout=20_000)
    page.evaluate("() => MathJax.startup.promise")


def _math_problems(page, typeset: bool) -> list[str]:
    """What is wrong with the page's maths; with ``typeset``, MathJax must have rendered it all."""
    if typeset and page.locator(".math").count():
        _wait_for_mathjax(page)
        problems = page.evaluate(r"""() => {
            const problems = [];
            for (const el of document.querySelectorAll('.math'))
                if (!el.querySelector('mjx-container'))
                    problems.push('formula not typeset: ' + el.textContent.trim().slice(0, 60));
            for (const el of document.querySelectorAll('mjx-merror, [data-mjx-error]'))
                problems.push('MathJax error: ' + (el.getAttribute('data-mjx-error') || el.textContent).slice(0, 80));
            for (const el of document.querySelectorAll('mjx-container mjx-mtext[style*="color: red"], mjx-container [mathcolor="red"]'))
                problems.push('undefined macro: ' + el.textContent.slice(0, 60));
            return problems;
        }""")
        if problems:
            return problems
    return page.evaluate(r"""() => {
        const problems = [];
        for (const el of document.querySelectorAll('.math')) {
            const copy = el.cloneNode(true);
            copy.querySelectorAll('.eqno').forEach(e => e.remove());  // "(2.1)#" before the formula
            const text = copy.textContent.trim();
            const wrapped = /^\\\(|^\\\[|^\\begin/.test(text) || el.querySelector('mjx-container');
            if (!wrapped) problems.push('unwrapped formula: ' + text.slice(0, 60));
        }
        if (window.MathJax && window.MathJax.startup && document.querySelector('.math')) {
            if (!document.querySelector('mjx-container'))
                problems.push('MathJax loaded but rendered nothing');
            if (document.querySelector('mjx-merror')) problems.push('MathJax error in a formula');
        }
        return problems;
    }""")


def _visible_text(page) -> str:
    return page.evaluate("""() => {
        const body = document.querySelector('main') || document.body;
        const copy = body.cloneNode(true);
        copy.querySelectorAll('pre, code, script, style, .math, mjx-container, textarea')
            .forEach(el => el.remove());
        return copy.textContent;
    }""")


def _check_images(page) -> tuple[int, list[str]]:
    page.evaluate("() => document.querySelectorAll('img').forEach(img => img.loading = 'eager')")
    page.wait_for_function("""() => Array.from(document.images).every(img =>
        img.complete || !img.src.startsWith(location.origin) && !img.src.startsWith('data:'))""",
                           timeout=15_000)
    images = page.evaluate("""() => Array.from(document.images).map(img => ({
        src: img.currentSrc || img.src, width: img.naturalWidth, height: img.naturalHeight,
        local: img.src.startsWith(location.origin) || img.src.startsWith('data:'),
        player: img.id.startsWith('_anim_img')}))""")
    # a player's image gets its first frame from the script, checked with the animations
    checked = [img for img in images if img["local"] and not (img["player"] and not img["src"])]
    bad = [f"image not loaded: {img['src'][:80]}" for img in checked
           if img["width"] == 0 or img["height"] == 0]
    return len(checked), bad


def _check_animations(page) -> tuple[int, list[str]]:
    problems = []
    players = page.locator("div.animation")
    for i in range(players.count()):
        player = players.nth(i)
        image, slider = player.locator("img").first, player.locator("input.anim-slider").first
        titles = ["First frame", "Previous frame", "Play", "Pause", "Next frame", "Last frame"]
        missing = [t for t in titles if player.locator(f'button[title="{t}"]').count() == 0]
        if missing or slider.count() == 0:
            problems.append(f"animation {i}: controls missing {missing or ['slider']}")
            continue
        player.locator('button[title="Pause"]').click()
        player.locator('button[title="First frame"]').click()
        first_src, first_value = image.get_attribute("src"), slider.input_value()
        player.locator('button[title="Next frame"]').click()
        if slider.input_value() == first_value or image.get_attribute("src") == first_src:
            problems.append(f"animation {i}: 'Next frame' did not advance "
                            f"(slider {first_value} -> {slider.input_value()})")
        if not (first_src or "").startswith("data:image"):
            problems.append(f"animation {i}: no frame shown")
    return players.count(), problems


def _check_launch_buttons(page) -> list[str]:
    hrefs = page.eval_on_selector_all(".dropdown-launch-buttons a", "els => els.map(a => a.href)")
    problems = [f"no {name} launch button" for name, host in
                (("Colab", "colab.research.google.com"), ("Binder", "mybinder.org"))
                if not any(host in href for href in hrefs)]
    if page.locator(".dropdown-download-buttons a[href$='.ipynb']").count() == 0:
        problems.append("no .ipynb download button")
    return problems


def _check_branding(page, html: Path) -> list[str]:
    """The logo (an image that loaded) and the favicon (a file that exists) of _config.yml."""
    problems = []
    logos = page.eval_on_selector_all("img.logo__image", "els => els.map(e => e.naturalWidth)")
    if not logos or not all(logos):
        problems.append("the logo is missing or did not load")
    icons = page.eval_on_selector_all("link[rel~='icon']", "els => els.map(e => e.href)")
    if not icons or not all((html / urlparse(href).path.lstrip("/")).is_file() for href in icons):
        problems.append(f"favicon missing: {icons}")
    return problems


def _check_quiz(page) -> tuple[int, list[str]]:
    """Answer one question right and another wrong; both must show their feedback."""
    questions = page.locator("div.scorelab-quiz .quiz-question")
    if page.locator("div.scorelab-quiz").count() == 0:
        return 0, []
    if questions.count() < 2:
        return 0, [f"quiz rendered {questions.count()} questions (JavaScript did not run?)"]
    problems = []
    for index, right in ((0, True), (1, False)):
        question = questions.nth(index)
        if question.locator(".quiz-choice").count():
            question.locator(f".quiz-choice[data-correct={'true' if right else 'false'}]").first.click()
        else:  # numeric: the first correct value or range, or a number none of the answers accept
            answers = question.evaluate("""q => JSON.parse(q.closest('.scorelab-quiz')
                .querySelector('script.scorelab-quiz-data').textContent)""")[index]["answers"]
            good = next(a for a in answers if a.get("correct"))
            value = (good["value"] if good["type"] == "value" else sum(good["range"]) / 2) if right \
                else 987654.321
            question.locator("input.quiz-input").fill(repr(value))
            question.locator("button.quiz-check").click()
        feedback = question.locator(".quiz-feedback")
        wanted = "quiz-correct" if right else "quiz-incorrect"
        classes, text = feedback.get_attribute("class") or "", feedback.inner_text().strip()
        if wanted not in classes or len(text) < 10:
            problems.append(f"quiz question {index + 1} answered {'right' if right else 'wrong'}: "
                            f"feedback {classes!r} {text[:60]!r}")
    return questions.count(), problems


def _has_quiz_source(page: str) -> bool:
    source = ROOT / Path(page).with_suffix(".ipynb")
    return source.is_file() and "```{quiz}" in source.read_text()


def test_every_page_in_a_browser(site):
    from playwright.sync_api import sync_playwright

    html, base = site
    shots = html.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    pages, failures = _pages(html), {}
    totals = {"images": 0, "links": 0, "animations": 0, "formulas": 0, "quiz questions": 0}
    start = time.perf_counter()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        context = _local_context(browser, 1280, 900)
        typeset = _serve_mathjax_offline(context)
        if not typeset and os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but there is no MathJax bundle in {MATHJAX_DIR} (make browser)")
        print("maths: " + ("typeset by MathJax, served from " + str(MATHJAX_DIR) if typeset
                           else "markup only (no local MathJax bundle)"))
        for name in pages:
            text = (html / name).read_text(errors="replace")
            redirect = re.search(r'http-equiv="refresh" content="\d+;\s*url=([^"]+)"', text, re.I)
            if redirect:  # index.html only forwards to the landing page
                broken = _broken_link(html, base, urljoin(base, name), redirect.group(1))
                if broken:
                    failures[name] = [f"redirect to a missing page: {broken}"]
                totals["links"] += 1
                continue
            page, errors = context.new_page(), []
            page.on("console", lambda msg, errors=errors: msg.type == "error" and not (
                msg.location.get("url", base).startswith("http")
                and not msg.location.get("url", base).startswith(base)) and errors.append(
                f"console: {msg.text[:200]}"))
            page.on("pageerror", lambda exc, errors=errors: errors.append(f"page error: {exc}"))
            url = urljoin(base, name)
            page.goto(url, wait_until="load")
            size = (html / name).stat().st_size
            if size > MAX_PAGE_BYTES:
                errors.append(f"page is {size / 2**20:.1f} MB (limit 5 MB)")
            errors += _math_problems(page, typeset)
            raw = RAW_SOURCE.search(_visible_text(page))
            if raw:
                errors.append(f"unrendered MyST source {raw.group(0)!r} in the text")
            n_images, bad = _check_images(page)
            # the screenshot shows the page as a reader first sees it, before any click
            page.screenshot(path=str(shots / (name.replace("/", "__")[:-5] + ".png")),
                            full_page=True)
            n_anim, anim_problems = _check_animations(page)
            n_quiz, quiz_problems = _check_quiz(page)
            errors += bad + anim_problems + quiz_problems + _check_branding(page, html)
            totals["quiz questions"] += n_quiz
            if _has_quiz_source(name) and not n_quiz:
                errors.append("the chapter's quiz is not on the page")
            if _is_notebook_page(html, name):
                errors += _check_launch_buttons(page)
            hrefs = page.eval_on_selector_all("a[href]",
                                              "els => els.map(a => a.getAttribute('href'))")
            links = [h for h in hrefs if not h.startswith(("mailto:", "javascript:"))]
            errors += [f"broken link: {b}" for h in links
                       if (b := _broken_link(html, base, url, h))]
            totals["images"] += n_images
            totals["formulas"] += page.locator(".math").count()
            totals["animations"] += n_anim
            totals["links"] += sum(urljoin(url, h).startswith(base) for h in links)
            if errors:
                failures[name] = errors
            page.close()
        browser.close()
    book_bytes = sum(p.stat().st_size for p in html.rglob("*") if p.is_file())
    print(f"\nbrowser check: {len(pages)} pages, {totals['images']} images, "
          f"{totals['links']} internal links, {totals['animations']} animations, "
          f"{totals['formulas']} formulas, {totals['quiz questions']} quiz questions checked in "
          f"{time.perf_counter() - start:.0f} s; "
          f"built HTML {book_bytes / 2**20:.1f} MB; "
          f"screenshots in {shots}")
    assert book_bytes < MAX_BOOK_BYTES, f"built HTML is {book_bytes / 2**20:.1f} MB (limit 50 MB)"
    assert not failures, "\n".join(f"{page}: {problem}" for page, problems in failures.items()
                                   for problem in problems)
