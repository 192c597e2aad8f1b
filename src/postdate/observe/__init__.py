"""Watching a process: structured logs, Prometheus metrics and the health endpoints.
Internal: the public names are in :mod:`postdate`."""
