"""Exporter: the Prometheus collector, the HTTP server and the status page."""
