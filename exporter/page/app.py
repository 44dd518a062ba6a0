"""``GET /`` of ``spendwatch serve``: the cost page, built afresh for each request, with its policy as a header."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from spendwatch.exporter.ledger import LedgerUnavailable
from spendwatch.exporter.page.data import SERVED_CHOICES, page_data
from spendwatch.exporter.page.render import content_security_policy, render_page

__all__ = ["page_app"]

_logger = logging.getLogger(__name__)
_HTML = "text/html; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


def page_app(
    ledger, settings: Callable[[], object], *, prices_as_of: float | None = None, clock: Callable[[], float] = time.time
) -> Callable:
    """A WSGI app answering GET and HEAD with the page over ``ledger``, ``settings()`` read on each request."""
    policy = content_security_policy(served=True)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        status, content_type, body = _answer(environ, ledger, settings, prices_as_of, clock)
        encoded = body.encode("utf-8")
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(encoded))),
            ("Cache-Control", "no-store"),
            ("Content-Security-Policy", policy),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ]
        if status.startswith("405"):
            headers.append(("Allow", "GET, HEAD"))
        start_response(status, headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [encoded]

    return app


def _answer(environ: dict, ledger, settings, prices_as_of, clock) -> tuple[str, str, str]:
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return "405 Method Not Allowed", _TEXT, "the cost page is read-only: use GET\n"
    try:
        document = page_data(ledger, settings(), presets=SERVED_CHOICES, now=clock(), prices_as_of=prices_as_of)
    except LedgerUnavailable as down:
        return "503 Service Unavailable", _TEXT, f"the ledger cannot be read now: {down}\n"
    except Exception:  # noqa: BLE001 - one failed page must not take the server down
        _logger.warning("spendwatch: the cost page failed", exc_info=True)
        return "500 Internal Server Error", _TEXT, "the page failed; the server's log has the details\n"
    return "200 OK", _HTML, render_page(document, served=True)
