"""spendwatch's Prometheus rules, Alertmanager config and runbook, shipped as ``spendwatch.alert_rules`` package data
(``spendwatch assets --dest DIR`` writes them out).

The rule files are generated, like the dashboards: :mod:`alert_rules.recording` is the source of
``spendwatch.rules.yml``, :mod:`alert_rules.alerts` of ``spendwatch.alerts.yml``, both written by
:mod:`alert_rules.rulefile`; ``python -m alert_rules.generate`` (``make alert-rules``) regenerates the committed files
and tests/test_alert_rules.py fails when they drift. ``alertmanager.yml`` and ``runbook.md`` are written by hand.
"""
