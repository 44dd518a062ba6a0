"""``/api/v1/openapi.json``: the OpenAPI 3.1 description of the JSON API, built from the same choices the handlers
check, so the document cannot promise a parameter value the API refuses."""

from __future__ import annotations

from spendwatch.exporter.api.analytics import GRANULARITIES, GROUPS
from spendwatch.exporter.api.reports import FORMATS, GROUPINGS

__all__ = ["openapi_document"]

_ERROR = {
    "description": "A parameter the API cannot answer: which one, its value, and what it takes.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _parameter(name: str, description: str, schema: dict, *, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _range(default: str) -> dict:
    pattern = "^[1-9][0-9]{0,4}[hd]$"
    return _parameter(
        "range",
        "how far back from now: hours or days, e.g. 24h, 7d",
        {"type": "string", "pattern": pattern, "default": default},
    )


def _json_answer(description: str) -> dict:
    return {"200": {"description": description, "content": {"application/json": {}}}, "400": _ERROR}


def openapi_document(version: str) -> dict:
    """The document, naming spendwatch's ``version``."""
    day = {"type": "string", "format": "date"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "spendwatch",
            "version": version,
            "description": "Read-only spend, budgets and alert history from the spendwatch ledger. Money is USD "
            "rounded to 1e-9, times are RFC 3339 UTC.",
        },
        "paths": {
            "/api/v1/overview": {
                "get": {
                    "summary": "every budget now, with its health and projected period-end spend",
                    "responses": _json_answer("the budgets"),
                }
            },
            "/api/v1/analytics": {
                "get": {
                    "summary": "spend, tokens and calls per bucket and group",
                    "parameters": [
                        _range("7d"),
                        _parameter("granularity", "bucket size", {"enum": list(GRANULARITIES), "default": "day"}),
                        _parameter("by", "grouping", {"enum": list(GROUPS), "default": "model"}),
                    ],
                    "responses": _json_answer("the buckets and the totals per group"),
                }
            },
            "/api/v1/report": {
                "get": {
                    "summary": "the rows of spendwatch report for a range of days (both included)",
                    "parameters": [
                        _parameter("start", "first day, in the ledger's time zone", day, required=True),
                        _parameter("end", "last day, included (default: today)", day),
                        _parameter("by", "grouping", {"enum": list(GROUPINGS), "default": "day"}),
                        _parameter("format", "json, csv, or FOCUS 1.2 CSV", {"enum": list(FORMATS), "default": "json"}),
                    ],
                    "responses": {
                        "200": {"description": "the report", "content": {"application/json": {}, "text/csv": {}}},
                        "400": _ERROR,
                    },
                }
            },
            "/api/v1/alerts": {
                "get": {
                    "summary": "threshold crossings, guard refusals and degradations, ledger outages, newest first",
                    "parameters": [_range("24h")],
                    "responses": _json_answer("the alert history"),
                }
            },
            "/api/v1/openapi.json": {
                "get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "parameter": {"type": "string"},
                                "value": {"type": ["string", "null"]},
                                "message": {"type": "string"},
                            },
                        }
                    },
                }
            }
        },
    }
