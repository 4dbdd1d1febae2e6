"""The per-app and unattributed network byte counters, shared by the Linux and macOS sources.

    atlas_app_network_receive_bytes_total{app="nginx"} 1.048576e+06
    atlas_network_unattributed_transmit_bytes_total 512.0
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

# (metric name, help text, index into (receive, transmit))
MetricRow = tuple[str, str, int]


def byte_families(app_rows: Sequence[MetricRow], unattributed_rows: Sequence[MetricRow],
                  totals: Mapping[str, tuple[float, float]], unattributed: Sequence[float]) -> Iterator[Metric]:
    """Counter families for app -> (receive, transmit) totals and the unattributed pair."""
    for name, help_text, index in app_rows:
        family = CounterMetricFamily(name, help_text, labels=["app"])
        for app in sorted(totals):
            family.add_metric([app], totals[app][index])
        yield family
    for name, help_text, index in unattributed_rows:
        yield CounterMetricFamily(name, help_text, value=unattributed[index])
