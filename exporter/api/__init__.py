"""The JSON API of ``spendwatch serve`` (``/api/v1/...``), and the data functions behind it, each returning plain,
JSON-ready dicts for any other reader (the HTML cost page)::

    from spendwatch.exporter.api import overview, analytics, alerts
    overview(ledger, settings)                     # every budget now, health and projected period-end spend
    analytics(ledger, settings, range_s=7 * 86400, granularity="day", by="model")
    alerts(ledger, range_s=86400)                  # threshold crossings, guard refusals, ledger outages

Modules: :mod:`.overview`, :mod:`.analytics`, :mod:`.alerts`, :mod:`.reports` (the data), :mod:`.params` (checking
query parameters), :mod:`.openapi` (the OpenAPI document), :mod:`.app` (the WSGI app that routes and answers).
"""

from spendwatch.exporter.api.alerts import alerts
from spendwatch.exporter.api.analytics import analytics
from spendwatch.exporter.api.app import API_PREFIX, api_app
from spendwatch.exporter.api.overview import budget_overview, overview
from spendwatch.exporter.api.reports import report

__all__ = ["API_PREFIX", "alerts", "analytics", "api_app", "budget_overview", "overview", "report"]
