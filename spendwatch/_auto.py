"""The ``opentelemetry_post_instrument`` hook: under ``opentelemetry-instrument`` (with or without
``opentelemetry-distro``) the instrumentors are loaded from their entry points, then this attaches the exporter."""

from __future__ import annotations


def attach_exporter() -> None:
    from spendwatch import runtime

    runtime.attach()
