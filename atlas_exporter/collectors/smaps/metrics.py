"""The `smaps` collector (`--collector.smaps`, off by default): per-app PSS.

The process source reads `smaps_rollup` only when this collector is on, and the kernel walks
every process's page tables to produce it; see docs/performance.md for the cost.

    atlas_app_proportional_memory_bytes{app="postgres"} 2.01326592e+08
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

from atlas_exporter.collectors.process.metrics import AppMetric, ScanState, app_families
from atlas_exporter.metrics import MetricSpec
from atlas_exporter.model import Snapshot, SourceStatus

PSS = AppMetric(MetricSpec("atlas_app_proportional_memory_bytes", "gauge",
                           "Proportional set size (PSS, shared pages divided among their users) of the "
                           "application's processes, summed.", unit="bytes", labels=("app",)),
                lambda a: a.proportional_bytes)

METRICS: tuple[MetricSpec, ...] = (PSS.spec,)


class SmapsMetrics:
    """The `smaps` sub-collector: PSS of each app from the snapshot."""

    name = "smaps"

    def __init__(self, snapshotter: ScanState) -> None:
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
        yield from app_families((PSS,), sorted(snapshot.apps.values(), key=lambda a: a.name))
