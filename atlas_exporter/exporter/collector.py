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


def dead_loops(source: Source) -> list[BackgroundLoop]:
    """A source's background loops whose threads have ended on their own."""
    if isinstance(source, Looping):
        return [loop for loop in source.loops if loop.dead]
    return []


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
        self._reported_dead: set[int] = set()  # id() of loops already logged as dead

    def describe(self) -> Iterable[Metric]:
        return []  # an unchecked collector: its series depend on the machine

    def statuses(self) -> list[SourceStatus]:
        """Every source's statuses: a failing source, or one whose essential loop died, reported as off."""
        out: list[SourceStatus] = []
        for source in self.sources:
            try:
                statuses = list(source.statuses())
            except Exception as err:
                statuses = [SourceStatus(name=source.name, active=False, reason=f"status unavailable: {err}")]
            essential = [loop for loop in dead_loops(source) if loop.essential]
            if essential:  # its data no longer moves: every source it reports is off
                reason = essential[0].dead_reason()
                statuses = [replace(s, active=False, reason=reason) for s in statuses] or [
                    SourceStatus(name=source.name, active=False, reason=reason)]
            out.extend(statuses)
        return out

    def _dead_loops(self, source: Source) -> list[BackgroundLoop]:
        """`dead_loops(source)`, each logged once, when first seen."""
        dead = dead_loops(source)
        for loop in dead:
            if id(loop) not in self._reported_dead:
                self._reported_dead.add(id(loop))
                log.error("collector %s: %s%s", source.name, loop.dead_reason(),
                          "; its values are no longer exported" if loop.essential else "")
        return dead

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
            dead = self._dead_loops(source)
            ok = not dead
            metrics: list[Metric] = []
            if not any(loop.essential for loop in dead):
                try:
                    metrics = list(source.collect(snapshot))
                except Exception:
                    log.exception("collector %s failed", source.name)
                    ok, metrics = False, []
            success.add_metric([source.name], 1 if ok else 0)
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
