"""The `process` collector's metrics: per-app values read off each snapshot's `AppView`s.

    atlas_app_cpu_seconds_total{app="nginx",mode="user"} 12.5
    atlas_app_context_switches_total{app="nginx",kind="voluntary"} 40312.0
    atlas_app_process_states{app="nginx",state="sleeping"} 3.0
    atlas_app_resident_memory_bytes{app="nginx"} 5.24288e+07
    atlas_app_open_fds_limit_ratio{app="nginx"} 0.029
    atlas_process_read_errors_total{reason="access_denied"} 3.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.metrics_core import Metric

from atlas_exporter.apps.tracker import STATES
from atlas_exporter.metrics import MetricSpec, MetricType
from atlas_exporter.model import AppView, Snapshot, SourceStatus

Getter = Callable[[AppView], float | None]


class ScanState(Protocol):
    """What the per-app collectors need of the snapshotter: why the last process scan failed, if it did."""

    scan_error: str | None


@dataclass(frozen=True, slots=True)
class AppMetric:
    """One row of the per-app metric table: the metric, and how to read its value off an `AppView`."""

    spec: MetricSpec
    value: Getter


@dataclass(frozen=True, slots=True)
class LabelledMetric:
    """A per-app metric with one more label (the spec's second): one (label value, getter) per series."""

    spec: MetricSpec
    series: tuple[tuple[str, Getter], ...]


def _state_getter(state: str) -> Getter:
    return lambda a: a.states.get(state) if a.states is not None else None


def _app(name: str, kind: MetricType, help_text: str, value: Getter, unit: str = "") -> AppMetric:
    return AppMetric(MetricSpec(name, kind, help_text, unit=unit, labels=("app",)), value)


LABELLED_METRICS: tuple[LabelledMetric, ...] = (
    LabelledMetric(MetricSpec("atlas_app_cpu_seconds_total", "counter",
                              "CPU time the application's processes used, by mode.", unit="seconds",
                              labels=("app", "mode")),
                   (("user", lambda a: a.cpu_user_seconds_total),
                    ("system", lambda a: a.cpu_system_seconds_total))),
    LabelledMetric(MetricSpec("atlas_app_context_switches_total", "counter",
                              "Context switches of the application's processes (Linux: each process's main "
                              "thread), by kind (macOS: all threads, kind \"all\").", labels=("app", "kind")),
                   (("voluntary", lambda a: a.voluntary_switches_total),
                    ("involuntary", lambda a: a.involuntary_switches_total),
                    ("all", lambda a: a.switches_total))),
    LabelledMetric(MetricSpec("atlas_app_process_states", "gauge", "Processes of the application by state now.",
                              labels=("app", "state")),
                   tuple((state, _state_getter(state)) for state in STATES)),
)

APP_METRICS: tuple[AppMetric, ...] = (
    _app("atlas_app_processes", "gauge", "Processes in the application now.", lambda a: a.processes),
    _app("atlas_app_threads", "gauge", "Threads in the application's processes.",
         lambda a: a.threads if a.processes else None),
    _app("atlas_app_resident_memory_bytes", "gauge",
         "Resident memory of the application's processes, summed.", lambda a: a.resident_bytes, "bytes"),
    _app("atlas_app_open_fds", "gauge", "Open file descriptors of the application's processes.",
         lambda a: a.open_fds),
    _app("atlas_app_disk_read_bytes_total", "counter", "Bytes the application read from storage.",
         lambda a: a.read_bytes_total, "bytes"),
    _app("atlas_app_disk_written_bytes_total", "counter",
         "Bytes the application wrote to storage (Linux: write_bytes, counted when pages are dirtied).",
         lambda a: a.written_bytes_total, "bytes"),
    _app("atlas_app_disk_cancelled_write_bytes_total", "counter",
         "Written bytes the application truncated or deleted before writeback; net written is written minus "
         "cancelled.", lambda a: a.cancelled_write_bytes_total, "bytes"),
    _app("atlas_app_io_read_ops_total", "counter", "Read system calls the application made.",
         lambda a: a.read_ops_total),
    _app("atlas_app_io_write_ops_total", "counter", "Write system calls the application made.",
         lambda a: a.write_ops_total),
    _app("atlas_app_disk_wait_processes", "gauge",
         "Processes of the application in uninterruptible (disk) wait now.",
         lambda a: a.disk_wait_processes if a.processes else None),  # None: states unreadable
    _app("atlas_app_oldest_start_time_seconds", "gauge",
         "Unix time the application's oldest live process started.", lambda a: a.oldest_start_time_seconds,
         "seconds"),
    _app("atlas_app_minor_page_faults_total", "counter",
         "Minor page faults of the application's processes, with those of children they reaped.",
         lambda a: a.minor_faults_total),
    _app("atlas_app_major_page_faults_total", "counter",
         "Major page faults (read from storage) of the application's processes, with those of children "
         "they reaped.", lambda a: a.major_faults_total),
    _app("atlas_app_virtual_memory_bytes", "gauge", "Virtual memory size of the application's processes, summed.",
         lambda a: a.virtual_bytes, "bytes"),
    _app("atlas_app_swap_bytes", "gauge", "Swapped-out memory of the application's processes, summed.",
         lambda a: a.swap_bytes, "bytes"),
    _app("atlas_app_open_fds_limit_ratio", "gauge",
         "The largest ratio of open file descriptors to the soft RLIMIT_NOFILE over the application's "
         "processes.", lambda a: a.open_fds_limit_ratio, "ratio"),
)

READ_ERRORS = MetricSpec("atlas_process_read_errors_total", "counter",
                         "Process reads that failed, by reason (a process vanished mid-read, or access was denied).",
                         labels=("reason",))

METRICS: tuple[MetricSpec, ...] = (*(m.spec for m in LABELLED_METRICS), *(m.spec for m in APP_METRICS),
                                   READ_ERRORS)


def app_families(rows: Iterable[AppMetric], apps: list[AppView]) -> Iterable[Metric]:
    """One family per row, one series per app whose value is known."""
    for row in rows:
        family = row.spec.family()
        for app in apps:
            value = row.value(app)
            if value is not None:
                family.add_metric([app.name], value)
        yield family


class ProcessMetrics:
    """The core sub-collector (`--collector.process`): per-app metrics from the snapshot."""

    name = "process"

    def __init__(self, snapshotter: ScanState, statuses: Callable[[], list[SourceStatus]]) -> None:
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
            family = labelled.spec.family()
            for app in apps:
                for label_value, get in labelled.series:
                    value = get(app)
                    if value is not None:
                        family.add_metric([app.name, label_value], value)
            yield family
        yield from app_families(APP_METRICS, apps)
        errors = READ_ERRORS.family()
        for reason, count in sorted(snapshot.read_errors_total.items()):
            errors.add_metric([reason], count)
        yield errors
