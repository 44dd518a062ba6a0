_instruments = ("google-genai >= 1.0.0",)

_supports_metrics = True
