"""The report page from its template (``templates/report.html.j2``), autoescaped by jinja2."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from urllib.parse import quote


def _breakable(name: Any):
    """An escaped name that may wrap after ``-`` or ``_`` only, never inside a word."""
    from markupsafe import Markup, escape

    return Markup(re.sub(r"([-_])", r"\1<wbr>", str(escape(name))))


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("stages.report", "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True, undefined=StrictUndefined)
    env.filters["breakable"] = _breakable
    env.filters["urlquote"] = lambda value: quote(str(value))
    return env


def render_page(**context: Any) -> str:
    """The HTML page of a report; ``context`` as :func:`stages.report.build.build_report` assembles it."""
    return _environment().get_template("report.html.j2").render(**context)
