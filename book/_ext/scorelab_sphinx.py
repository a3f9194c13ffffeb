"""Two small fixes for the HTML book, loaded through ``sphinx.local_extensions`` in _config.yml.

1. Tensor shapes in docstrings. The package writes shapes as ``(N, *D)``; reStructuredText reads
   the ``*`` as the start of emphasis and the API page fails the ``-W`` build with "Inline
   emphasis start-string without end-string". Before autodoc renders a docstring, a ``*`` that
   opens a shape entry, as in ``(N, *D)`` or ``(T, N, *D)``, is escaped, outside literals only.
2. Repeated inline scripts. sphinx-thebe 0.3.1 registers its inline configuration script
   (``const THEBE_JS_URL = ...``) twice, once with the filename None and once with "", so every
   page declares those constants twice and the browser logs "Identifier 'THEBE_JS_URL' has
   already been declared". Each page keeps the first copy of each script.
"""

from __future__ import annotations

import re

# a star right after "(" or ", " that starts a name inside a shape tuple: (N, *D), (*shape)
_SHAPE_STAR = re.compile(r"(?<=[(,] )\*(?=[A-Za-z_])|(?<=\()\*(?=[A-Za-z_])")


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


def setup(app):
    app.connect("autodoc-process-docstring", escape_shape_stars)
    app.connect("html-page-context", unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
