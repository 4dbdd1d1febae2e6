"""The network collector's metrics: per-app and unattributed byte counters, and lost destroy events.

    atlas_app_network_receive_bytes_total{app="nginx"} 1.048576e+06
    atlas_network_unattributed_transmit_bytes_total 512.0
    atlas_network_destroy_events_lost_total 0.0

Both platforms emit these: Linux counts TCP payload bytes per socket (sock_diag), macOS
counts what nettop counts per process (TCP and UDP); the help texts say both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.metrics_core import Metric

from atlas_exporter.metrics import MetricSpec

APP_RECEIVE = MetricSpec(
    "atlas_app_network_receive_bytes_total", "counter",
    "Network payload bytes the application's processes received (Linux: TCP, tcpi_bytes_received, UDP not "
    "counted; macOS: TCP and UDP, as nettop counts them).", unit="bytes", labels=("app",))
APP_TRANSMIT = MetricSpec(
    "atlas_app_network_transmit_bytes_total", "counter",
    "Network payload bytes the application's processes sent (Linux: TCP bytes the peer acknowledged, "
    "tcpi_bytes_acked, UDP not counted; macOS: TCP and UDP, as nettop counts them).", unit="bytes", labels=("app",))
UNATTRIBUTED_RECEIVE = MetricSpec(
    "atlas_network_unattributed_receive_bytes_total", "counter",
    "Network payload bytes received by sockets (macOS: processes) that could not be attributed to any "
    "application.", unit="bytes")
UNATTRIBUTED_TRANSMIT = MetricSpec(
    "atlas_network_unattributed_transmit_bytes_total", "counter",
    "Network payload bytes sent by sockets (macOS: processes) that could not be attributed to any application.",
    unit="bytes")
DESTROY_EVENTS_LOST = MetricSpec(
    "atlas_network_destroy_events_lost_total", "counter",
    "Times the kernel dropped socket destroy notifications because the exporter read them too slowly; the "
    "final bytes of those sockets may be missing.")

METRICS: tuple[MetricSpec, ...] = (APP_RECEIVE, APP_TRANSMIT, UNATTRIBUTED_RECEIVE, UNATTRIBUTED_TRANSMIT,
                                   DESTROY_EVENTS_LOST)


def byte_families(totals: Mapping[str, tuple[float, float]], unattributed: Sequence[float]) -> Iterator[Metric]:
    """Counter families for app -> (receive, transmit) totals and the unattributed (receive, transmit) pair."""
    for index, spec in enumerate((APP_RECEIVE, APP_TRANSMIT)):
        family = spec.family()
        for app in sorted(totals):
            family.add_metric([app], totals[app][index])
        yield family
    for index, spec in enumerate((UNATTRIBUTED_RECEIVE, UNATTRIBUTED_TRANSMIT)):
        yield spec.value(unattributed[index])
