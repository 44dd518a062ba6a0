"""House defaults for spendwatch's Grafana dashboards: the datasource and label variables, units, thresholds, layout.

Every ``<name>.dashboard.py`` builds its panels with these helpers and ends in ``.auto_panel_ids()``::

    from dashboards import house

    dashboard = house.dashboard(
        "LLM cost breakdown", uid="spendwatch-cost", variables=[house.CATEGORY, house.MODEL],
        sections=[("Spend", [house.timeseries("Cost by model", [house.target(expr, "{{model}}")], unit=house.USD)])],
    ).auto_panel_ids()

``python -m dashboards.generate`` turns each into ``<name>.json`` beside it. Metric and label names are DESIGN.md's
"Prometheus metrics" contract. Queries over the ledger's counters go through :mod:`dashboards.promql`, and gauges
through ``max by`` their labels, so that several targets over one ledger are counted once.

grafanalib 0.7.1 quirks worked around here: ``Threshold`` writes the base step's value as the string ``"null"`` and
``Stat`` defaults its steps to ``""``, so thresholds are plain dicts, always given; ``GaugePanel`` writes its
reduction and threshold markers where Grafana no longer reads them, so they are repeated under ``options``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attr
from grafanalib.core import (
    REFRESH_ON_TIME_RANGE_CHANGE,
    Dashboard,
    GaugePanel,
    GridPos,
    Panel,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

__all__ = [
    "BUDGET",
    "CATEGORY",
    "COUNT",
    "DATASOURCE",
    "DATASOURCE_VARIABLE",
    "JOB",
    "MODEL",
    "PERCENT",
    "REQUESTS_PER_SECOND",
    "SECONDS",
    "USD",
    "budget_thresholds",
    "count_thresholds",
    "dashboard",
    "gauge",
    "neutral_thresholds",
    "stat",
    "target",
    "timeseries",
]

# Units (Grafana's unit ids).
USD = "currencyUSD"
PERCENT = "percentunit"  # a 0-1 ratio shown as a percentage
SECONDS = "s"
REQUESTS_PER_SECOND = "reqps"
COUNT = "short"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

MIN_INTERVAL = "1m"

# The budget levels' default ratios (SPENDWATCH_THRESHOLDS = 0.75,0.9,1.0).
WARNING, CRITICAL, EXCEEDED = 0.75, 0.9, 1.0


def _label_variable(name: str, metric: str, label: str, *, all_value: str | None = ".*") -> Template:
    """A multi-select variable over a label's values; "All" matches every value (``.*``) unless told otherwise."""
    return Template(
        name=name,
        label=label,
        query=f"label_values({metric}, {name})",
        dataSource=DATASOURCE,
        multi=True,
        includeAll=True,
        allValue=all_value,
        default="$__all",
        refresh=REFRESH_ON_TIME_RANGE_CHANGE,
    )


DATASOURCE_VARIABLE = Template(name="datasource", label="Data source", query="prometheus", type="datasource")
BUDGET = _label_variable("budget", "llm_budget_limit_usd", "Budget")
CATEGORY = _label_variable("category", "llm_cost_usd_total", "Category")
MODEL = _label_variable("model", "llm_requests_total", "Model")
# Only jobs that expose spendwatch metrics, so "All" stays the list of them rather than every scrape job.
JOB = _label_variable("job", "spendwatch_ledger_errors_total", "Exporter job", all_value=None)


# --- thresholds: plain dicts, because grafanalib's Threshold writes the base value as the string "null" ---------


def _steps(*steps: tuple[str, float | None]) -> list[dict[str, Any]]:
    return [{"color": color, "value": value} for color, value in steps]


def neutral_thresholds() -> list[dict[str, Any]]:
    """One base step: the panel is not coloured by value."""
    return _steps(("green", None))


def budget_thresholds() -> list[dict[str, Any]]:
    """Green, then the warning / critical / exceeded levels of a budget's used ratio."""
    return _steps(("green", None), ("yellow", WARNING), ("orange", CRITICAL), ("red", EXCEEDED))


def count_thresholds() -> list[dict[str, Any]]:
    """Green at zero, red from the first occurrence (errors, unpriced calls, blocked calls)."""
    return _steps(("green", None), ("red", 1))


# --- targets and panels ----------------------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False) -> Target:
    """A Prometheus query on the ``$datasource`` variable; refIds are filled in by the panel helpers."""
    return Target(expr=expr, legendFormat=legend, instant=instant, datasource=DATASOURCE)


def _with_ref_ids(targets: Sequence[Target], *, instant: bool = False) -> list[Target]:
    return [attr.evolve(t, refId=chr(ord("A") + i), instant=t.instant or instant) for i, t in enumerate(targets)]


def timeseries(
    title: str,
    targets: Sequence[Target],
    *,
    unit: str,
    description: str = "",
    stacked: bool = False,
    thresholds: list[dict[str, Any]] | None = None,
) -> TimeSeries:
    """A time series panel; ``stacked`` only for series that partition a whole (never token subsets)."""
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        # Panels divide a counter's growth over $__interval by that interval: a window shorter than the scrape
        # interval would hold no sample, so the step is never shorter than two scrapes of the README's 30 s.
        interval=MIN_INTERVAL,
        unit=unit,
        fillOpacity=30 if stacked else 10,
        stacking={"mode": "normal", "group": "A"} if stacked else {"mode": "none"},
        legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        thresholds=thresholds or neutral_thresholds(),
    )


def stat(
    title: str,
    targets: Sequence[Target],
    *,
    unit: str,
    description: str = "",
    thresholds: list[dict[str, Any]] | None = None,
    horizontal: bool = False,
) -> Stat:
    """A single-value panel over instant queries, showing the last value of each series."""
    return Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets, instant=True),
        format=unit,
        color={"mode": "thresholds"},
        colorMode="value",
        graphMode="none",
        noValue="0",
        orientation="horizontal" if horizontal else "auto",
        reduceCalc="lastNotNull",
        textMode="value_and_name" if horizontal else "auto",
        thresholds=thresholds or neutral_thresholds(),
    )


def gauge(title: str, targets: Sequence[Target], *, description: str = "") -> GaugePanel:
    """A gauge of a budget's used ratio: 0-120 %, coloured at the warning / critical / exceeded levels."""
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    return GaugePanel(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets, instant=True),
        format=PERCENT,
        calc="lastNotNull",
        min=0,
        max=1.2,
        thresholds=budget_thresholds(),
        # Grafana reads these from "options"; grafanalib writes them only under fieldConfig.
        extraJson={"options": {"reduceOptions": reduce, "showThresholdLabels": False, "showThresholdMarkers": True}},
    )


# --- layout and the dashboard ----------------------------------------------------------------------------------

_HEIGHT = {TimeSeries: 8, Stat: 5, GaugePanel: 6}


def _layout(sections: Sequence[tuple[str, Sequence[Panel]]]) -> list[Panel]:
    """Each section becomes a row header followed by its panels, side by side (at most four to a line)."""
    placed: list[Panel] = []
    y = 0
    for title, panels in sections:
        placed.append(RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        for start in range(0, len(panels), 4):
            line = panels[start : start + 4]
            width = 24 // len(line)
            height = max(_HEIGHT[type(panel)] for panel in line)
            for i, panel in enumerate(line):
                placed.append(attr.evolve(panel, gridPos=GridPos(h=height, w=width, x=i * width, y=y)))
            y += height
    return placed


def dashboard(
    title: str,
    *,
    uid: str,
    description: str,
    variables: Sequence[Template],
    sections: Sequence[tuple[str, Sequence[Panel]]],
) -> Dashboard:
    """A spendwatch dashboard: the ``$datasource`` variable first, last 24 hours, refreshed every minute."""
    return Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=["spendwatch", "llm"],
        templating=Templating(list=[DATASOURCE_VARIABLE, *variables]),
        panels=_layout(sections),
        time=Time("now-24h", "now"),
        refresh="1m",
        timezone="utc",  # budgets' days and months default to UTC (SPENDWATCH_TIMEZONE)
        schemaVersion=39,
        graphTooltip=1,  # shared crosshair
    )
