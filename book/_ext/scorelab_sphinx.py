"""Two small fixes and the quiz directive of the HTML book, loaded through
``sphinx.local_extensions`` in _config.yml.

1. Tensor shapes in docstrings. The package writes shapes as ``(N, *D)``; reStructuredText reads
   the ``*`` as the start of emphasis and the API page fails the ``-W`` build with "Inline
   emphasis start-string without end-string". Before autodoc renders a docstring, a ``*`` that
   opens a shape entry, as in ``(N, *D)`` or ``(T, N, *D)``, is escaped, outside literals only.
2. Repeated inline scripts. sphinx-thebe 0.3.1 registers its inline configuration script
   (``const THEBE_JS_URL = ...``) twice, once with the filename None and once with "", so every
   page declares those constants twice and the browser logs "Identifier 'THEBE_JS_URL' has
   already been declared". Each page keeps the first copy of each script.
3. Self-check quizzes. The directive

   ```{quiz} quizzes/01.json
   ```

   (in a chapter's markdown cell; the path is relative to the page) embeds the questions of a
   JSON file in jupyterquiz's format in the page, and ``_static/quiz.js`` (from
   book/_static/quiz/) turns them into buttons and answer boxes that give feedback in the browser:
   no kernel, no network. The file is checked when the book is built: a malformed quiz is a
   build error that names the file and the question.
4. Launch and download buttons. A chapter's MyST roles, directives and captions render only in
   the book, so its Colab and Binder buttons open the plain copy of the chapter,
   notebooks/NN_name.ipynb (written by scripts/make_notebooks.py), instead of book/NN_name.ipynb,
   and its download button (``_sources/book/NN_name.ipynb``) gives that copy too. A chapter
   without its copy is a build warning (an error under ``-W``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

LOGGER = logging.getLogger(__name__)

QUIZ_STATIC = Path(__file__).resolve().parents[1] / "_static" / "quiz"
QUESTION_TYPES = ("multiple_choice", "numeric")
NUMERIC_ANSWER_TYPES = ("value", "range", "default")

# a star right after "(" or ", " that starts the last name of a shape tuple's entry: (N, *D),
# (*shape), (*D, 3); not an emphasis after a comma, "Hyvärinen (2005), *Estimation ...*"
_SHAPE_STAR = re.compile(r"(?:(?<=[(,] )|(?<=\())\*(?=[A-Za-z_]\w*[,)])")


def escape_shape_stars(app, what, name, obj, options, lines: list[str]) -> None:
    for index, line in enumerate(lines):
        # ``literals`` alternate with plain text when the line is split on double backticks
        parts = line.split("``")
        parts[::2] = [_SHAPE_STAR.sub(r"\\*", part) for part in parts[::2]]
        lines[index] = "``".join(parts)


def _key(script) -> tuple:
    # the two copies differ only in their filename, None or "" (an inline script has none)
    attributes = getattr(script, "attributes", {})
    return (getattr(script, "filename", script) or "", tuple(sorted(attributes.items())))


def unique_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, scripts = set(), []
    for script in context.get("script_files", []):
        if (key := _key(script)) not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"] = scripts


def launch_plain_notebooks(app, pagename, templatename, context, doctree) -> None:
    """Point the Colab and Binder buttons of ``book/NN_name`` at ``notebooks/NN_name.ipynb``."""
    if not re.fullmatch(r"book/\d\d_\w+", pagename) or pagename not in app.env.all_docs:
        return
    if Path(app.env.doc2path(pagename)).suffix != ".ipynb":
        return
    name = pagename.removeprefix("book/") + ".ipynb"
    if not (Path(app.srcdir) / "notebooks" / name).is_file():
        LOGGER.warning(f"notebooks/{name} is missing: run `make notebooks`", location=pagename)
        return
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if group.get("label") == "launch-buttons" else []:
            if button.get("text") in ("Colab", "Binder") and f"book/{name}" in button["url"]:
                button["url"] = button["url"].replace(f"book/{name}", f"notebooks/{name}")


def download_plain_notebooks(app, exception) -> None:
    """Put each chapter's plain copy where the download button of its page points."""
    if exception is not None or app.builder.format != "html":
        return
    for page in sorted((Path(app.outdir) / "_sources" / "book").glob("[0-9][0-9]_*.ipynb")):
        plain = Path(app.srcdir) / "notebooks" / page.name
        if plain.is_file():
            shutil.copyfile(plain, page)


def check_quiz(questions, where: str = "quiz") -> list[dict]:
    """The questions of a jupyterquiz JSON file, or ValueError naming what is wrong.

    A quiz is a list of 1 to 10 questions, each ``{"question", "type", "answers"}``:
    ``multiple_choice`` answers are ``{"answer", "correct", "feedback"}`` with at least one
    correct and one wrong answer; ``numeric`` answers are ``{"type": "value", "value"}`` or
    ``{"type": "range", "range": [low, high]}`` with ``correct`` and ``feedback``, at least one
    correct, plus an optional ``{"type": "default", "feedback"}`` for any other number.
    """
    if not isinstance(questions, list) or not 1 <= len(questions) <= 10:
        raise ValueError(f"{where}: expected a list of 1 to 10 questions")
    for number, question in enumerate(questions, start=1):
        at = f"{where}, question {number}"
        if not isinstance(question, dict) or not isinstance(question.get("question"), str):
            raise ValueError(f"{at}: expected an object with a 'question' string")
        if question.get("type") not in QUESTION_TYPES:
            raise ValueError(f"{at}: 'type' must be one of {QUESTION_TYPES}, "
                             f"got {question.get('type')!r}")
        answers = question.get("answers")
        if not isinstance(answers, list) or not answers:
            raise ValueError(f"{at}: expected a non-empty list of 'answers'")
        for answer in answers:
            if not isinstance(answer, dict) or not isinstance(answer.get("feedback", ""), str):
                raise ValueError(f"{at}: every answer is an object whose 'feedback' is a string")
        if question["type"] == "multiple_choice":
            if not all(isinstance(a.get("answer"), str) and isinstance(a.get("correct"), bool)
                       for a in answers):
                raise ValueError(f"{at}: each choice needs an 'answer' string and a 'correct' flag")
            if sum(a["correct"] for a in answers) < 1 or all(a["correct"] for a in answers):
                raise ValueError(f"{at}: needs at least one correct and one wrong choice")
        else:
            for answer in answers:
                kind = answer.get("type")
                if kind not in NUMERIC_ANSWER_TYPES:
                    raise ValueError(f"{at}: numeric answer 'type' must be one of "
                                     f"{NUMERIC_ANSWER_TYPES}, got {kind!r}")
                if kind == "value" and not isinstance(answer.get("value"), (int, float)):
                    raise ValueError(f"{at}: a 'value' answer needs a number 'value'")
                if kind == "range":
                    bounds = answer.get("range")
                    if not (isinstance(bounds, list) and len(bounds) == 2
                            and all(isinstance(b, (int, float)) for b in bounds)
                            and bounds[0] <= bounds[1]):
                        raise ValueError(f"{at}: a 'range' answer needs 'range': [low, high]")
                if kind != "default" and not isinstance(answer.get("correct"), bool):
                    raise ValueError(f"{at}: each numeric answer needs a 'correct' flag")
            if not any(a.get("correct") for a in answers):
                raise ValueError(f"{at}: no numeric answer is marked correct")
    return questions


class QuizDirective(SphinxDirective):
    """```{quiz} quizzes/NN.json``` : the questions of that file, answered in the page."""

    required_arguments = 1
    has_content = False
    option_spec = {"class": directives.class_option}

    def run(self):
        relative, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(relative)
        for asset in ("quiz.js", "quiz.css"):  # a changed renderer rebuilds (and recopies) them
            self.env.note_dependency(str(QUIZ_STATIC / asset))
        try:
            questions = check_quiz(json.loads(Path(path).read_text()), where=relative)
        except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
            raise self.error(f"quiz {relative}: {error}")
        # "</" cannot end the script element early once every "/" after "<" is escaped
        data = json.dumps(questions, ensure_ascii=False).replace("</", "<\\/")
        name = Path(path).stem
        html = (f'<div class="scorelab-quiz" data-quiz="{name}">'
                f'<script type="application/json" class="scorelab-quiz-data">{data}</script>'
                '<noscript>This quiz needs JavaScript.</noscript></div>')
        return [nodes.raw("", html, format="html")]


def add_quiz_static(app, config) -> None:
    if not (QUIZ_STATIC / "quiz.js").is_file():
        raise ExtensionError(f"the quiz renderer {QUIZ_STATIC / 'quiz.js'} is missing")
    config.html_static_path.append(str(QUIZ_STATIC))


def setup(app):
    app.connect("autodoc-process-docstring", escape_shape_stars)
    app.connect("html-page-context", unique_scripts, priority=900)
    # after sphinx-book-theme's add_launch_buttons (priority 501)
    app.connect("html-page-context", launch_plain_notebooks, priority=600)
    app.connect("build-finished", download_plain_notebooks)
    app.connect("config-inited", add_quiz_static)
    app.add_directive("quiz", QuizDirective)
    app.add_js_file("quiz.js", defer="defer")
    app.add_css_file("quiz.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
