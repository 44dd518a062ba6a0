"""Errors spendwatch raises on purpose."""

__all__ = ["ConfigError"]


class ConfigError(SystemExit):
    """Bad configuration, said in one sentence that names the setting and its value.

    A ``SystemExit`` on purpose: ``opentelemetry-instrument`` logs and swallows an instrumentor's ordinary
    exceptions, and bad configuration must stop the app at start-up instead of silently counting nothing.
    Catch it as ``spendwatch.ConfigError`` where a program wants to handle it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"spendwatch: {message}")
        self.message = message

    def __str__(self) -> str:
        return f"spendwatch: {self.message}"
