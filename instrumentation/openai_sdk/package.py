_instruments = ("openai >= 1.26.0",)

_supports_metrics = True
