"""The HTML cost page: ``GET /`` on ``spendwatch serve`` and ``spendwatch report --html FILE``.

One self-contained page (inline CSS, script and SVG, its data inline as JSON; nothing fetched from the network)
showing every budget as a gauge with its thresholds, spend over time by a grouping and range the reader picks, the
top categories and documents, unpriced calls, guard refusals and degradations, threshold crossings and the price
data's date. Its data comes from the JSON API's own functions (:mod:`spendwatch.exporter.api`)::

    write_page_file(ledger, settings, "spend.html")      # what report --html does
    page_app(ledger, settings_source)                      # the WSGI app spendwatch serve routes "/" to

Modules: :mod:`.data` (the document), :mod:`.render` (the HTML and its Content-Security-Policy), :mod:`.app` (WSGI);
``page.html``, ``page.css`` and ``page.js`` are the page itself.
"""

from __future__ import annotations

from pathlib import Path

from spendwatch.exporter.page.app import page_app
from spendwatch.exporter.page.data import FILE_PRESETS, SERVED_CHOICES, page_data
from spendwatch.exporter.page.render import content_security_policy, render_page

__all__ = [
    "FILE_PRESETS",
    "SERVED_CHOICES",
    "content_security_policy",
    "page_app",
    "page_data",
    "render_page",
    "write_page_file",
]


def write_page_file(ledger, settings, path: str | Path, *, now: float | None = None, prices_as_of=None) -> None:
    """Write the page, with every preset range and grouping in it, to ``path``."""
    document = page_data(ledger, settings, presets=FILE_PRESETS, now=now, prices_as_of=prices_as_of)
    Path(path).write_text(render_page(document, served=False), encoding="utf-8")
