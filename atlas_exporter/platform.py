"""The one place that picks the platform: its process source and its sub-collectors.

`build_process_source()` returns the Linux or macOS process table reader;
`build_sources()` returns the enabled event and network sub-collectors for this platform.
"""

from __future__ import annotations

import sys
from pathlib import Path

from atlas_exporter.apps.resolver import AppResolver
from atlas_exporter.config import Config
from atlas_exporter.model import ProcessSource, Source

# every --collector.<name> switch, with its default
COLLECTORS: dict[str, bool] = {"process": True, "network": True, "crash": True, "hang": True, "smaps": False}
IS_DARWIN = sys.platform == "darwin"
PLATFORM_NAME = "darwin" if IS_DARWIN else "linux"


def build_process_source(procfs: Path | None) -> ProcessSource:
    """The process table reader of this platform (`procfs` is Linux's /proc root)."""
    if IS_DARWIN:
        from atlas_exporter.collectors.process.source_darwin import make_process_source as make_darwin

        return make_darwin(procfs)
    from atlas_exporter.collectors.process.source_linux import make_process_source as make_linux

    return make_linux(procfs)


def build_sources(config: Config, procfs: Path, resolver: AppResolver, enabled: set[str]) -> list[Source]:
    """The enabled sub-collectors other than `process`, in a stable order.

    Every source names apps through `resolver`, the one identity service. A factory returns
    None when its source cannot work on this machine at all.
    """
    sources: list[Source | None] = []
    if "network" in enabled:
        if IS_DARWIN:
            from atlas_exporter.collectors.network.source_darwin import make_network_source as make_net_darwin

            sources.append(make_net_darwin(config, procfs, resolver.exported_app_of_pid))
        else:
            from atlas_exporter.collectors.network.source_linux import make_network_source as make_net_linux

            sources.append(make_net_linux(config, procfs, resolver))
    if "crash" in enabled:
        if IS_DARWIN:
            from atlas_exporter.collectors.crash.source_darwin import make_crash_source as make_crash_darwin

            sources.append(make_crash_darwin(config, procfs, resolver))
        else:
            from atlas_exporter.collectors.crash.source_linux import make_crash_source as make_crash_linux

            sources.append(make_crash_linux(config, procfs, resolver))
    if "hang" in enabled and not IS_DARWIN:  # macOS hangs come from the crash report watcher
        from atlas_exporter.collectors.hang.source_linux import make_hang_source

        sources.append(make_hang_source(config, procfs, resolver))
    return [s for s in sources if s is not None]
