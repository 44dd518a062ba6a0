"""OTLP/HTTP trace intake (``POST /v1/traces`` on ``spendwatch serve``): GenAI spans from any service or Collector
priced and recorded like instrumented calls, exactly once per span."""

from spendwatch.exporter.intake.handler import INTAKE_PATH, intake_app

__all__ = ["INTAKE_PATH", "intake_app"]
