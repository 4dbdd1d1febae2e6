"""The prometheus_client collector: one snapshot per scrape, each sub-collector isolated.

Yields every sub-collector's families, then the exporter's own metrics:

    atlas_scrape_collector_success{collector="network"} 1.0
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
from dataclasses import replace

from prometheus_client.metrics_core import Metric

from atlas_exporter import __version__
from atlas_exporter.exporter.metrics import (
    BUILD_INFO,
    COLLECTOR_DURATION,
    COLLECTOR_SUCCESS,
    HOST_CPUS,
    NAMES_FOLDED,
    SOURCE_ACTIVE,
)
from atlas_exporter.exporter.snapshot import Snapshotter
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.model import Looping, Source, SourceStatus

log = logging.getLogger(__name__)


def dead_loop(source: Source) -> BackgroundLoop | None:
    """The first of a source's background loops whose thread has ended on its own, if any."""
    if isinstance(source, Looping):
        for loop in source.loops:
            if loop.dead:
                return loop
    return None


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
                statuses = list(source.statuses())
            except Exception as err:
                statuses = [SourceStatus(name=source.name, active=False, reason=f"status unavailable: {err}")]
            dead = dead_loop(source)
            if dead is not None:  # its data no longer moves: every source it reports is off
                statuses = [replace(s, active=False, reason=dead.dead_reason()) for s in statuses] or [
                    SourceStatus(name=source.name, active=False, reason=dead.dead_reason())]
            out.extend(statuses)
        return out

    def collect(self) -> Iterable[Metric]:
        with self._scrape_lock:
            yield from self._collect()

    def _collect(self) -> Iterable[Metric]:
        success = COLLECTOR_SUCCESS.family()
        duration = COLLECTOR_DURATION.family()
        t0 = self.clock()
        snapshot = self.snapshotter.get()
        duration.add_metric(["snapshot"], self.clock() - t0)
        for source in self.sources:
            t0 = self.clock()
            try:
                dead = dead_loop(source)
                if dead is not None:
                    raise RuntimeError(f"{dead.dead_reason()}; its values are no longer updated")
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
        info = BUILD_INFO.family()
        info.add_metric([__version__, platform.python_version(), self.platform_name], 1)
        yield info
        if self.folded is not None:
            yield NAMES_FOLDED.value(self.folded()[0])
        cpus = self.host_cpus()
        if cpus:
            yield HOST_CPUS.value(cpus)
        active = SOURCE_ACTIVE.family()
        for status in self.statuses():
            active.add_metric([status.name, status.privilege or "none"], 1 if status.active else 0)
        yield active
