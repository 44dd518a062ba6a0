"""spendwatch's Grafana dashboards: ``<name>.dashboard.py`` sources (grafanalib), house defaults in
:mod:`dashboards.house`, and the generated ``<name>.json`` beside each (``python -m dashboards.generate``)."""
