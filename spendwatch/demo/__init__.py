"""``spendwatch demo`` and the local stand-ins it runs on, shipped in the wheel so users can run them too.

- :mod:`spendwatch.demo.run`: the demo itself, started by ``spendwatch demo``.
- :mod:`spendwatch.demo.stub`: the local OpenAI-compatible server (``python -m spendwatch.demo.stub``), which the
  tests use as well; :mod:`spendwatch.demo.anthropic_stub` its Anthropic Messages API counterpart.
- :mod:`spendwatch.demo.alerting`: Prometheus and Alertmanager with the shipped alert rules, when installed.

This file imports nothing, so ``python -m spendwatch.demo.stub`` runs the stub without loading the rest.
"""
