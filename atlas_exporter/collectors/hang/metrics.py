"""The hang metrics: processes hung now (Linux `hang` collector) and hang episodes per app.

`atlas_app_hangs_total` is declared here once. On Linux the `hang` collector counts episodes of
a thread blocked in uninterruptible sleep; on macOS the crash report watcher counts hang
reports (spindump, hang .ips), which the system writes once per episode.

    atlas_app_hung_processes{app="backup"} 1.0
    atlas_app_hangs_total{app="backup"} 3.0
"""

from __future__ import annotations

from atlas_exporter.metrics import MetricSpec

HUNG_PROCESSES = MetricSpec(
    "atlas_app_hung_processes", "gauge",
    "Processes of the app with a thread blocked in uninterruptible sleep (D) without progress for at least the "
    "hang threshold.", labels=("app",))
HANGS = MetricSpec(
    "atlas_app_hangs_total", "counter",
    "Hang episodes that started in the app's processes (Linux: a thread stuck in uninterruptible sleep past the "
    "threshold; macOS: a hang report, spindump or hang .ips).", labels=("app",))

METRICS: tuple[MetricSpec, ...] = (HUNG_PROCESSES, HANGS)
