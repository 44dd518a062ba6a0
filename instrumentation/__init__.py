"""spendwatch.instrumentation: OpenTelemetry instrumentors that put token usage and USD cost on LLM call spans.

It never imports ``spendwatch.exporter``: each finished call is handed as a :class:`UsageRecord` to whatever
sink is registered with :func:`register_sink` (the exporter registers itself), so the instrumentation works with
any OpenTelemetry backend on its own.
"""

from spendwatch.instrumentation.records import UsageRecord, register_sink, unregister_sink

__all__ = ["UsageRecord", "register_sink", "unregister_sink"]
