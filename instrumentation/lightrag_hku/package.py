# The stage hooks wrap LightRAG internals (operate/pipeline/utils), so the range is the releases the tests pass on:
# 1.5.5 to 1.5.7 (1.5.0 to 1.5.4 attribute stages wrongly). pyproject.toml's lightrag extra says the same.
_instruments = ("lightrag-hku >= 1.5.5, < 1.6",)

_supports_metrics = False
