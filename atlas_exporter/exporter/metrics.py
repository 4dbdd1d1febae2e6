"""The exporter's own metrics: each scrape's collectors, the build, the fold, the host, the data sources
and the HTTP server.

    atlas_scrape_collector_success{collector="network"} 1.0
    atlas_scrape_collector_duration_seconds{collector="snapshot"} 0.0123
    atlas_exporter_build_info{platform="linux",python="3.11.7",version="0.1.0"} 1.0
    atlas_app_names_folded_total 0.0
    atlas_host_cpus 8.0
    atlas_source_active{privilege="root",source="crash"} 1.0
    atlas_exporter_http_connections 3.0
    atlas_exporter_http_connections_closed_total{reason="evicted"} 0.0
    atlas_exporter_http_accept_errors_total 0.0
    atlas_exporter_http_auth_turned_away_total 0.0
"""

from __future__ import annotations

from atlas_exporter.metrics import MetricSpec

COLLECTOR_SUCCESS = MetricSpec(
    "atlas_scrape_collector_success", "gauge",
    "Whether a collector succeeded in this scrape (1) or failed (0).", labels=("collector",))
COLLECTOR_DURATION = MetricSpec(
    "atlas_scrape_collector_duration_seconds", "gauge",
    "How long a collector took in this scrape.", unit="seconds", labels=("collector",))
BUILD_INFO = MetricSpec(
    "atlas_exporter_build_info", "gauge",
    "Build information of atlas-exporter (always 1).", labels=("version", "python", "platform"))
NAMES_FOLDED = MetricSpec(
    "atlas_app_names_folded_total", "counter",
    "App names counted as app=\"other\" because max_apps apps were already exported.")
HOST_CPUS = MetricSpec(
    "atlas_host_cpus", "gauge",
    "Logical CPUs of the host: what 100 % of the host's CPU means, for CPU as a percentage of the host.")
SOURCE_ACTIVE = MetricSpec(
    "atlas_source_active", "gauge",
    "Whether a data source is active (1) or off (0), with the privilege it runs at.", labels=("source", "privilege"))

HTTP_CONNECTIONS = MetricSpec(
    "atlas_exporter_http_connections", "gauge", "Client connections held by the server now.")
HTTP_CONNECTIONS_CLOSED = MetricSpec(
    "atlas_exporter_http_connections_closed_total", "counter",
    "Connections closed by the server, by reason.", labels=("reason",))
HTTP_ACCEPT_ERRORS = MetricSpec(
    "atlas_exporter_http_accept_errors_total", "counter",
    "Connections the server could not accept() for lack of file descriptors or memory.")
HTTP_AUTH_TURNED_AWAY = MetricSpec(
    "atlas_exporter_http_auth_turned_away_total", "counter",
    "Requests answered 429 because too many password checks were waiting.")

METRICS: tuple[MetricSpec, ...] = (
    COLLECTOR_SUCCESS, COLLECTOR_DURATION, BUILD_INFO, NAMES_FOLDED, HOST_CPUS, SOURCE_ACTIVE,
    HTTP_CONNECTIONS, HTTP_CONNECTIONS_CLOSED, HTTP_ACCEPT_ERRORS, HTTP_AUTH_TURNED_AWAY,
)
