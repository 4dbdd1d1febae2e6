"""Assembles a running exporter: sources -> apps -> collector -> registry, status page, CSV.

`Exporter` owns the background threads of every sub-collector; `render_metrics()` and
`render_status()` are what the HTTP server serves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

from atlas_exporter import platform
from atlas_exporter.apps.naming import Namer
from atlas_exporter.apps.resolver import AppResolver
from atlas_exporter.apps.tracker import Tracker
from atlas_exporter.collectors.process.metrics import ProcessMetrics
from atlas_exporter.collectors.smaps.metrics import SmapsMetrics
from atlas_exporter.config import Config
from atlas_exporter.exporter.collector import AtlasCollector
from atlas_exporter.exporter.exposition import TextRenderer
from atlas_exporter.exporter.snapshot import Snapshotter
from atlas_exporter.exporter.status import StatusPage
from atlas_exporter.model import NetworkTotals, ProcessSource, PssReading, Retiring, Source, SourceStatus

log = logging.getLogger(__name__)

NOTES = (
    "UDP and QUIC traffic is not in the network counters: the kernel keeps no per-socket byte counts for UDP.",
    "A value this platform or privilege cannot measure is absent from /metrics, never a fake 0.",
)


class Exporter:
    """The whole pipeline for one configuration.

    `process_source` and `sources` default to the platform's; tests inject fakes.
    """

    def __init__(self, config: Config, *, procfs: Path | str = Path("/proc"),
                 enabled: set[str] | None = None, telemetry_path: str = "/metrics",
                 process_source: ProcessSource | None = None, sources: Sequence[Source] | None = None,
                 platform_name: str | None = None) -> None:
        self.config = config
        self.procfs = Path(procfs)
        self.enabled = ({name for name, on in platform.COLLECTORS.items() if on} if enabled is None
                        else set(enabled))  # the defaults, as on the command line: smaps is off
        self.process_source = process_source or platform.build_process_source(self.procfs)
        if isinstance(self.process_source, PssReading):  # smaps_rollup is read only for --collector.smaps
            self.process_source.read_pss = "smaps" in self.enabled
        self.resolver = AppResolver(self.process_source, Namer(config.apps), config.max_apps)
        self.tracker = Tracker(config.retention_seconds, reaped_io_in_parent=self.process_source.reaped_io_in_parent)
        if sources is None:
            sources = platform.build_sources(config, self.procfs, self.resolver, self.enabled)
        self.extra_sources = list(sources)
        network = next((s for s in self.extra_sources if s.name == "network"), None)
        totals = network.app_totals if isinstance(network, NetworkTotals) else None
        self.snapshotter = Snapshotter(self.process_source, self.resolver, self.tracker,
                                       max_age_seconds=config.snapshot_max_age_seconds, network_totals=totals,
                                       on_retired=[s.retire for s in self.extra_sources if isinstance(s, Retiring)])
        all_sources: list[Source] = []
        if "process" in self.enabled:
            all_sources.append(ProcessMetrics(self.snapshotter, self.process_source.statuses))
        if "smaps" in self.enabled and isinstance(self.process_source, PssReading):
            all_sources.append(SmapsMetrics(self.snapshotter))
        all_sources.extend(self.extra_sources)
        if config.csv.enabled:
            from atlas_exporter.outputs.csv_mirror import make_csv_mirror

            mirror = make_csv_mirror(config, self.snapshotter.get)
            if mirror is not None:
                all_sources.append(mirror)
        self.sources = all_sources
        self.platform_name = platform_name or platform.PLATFORM_NAME
        self.collector = AtlasCollector(self.snapshotter, all_sources, platform_name=self.platform_name,
                                       folded=self.resolver.folded)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.registry.register(ProcessCollector(namespace="", registry=None))
        self.renderer = TextRenderer()
        self.status_page = StatusPage(self.snapshotter.get, self.statuses, telemetry_path=telemetry_path,
                                      platform_name=self.platform_name, notes=NOTES, folded=self.resolver.folded,
                                      counters=self.collector.collect)
        self._started: list[Source] = []

    def statuses(self) -> list[SourceStatus]:
        """Statuses of the process source and of every sub-collector."""
        statuses = [] if "process" in self.enabled else list(self.process_source.statuses())
        return statuses + self.collector.statuses()

    def start(self) -> None:
        """Start every sub-collector's background work; one that fails to start is logged and left off."""
        for source in self.sources:
            try:
                source.start()
            except Exception as err:
                log.error("collector %s failed to start: %s", source.name, err)
                continue
            self._started.append(source)
        self.status_page.start()

    def stop(self) -> None:
        self.status_page.stop()
        for source in reversed(self._started):
            try:
                source.stop()
            except Exception as err:
                log.warning("collector %s did not stop cleanly: %s", source.name, err)
        self._started.clear()

    def render_metrics(self) -> tuple[bytes, str]:
        return self.renderer.render(self.registry.collect()), CONTENT_TYPE_LATEST

    def render_status(self) -> str:
        return self.status_page.render()
