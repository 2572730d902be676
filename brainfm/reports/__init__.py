"""Self-contained HTML reports (group and participant) and their figures.

Pages are rendered from ``templates/report.html`` with jinja2, autoescape on: titles, navigation
and anything else the template fills are escaped by jinja2; a section's body is HTML built here
(:func:`html_table`, :func:`esc` around every outside text) and marked safe. Every figure is
an inline base64 PNG, the CSS is inline, and no script or external resource is referenced, so a
report can be mailed, archived or opened offline. The helpers here build the page and its
tables; :mod:`brainfm.reports.figures` draws, :mod:`brainfm.reports.group_report` and
:mod:`brainfm.reports.participant_report` assemble.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from brainfm import __version__

__all__ = ["Section", "esc", "format_value", "html_table", "render_page", "load_template"]

#: jinja2 template of every report page (``title``, ``subtitle``, ``sections``, ``version``,
#: ``date``).
TEMPLATE_NAME = "report.html"


def esc(text: Any) -> str:
    """HTML-escape any value (``None`` gives an empty string)."""
    return "" if text is None else html.escape(str(text), quote=True)


def format_value(value: Any, digits: int = 2) -> str:
    """Format a table cell: rounded floats, ``n/a`` for missing values, escaped text."""
    if value is None:
        return "n/a"
    if isinstance(value, float) or hasattr(value, "dtype"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return esc(value)
        if math.isnan(number):
            return "n/a"
        if number.is_integer() and abs(number) < 1e12:
            return str(int(number))
        return f"{number:.{digits}f}"
    if isinstance(value, str) and value in ("", "nan"):
        return "n/a"
    return esc(value)


def accuracy_source(accuracy: dict[str, Any]) -> str:
    """Where a card's out-of-site accuracy comes from, in words (escaped).

    An own model's card says it (``protocol``: inner site folds of its training cohort); the
    shipped model's numbers are the benchmark's leave-one-site-out.
    """
    protocols = {str(v.get("protocol")) for v in accuracy.values()
                 if isinstance(v, dict) and v.get("protocol")}
    if len(protocols) == 1:
        return esc(protocols.pop())
    return "leave-one-site-out on its training cohort"


def html_table(table: pd.DataFrame, digits: int = 2, text_columns: Iterable[str] = (),
               scroll: bool = False, css_class: str = "") -> str:
    """Render a table as HTML (escaped; numbers right-aligned, text columns left-aligned).

    Parameters
    ----------
    table : pandas.DataFrame
        The rows (the index is not shown).
    digits : int
        Decimals of floats.
    text_columns : iterable of str
        Columns aligned left (object columns are too).
    scroll : bool
        Wrap in a scrolling box with a sticky header (long tables).
    css_class : str
        Class of the ``<table>``.

    Returns
    -------
    str
        The HTML.
    """
    text = set(text_columns) | {c for c in table.columns if table[c].dtype == object}
    head = "".join(f'<th class="{"text" if c in text else ""}">{esc(c)}</th>'
                   for c in table.columns)
    rows = []
    for record in table.itertuples(index=False):
        cells = "".join(
            f'<td class="{"text" if c in text else ""}">{format_value(v, digits)}</td>'
            for c, v in zip(table.columns, record, strict=True))
        rows.append(f"<tr>{cells}</tr>")
    cls = f' class="{esc(css_class)}"' if css_class else ""
    out = f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="table-wrap">{out}</div>' if scroll else out


@dataclass(frozen=True)
class Section:
    """One section of a report page: an anchor, a title (also the navigation entry), HTML."""

    anchor: str
    title: str
    body: str


def load_template(name: str = TEMPLATE_NAME) -> jinja2.Template:
    """The page template shipped in ``brainfm/reports/templates``, autoescaping."""
    text = resources.files("brainfm.reports").joinpath("templates", name).read_text("utf-8")
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True).from_string(text)


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """Fill the page template.

    Parameters
    ----------
    title : str
        Page title (plain text; jinja2 escapes it).
    subtitle : str
        A line under the title (plain text; escaped).
    sections : sequence of Section
        The sections, in order: anchors and titles are plain text (escaped), bodies are HTML
        (inserted as is: escape outside text with :func:`esc` when building them).

    Returns
    -------
    str
        The complete HTML document.
    """
    sections = [Section(s.anchor, s.title, Markup(s.body)) for s in sections]
    return load_template().render(
        title=title, subtitle=subtitle, sections=sections, version=__version__,
        date=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
