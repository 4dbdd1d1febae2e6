"""The network collector's metrics: per-app and unattributed byte counters, and lost destroy events.

    atlas_app_network_receive_bytes_total{app="nginx"} 1.048576e+06
    atlas_network_unattributed_transmit_bytes_total 512.0
    atlas_network_destroy_events_lost_total 0.0

Each name is declared once, here, with the Linux help text (TCP bytes from sock_diag). The
macOS source counts what nettop counts (TCP and UDP, per process), so `DARWIN_BYTES` gives the
same metrics the help texts that say so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from prometheus_client.metrics_core import Metric

from atlas_exporter.metrics import MetricSpec

APP_RECEIVE = MetricSpec(
    "atlas_app_network_receive_bytes_total", "counter",
    "TCP payload bytes received by the application's sockets (tcpi_bytes_received; UDP is not counted).",
    unit="bytes", labels=("app",))
APP_TRANSMIT = MetricSpec(
    "atlas_app_network_transmit_bytes_total", "counter",
    "TCP payload bytes sent by the application's sockets and acknowledged by the peer (tcpi_bytes_acked; "
    "UDP is not counted).", unit="bytes", labels=("app",))
UNATTRIBUTED_RECEIVE = MetricSpec(
    "atlas_network_unattributed_receive_bytes_total", "counter",
    "TCP payload bytes received by sockets that could not be attributed to any application.", unit="bytes")
UNATTRIBUTED_TRANSMIT = MetricSpec(
    "atlas_network_unattributed_transmit_bytes_total", "counter",
    "TCP payload bytes sent by sockets that could not be attributed to any application.", unit="bytes")
DESTROY_EVENTS_LOST = MetricSpec(
    "atlas_network_destroy_events_lost_total", "counter",
    "Times the kernel dropped socket destroy notifications because the exporter read them too slowly; the "
    "final bytes of those sockets may be missing.")

METRICS: tuple[MetricSpec, ...] = (APP_RECEIVE, APP_TRANSMIT, UNATTRIBUTED_RECEIVE, UNATTRIBUTED_TRANSMIT,
                                   DESTROY_EVENTS_LOST)


@dataclass(frozen=True, slots=True)
class ByteMetrics:
    """The four byte counters of a platform, each pair as (receive, transmit)."""

    app: tuple[MetricSpec, MetricSpec]
    unattributed: tuple[MetricSpec, MetricSpec]


LINUX_BYTES = ByteMetrics((APP_RECEIVE, APP_TRANSMIT), (UNATTRIBUTED_RECEIVE, UNATTRIBUTED_TRANSMIT))
DARWIN_BYTES = ByteMetrics(
    (replace(APP_RECEIVE, help="Bytes the application's processes received over the network, as nettop counts "
                               "them (TCP and UDP)."),
     replace(APP_TRANSMIT, help="Bytes the application's processes sent over the network, as nettop counts them "
                                "(TCP and UDP).")),
    (replace(UNATTRIBUTED_RECEIVE, help="Bytes received by processes that could not be attributed to any "
                                        "application."),
     replace(UNATTRIBUTED_TRANSMIT, help="Bytes sent by processes that could not be attributed to any "
                                         "application.")))


def byte_families(metrics: ByteMetrics, totals: Mapping[str, tuple[float, float]],
                  unattributed: Sequence[float]) -> Iterator[Metric]:
    """Counter families for app -> (receive, transmit) totals and the unattributed (receive, transmit) pair."""
    for index, spec in enumerate(metrics.app):
        family = spec.family()
        for app in sorted(totals):
            family.add_metric([app], totals[app][index])
        yield family
    for index, spec in enumerate(metrics.unattributed):
        yield spec.value(unattributed[index])
