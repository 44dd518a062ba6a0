"""spendwatch's Prometheus rules, Alertmanager config and runbook, shipped as ``spendwatch.alert_rules`` package data
(``spendwatch assets --dest DIR`` writes them out)."""
