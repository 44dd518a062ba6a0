"""spendwatch: see and cap what LLM API calls cost."""

from spendwatch.instrumentation.errors import ConfigError

__all__ = ["ConfigError"]
