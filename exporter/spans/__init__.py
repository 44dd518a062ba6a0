"""GenAI spans made by other instrumentations, priced and recorded like instrumented calls.

:func:`usage_of_span` reads a span's attributes in any of the dialects instrumentations speak; :func:`record_of`
turns what it read into a priced usage record; :func:`entry_id_of` is that record's ledger id (trace + span id), so
a span is counted once however many times it is handed in.
"""

from spendwatch.exporter.spans.dialects import SpanUsage, usage_of_span
from spendwatch.exporter.spans.records import PRODUCER_COST_ATTRIBUTE, SOURCES, entry_id_of, record_of

__all__ = ["PRODUCER_COST_ATTRIBUTE", "SOURCES", "SpanUsage", "entry_id_of", "record_of", "usage_of_span"]
