# The stage hooks wrap LightRAG internals (operate/pipeline/utils), so the range is the one the tests ran against.
_instruments = ("lightrag-hku >= 1.5.0, < 1.6",)

_supports_metrics = False
