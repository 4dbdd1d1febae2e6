"""The prometheus_client collector: one snapshot per scrape, each sub-collector isolated.

Emits the per-app process metrics (tables `LABELLED_METRICS` and `APP_METRICS`) and the
exporter's own metrics:

    atlas_app_cpu_seconds_total{app="nginx",mode="user"} 12.5
    atlas_app_context_switches_total{app="nginx",kind="voluntary"} 40312.0
    atlas_app_process_states{app="nginx",state="sleeping"} 3.0
    atlas_app_resident_memory_bytes{app="nginx"} 5.24288e+07
    atlas_app_open_fds_limit_ratio{app="nginx"} 0.029
    atlas_scrape_collector_success{collector="network"} 1.0
    atlas_process_read_errors_total{reason="access_denied"} 3.0
    atlas_app_names_folded_total 0.0
    atlas_host_cpus 8.0

A sub-collector that raises gets `atlas_scrape_collector_success{collector}` 0 and a log
line; the scrape still succeeds with everything else.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from atlas_exporter import __version__
from atlas_exporter.apps.tracker import STATES
from atlas_exporter.exporter.snapshot import Snapshotter
from atlas_exporter.model import AppView, Snapshot, Source, SourceStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppMetric:
    """One row of the per-app metric table: how to read a value off an `AppView`."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    value: Callable[[AppView], float | None]


@dataclass(frozen=True, slots=True)
class LabelledMetric:
    """A per-app metric with one more label: one (label value, getter) per series."""

    name: str
    kind: str
    help: str
    label: str
    series: tuple[tuple[str, Callable[[AppView], float | None]], ...]


def _state_getter(state: str) -> Callable[[AppView], float | None]:
    return lambda a: a.states.get(state) if a.states is not None else None


LABELLED_METRICS: tuple[LabelledMetric, ...] = (
    LabelledMetric("atlas_app_cpu_seconds_total", "counter", "CPU time the application's processes used, by mode.",
                   "mode", (("user", lambda a: a.cpu_user_seconds_total),
                            ("system", lambda a: a.cpu_system_seconds_total))),
    LabelledMetric("atlas_app_context_switches_total", "counter",
                   "Context switches of the application's processes (Linux: each process's main thread), by kind "
                   "(macOS: all threads, kind \"all\").",
                   "kind", (("voluntary", lambda a: a.voluntary_switches_total),
                            ("involuntary", lambda a: a.involuntary_switches_total),
                            ("all", lambda a: a.switches_total))),
    LabelledMetric("atlas_app_process_states", "gauge", "Processes of the application by state now.", "state",
                   tuple((state, _state_getter(state)) for state in STATES)),
)

APP_METRICS: tuple[AppMetric, ...] = (
    AppMetric("atlas_app_processes", "gauge", "Processes in the application now.", lambda a: a.processes),
    AppMetric("atlas_app_threads", "gauge", "Threads in the application's processes.",
              lambda a: a.threads if a.processes else None),
    AppMetric("atlas_app_resident_memory_bytes", "gauge",
              "Resident memory of the application's processes, summed.", lambda a: a.resident_bytes),
    AppMetric("atlas_app_open_fds", "gauge", "Open file descriptors of the application's processes.",
              lambda a: a.open_fds),
    AppMetric("atlas_app_disk_read_bytes_total", "counter", "Bytes the application read from storage.",
              lambda a: a.read_bytes_total),
    AppMetric("atlas_app_disk_written_bytes_total", "counter",
              "Bytes the application wrote to storage (Linux: write_bytes, counted when pages are dirtied).",
              lambda a: a.written_bytes_total),
    AppMetric("atlas_app_disk_cancelled_write_bytes_total", "counter",
              "Written bytes the application truncated or deleted before writeback; net written is written minus "
              "cancelled.", lambda a: a.cancelled_write_bytes_total),
    AppMetric("atlas_app_io_read_ops_total", "counter", "Read system calls the application made.",
              lambda a: a.read_ops_total),
    AppMetric("atlas_app_io_write_ops_total", "counter", "Write system calls the application made.",
              lambda a: a.write_ops_total),
    AppMetric("atlas_app_disk_wait_processes", "gauge",
              "Processes of the application in uninterruptible (disk) wait now.",
              lambda a: a.disk_wait_processes if a.processes else None),  # None: states unreadable
    AppMetric("atlas_app_oldest_start_time_seconds", "gauge",
              "Unix time the application's oldest live process started.", lambda a: a.oldest_start_time_seconds),
    AppMetric("atlas_app_minor_page_faults_total", "counter",
              "Minor page faults of the application's processes, with those of children they reaped.",
              lambda a: a.minor_faults_total),
    AppMetric("atlas_app_major_page_faults_total", "counter",
              "Major page faults (read from storage) of the application's processes, with those of children "
              "they reaped.", lambda a: a.major_faults_total),
    AppMetric("atlas_app_virtual_memory_bytes", "gauge", "Virtual memory size of the application's processes, summed.",
              lambda a: a.virtual_bytes),
    AppMetric("atlas_app_swap_bytes", "gauge", "Swapped-out memory of the application's processes, summed.",
              lambda a: a.swap_bytes),
    AppMetric("atlas_app_open_fds_limit_ratio", "gauge",
              "The largest ratio of open file descriptors to the soft RLIMIT_NOFILE over the application's "
              "processes.", lambda a: a.open_fds_limit_ratio),
)

# only with --collector.smaps (the `smaps` sub-collector)
PSS_METRIC = AppMetric("atlas_app_proportional_memory_bytes", "gauge",
                       "Proportional set size (PSS, shared pages divided among their users) of the application's "
                       "processes, summed.", lambda a: a.proportional_bytes)


def app_families(rows: Iterable[AppMetric], apps: list[AppView]) -> Iterable[Metric]:
    """One family per row, one series per app whose value is known."""
    for row in rows:
        if row.kind == "counter":
            family: Metric = CounterMetricFamily(row.name.removesuffix("_total"), row.help, labels=["app"])
        else:
            family = GaugeMetricFamily(row.name, row.help, labels=["app"])
        for app in apps:
            value = row.value(app)
            if value is not None:
                family.add_metric([app.name], value)
        yield family


class ProcessMetrics:
    """The core sub-collector (`--collector.process`): per-app metrics from the snapshot."""

    name = "process"

    def __init__(self, snapshotter: Snapshotter, statuses: Callable[[], list[SourceStatus]]) -> None:
        self.snapshotter = snapshotter
        self._statuses = statuses

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def statuses(self) -> list[SourceStatus]:
        return self._statuses()

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        if self.snapshotter.scan_error is not None:
            raise RuntimeError(f"process table unreadable: {self.snapshotter.scan_error}")
        apps = sorted(snapshot.apps.values(), key=lambda a: a.name)
        for labelled in LABELLED_METRICS:
            if labelled.kind == "counter":
                family: Metric = CounterMetricFamily(labelled.name.removesuffix("_total"), labelled.help,
                                                     labels=["app", labelled.label])
            else:
                family = GaugeMetricFamily(labelled.name, labelled.help, labels=["app", labelled.label])
            for app in apps:
                for label_value, get in labelled.series:
                    value = get(app)
                    if value is not None:
                        family.add_metric([app.name, label_value], value)
            yield family
        yield from app_families(APP_METRICS, apps)
        errors = CounterMetricFamily("atlas_process_read_errors",
                                     "Process reads that failed, by reason (a process vanished mid-read, or "
                                     "access was denied).", labels=["reason"])
        for reason, count in sorted(snapshot.read_errors_total.items()):
            errors.add_metric([reason], count)
        yield errors


class SmapsMetrics:
    """The `smaps` sub-collector (`--collector.smaps`, off by default): per-app PSS.

    The process source reads `smaps_rollup` only when this collector is on, and the kernel
    walks every process's page tables to produce it; see docs/performance.md for the cost.

        atlas_app_proportional_memory_bytes{app="postgres"} 2.01326592e+08
    """

    name = "smaps"

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def statuses(self) -> list[SourceStatus]:
        return []

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        if self.snapshotter.scan_error is not None:
            raise RuntimeError(f"process table unreadable: {self.snapshotter.scan_error}")
        yield from app_families((PSS_METRIC,), sorted(snapshot.apps.values(), key=lambda a: a.name))


class AtlasCollector:
    """A custom prometheus_client collector over a snapshotter and a list of sub-collectors."""

    def __init__(self, snapshotter: Snapshotter, sources: Sequence[Source], *, platform_name: str | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 folded: Callable[[], tuple[int, int]] | None = None,
                 host_cpus: Callable[[], int | None] = os.cpu_count) -> None:
        self.snapshotter = snapshotter
        self.folded = folded  # (names folded into "other", max_apps), from the resolver
        self.host_cpus = host_cpus
        self.sources = list(sources)
        self.platform_name = platform_name or sys.platform
        self.clock = clock
        self._scrape_lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        return []  # an unchecked collector: its series depend on the machine

    def statuses(self) -> list[SourceStatus]:
        """Every source's statuses, a failing source reported as inactive."""
        out: list[SourceStatus] = []
        for source in self.sources:
            try:
                out.extend(source.statuses())
            except Exception as err:
                out.append(SourceStatus(name=source.name, active=False, reason=f"status unavailable: {err}"))
        return out

    def collect(self) -> Iterable[Metric]:
        with self._scrape_lock:
            yield from self._collect()

    def _collect(self) -> Iterable[Metric]:
        success = GaugeMetricFamily("atlas_scrape_collector_success",
                                    "Whether a collector succeeded in this scrape (1) or failed (0).",
                                    labels=["collector"])
        duration = GaugeMetricFamily("atlas_scrape_collector_duration_seconds",
                                     "How long a collector took in this scrape.", labels=["collector"])
        t0 = self.clock()
        snapshot = self.snapshotter.get()
        duration.add_metric(["snapshot"], self.clock() - t0)
        for source in self.sources:
            t0 = self.clock()
            try:
                metrics = list(source.collect(snapshot))
            except Exception:
                log.exception("collector %s failed", source.name)
                success.add_metric([source.name], 0)
                metrics = []
            else:
                success.add_metric([source.name], 1)
            duration.add_metric([source.name], self.clock() - t0)
            yield from metrics
        yield success
        yield duration
        info = GaugeMetricFamily("atlas_exporter_build_info", "Build information of atlas-exporter (always 1).",
                                 labels=["version", "python", "platform"])
        info.add_metric([__version__, platform.python_version(), self.platform_name], 1)
        yield info
        if self.folded is not None:
            yield CounterMetricFamily("atlas_app_names_folded",
                                      "App names counted as app=\"other\" because max_apps apps were already "
                                      "exported.", value=self.folded()[0])
        cpus = self.host_cpus()
        if cpus:
            host = GaugeMetricFamily("atlas_host_cpus",
                                     "Logical CPUs of the host: what 100 % of the host's CPU means, for CPU as a "
                                     "percentage of the host.")
            host.add_metric([], cpus)
            yield host
        active = GaugeMetricFamily("atlas_source_active",
                                   "Whether a data source is active (1) or off (0), with the privilege it runs at.",
                                   labels=["source", "privilege"])
        for status in self.statuses():
            active.add_metric([status.name, status.privilege or "none"], 1 if status.active else 0)
        yield active
