"""spendwatch.exporter: usage records into a durable ledger, budgets and Prometheus metrics."""
