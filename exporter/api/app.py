"""The JSON API's WSGI app, served by ``spendwatch serve`` beside ``/metrics`` (same address, basic auth and TLS)::

    app = api_app(ledger, lambda: settings)
    start_metrics_server(registry, address, routes={API_PREFIX: app})

Read-only: GET (and HEAD) only. Every answer is JSON in UTF-8 (CSV for a CSV report); a parameter the API cannot
answer is a 400 whose body names it, a path it does not have a 404, a ledger it cannot reach a 503.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from collections.abc import Callable, Iterable

from spendwatch.exporter.api.alerts import alerts
from spendwatch.exporter.api.analytics import GRANULARITIES, GROUPS, analytics
from spendwatch.exporter.api.openapi import openapi_document
from spendwatch.exporter.api.overview import overview
from spendwatch.exporter.api.params import BadRequest, Query, parse_query
from spendwatch.exporter.api.reports import FORMATS, GROUPINGS, report
from spendwatch.exporter.ledger import LedgerUnavailable
from spendwatch.exporter.periods import local_day
from spendwatch.exporter.report import format_json

__all__ = ["API_PREFIX", "api_app"]

_logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"
_JSON = "application/json; charset=utf-8"
_STATUS = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found", 405: "405 Method Not Allowed"}
_STATUS |= {500: "500 Internal Server Error", 503: "503 Service Unavailable"}


def api_app(ledger, settings: Callable[[], object], *, clock: Callable[[], float] = time.time) -> Callable:
    """A WSGI app answering ``/api/v1/...`` from ``ledger``; ``settings()`` gives the budgets and time zone in force
    (``spendwatch serve`` passes those the apps recorded in the ledger, re-read on each request)."""
    handlers = _handlers(ledger, settings, clock)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        status, content_type, body = _answer(handlers, environ)
        encoded = body.encode("utf-8")
        headers = [("Content-Type", content_type), ("Content-Length", str(len(encoded))), ("Cache-Control", "no-store")]
        if status == 405:
            headers.append(("Allow", "GET, HEAD"))
        start_response(_STATUS[status], headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [encoded]

    return app


def _answer(handlers: dict, environ: dict) -> tuple[int, str, str]:
    path = environ.get("PATH_INFO", "")
    handler = handlers.get(path)
    if handler is None:
        return 404, _JSON, _error("", path, f"no such endpoint; see {API_PREFIX}openapi.json")
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return 405, _JSON, _error("", environ.get("REQUEST_METHOD"), "this API is read-only: use GET")
    try:
        content_type, body = handler(parse_query(environ.get("QUERY_STRING", "")))
    except BadRequest as bad:
        return 400, _JSON, json.dumps(bad.as_dict(), ensure_ascii=False)
    except LedgerUnavailable as down:
        return 503, _JSON, _error("", None, f"the ledger cannot be read now: {down}")
    except Exception:  # noqa: BLE001 - one failed answer must not take the server down
        _logger.warning("spendwatch: %s failed", path, exc_info=True)
        return 500, _JSON, _error("", None, "the answer failed; the server's log has the details")
    return 200, content_type, body


def _error(parameter: str, value, message: str) -> str:
    return json.dumps(BadRequest(parameter, value, message).as_dict(), ensure_ascii=False)


def _handlers(ledger, settings: Callable[[], object], clock: Callable[[], float]) -> dict[str, Callable]:
    def overview_answer(query: Query) -> tuple[str, str]:
        query.refuse_unknown(())
        return _JSON, _compact(overview(ledger, settings(), clock()))

    def analytics_answer(query: Query) -> tuple[str, str]:
        query.refuse_unknown(("range", "granularity", "by"))
        text, seconds = query.range_seconds("range", "7d")
        granularity = query.choice("granularity", GRANULARITIES, "day")
        by = query.choice("by", GROUPS, "model")
        answer = analytics(ledger, settings(), range_s=seconds, granularity=granularity, by=by, now=clock())
        return _JSON, json.dumps({"range": text, **answer}, separators=(",", ":"), ensure_ascii=False)

    def report_answer(query: Query) -> tuple[str, str]:
        query.refuse_unknown(("start", "end", "by", "format"))
        current = settings()
        since = query.day("start")
        until = query.day("end", local_day(clock(), current.timezone))
        by = query.choice("by", GROUPINGS, "day")
        chosen = query.choice("format", FORMATS, "json")
        return report(ledger, current, since=since, until=until, by=by, format=chosen)

    def alerts_answer(query: Query) -> tuple[str, str]:
        query.refuse_unknown(("range",))
        text, seconds = query.range_seconds("range", "24h")
        return _JSON, _compact({"range": text, **alerts(ledger, range_s=seconds, now=clock())})

    def openapi_answer(query: Query) -> tuple[str, str]:
        query.refuse_unknown(())
        return _JSON, json.dumps(openapi_document(_version()), indent=2)

    return {
        f"{API_PREFIX}overview": overview_answer,
        f"{API_PREFIX}analytics": analytics_answer,
        f"{API_PREFIX}report": report_answer,
        f"{API_PREFIX}alerts": alerts_answer,
        f"{API_PREFIX}openapi.json": openapi_answer,
    }


def _compact(document: dict) -> str:
    """The API's JSON: compact (an analytics answer has thousands of numbers), money rounded to 1e-9 USD."""
    return format_json(document, indent=None)


def _version() -> str:
    try:
        return importlib.metadata.version("spendwatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
