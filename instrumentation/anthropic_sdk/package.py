_instruments = ("anthropic >= 0.40.0",)

_supports_metrics = True
