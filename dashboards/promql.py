"""PromQL over spendwatch's ledger counters: how much a counter grew in a window, right with several targets and from
a label set's first call.

Every spendwatch target over one ledger exposes the ledger's running totals, so two targets are two copies of the
same numbers: summing them doubles spend. Each label set is therefore reduced to one series with ``max by`` its
own labels (DESIGN.md's label set of the metric) before any sum.

A label set appears in ``/metrics`` only with its first call, already holding that call's cost. ``increase()`` needs
two samples and so never counts what a series holds at its first sample: every new model, category or operation lost
its first interval of spend, and a fresh set-up read $0. :func:`increase` counts, per target and label set, the
first of these that applies:

1. the label set was there at the window's start: now minus then (exact, and consecutive windows add up);
2. it was not, but the target had just read the ledger without error: the label set was still at zero, so all of
   it is new;
3. it appeared after the target's first scrape in the window, and the target's error counter did not move in the
   window (every scrape of it read the ledger): the same;
4. otherwise (Prometheus, or this target, started inside the window): the growth seen inside the window. What a
   label set held before Prometheus first saw it is history, not spend in the window.

A failed ledger read hides every label set from that scrape while ``spendwatch_ledger_errors_total`` grows, which is
why cases 2 and 3 demand a quiet error counter: a label set coming back after an outage is not new. (The counter also
holds every other process's ledger errors, kept in the ledger, so it is quiet over a window rather than zero forever.)
The ledger's counters never reset (they survive restarts); they only fall when a ledger is swapped or a category
stops being configured, and then the difference shows that honestly, as a negative.
"""

from __future__ import annotations

__all__ = ["COST_LABELS", "DURATION_LABELS", "HEARTBEAT", "increase", "per_hour", "per_second", "selector"]

# DESIGN.md's labels of each ledger counter: one series per value of these, whichever target it came from.
COST_LABELS = ("provider", "model", "operation", "category")
DURATION_LABELS = ("provider", "model", "operation", "le")
# Exposed by every spendwatch target on every scrape; it grows when a scrape could not read the ledger (and with
# the ledger errors other processes keep in the ledger).
HEARTBEAT = "spendwatch_ledger_errors_total"
# Prometheus's default lookback: how far back an instant selector finds the last sample.
LOOKBACK = "5m"
# Identifies one scrape target, for joining a series with its target's heartbeat.
TARGET = "instance, job"


def selector(metric: str, matchers: str = "") -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def increase(metric: str, labels: tuple[str, ...], window: str, matchers: str = "") -> str:
    """How much ``metric`` grew over the last ``window``, one series per value of ``labels`` (see the module doc)."""
    series = selector(metric, matchers)
    last = f"max_over_time({series}[{window}])"
    at_start = f"({last} - {series} offset {window})"
    absent_at_start = f"({last} unless {series} offset {window})"
    quiet_at_start = (
        f"(changes({HEARTBEAT}[{LOOKBACK}] offset {window}) == 0"
        f" and count_over_time({HEARTBEAT}[{LOOKBACK}] offset {window}) > 1)"
    )
    new_at_start = f"({absent_at_start} and on ({TARGET}) {quiet_at_start})"
    quiet_scrapes = f"(count_over_time({HEARTBEAT}[{window}]) and changes({HEARTBEAT}[{window}]) == 0)"
    appeared_in_window = (
        f"({absent_at_start} and (count_over_time({series}[{window}]) < on ({TARGET}) group_left () {quiet_scrapes}))"
    )
    seen_in_window = f"({last} - min_over_time({series}[{window}]))"
    cases = " or ".join((at_start, new_at_start, appeared_in_window, seen_in_window))
    return f"max by ({', '.join(labels)}) ({cases})"


def per_second(metric: str, labels: tuple[str, ...], matchers: str = "") -> str:
    """The average per second over Grafana's ``$__interval``: with steps of that interval, the points add up."""
    return f"{increase(metric, labels, '$__interval', matchers)} * 1000 / $__interval_ms"


def per_hour(metric: str, labels: tuple[str, ...], matchers: str = "") -> str:
    """:func:`per_second` times 3600."""
    return f"{increase(metric, labels, '$__interval', matchers)} * 3600000 / $__interval_ms"
