_instruments = ("anthropic >= 0.75.0",)

_supports_metrics = True
