"""atlas-exporter: per-application resource, crash and hang metrics for Prometheus."""

__version__ = "0.1.0"
