"""The `crash` collector's metrics, and its exposition from a `CrashBook`, for Linux and macOS alike.

    atlas_app_crashes_total{app="nginx",reason="SIGSEGV"} 2.0
    atlas_app_last_crash_timestamp_seconds{app="nginx"} 1.7641212e+09
    atlas_app_exits_total{app="etl",outcome="error"} 3.0
    atlas_crash_source_active{source="proc_connector"} 1.0
    atlas_crash_reports_skipped_total{reason="malformed"} 0.0

`atlas_app_hangs_total` (macOS hang reports) is declared by the `hang` collector (`HANGS`) and
emitted here from the same spec.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric

from atlas_exporter.apps.crashes import OUTCOMES, CrashBook
from atlas_exporter.collectors.hang.metrics import HANGS
from atlas_exporter.metrics import MetricSpec
from atlas_exporter.model import SourceStatus

CRASHES = MetricSpec(
    "atlas_app_crashes_total", "counter",
    "Crashes of the app's processes (deaths by a crash signal or with a core dump, or crash reports), by signal name.",
    labels=("app", "reason"))
LAST_CRASH = MetricSpec(
    "atlas_app_last_crash_timestamp_seconds", "gauge", "Unix time of the app's latest crash.", unit="seconds",
    labels=("app",))
SOURCE_ACTIVE = MetricSpec(
    "atlas_crash_source_active", "gauge",
    "Whether a crash source is in use (1) or unavailable at this privilege (0).", labels=("source",))
REPORTS_SKIPPED = MetricSpec(
    "atlas_crash_reports_skipped_total", "counter", "Crash reports or events that could not be used, by reason.",
    labels=("reason",))
EXITS = MetricSpec(
    "atlas_app_exits_total", "counter",
    "Exits of the app's processes by outcome: success (code 0), error (a non-zero code), signal (killed).",
    labels=("app", "outcome"))

METRICS: tuple[MetricSpec, ...] = (CRASHES, LAST_CRASH, SOURCE_ACTIVE, REPORTS_SKIPPED, EXITS)


def crash_metric_families(
    book: CrashBook,
    statuses: Iterable[SourceStatus],
    skipped: Mapping[str, int],
    *,
    hang_apps: Iterable[str] | None = None,
    exits_active: bool = False,
) -> list[Metric]:
    """The `crash` sub-collector's families from its book, source statuses and skip counts.

    With `hang_apps` (a source that reads hang reports), `atlas_app_hangs_total` is emitted for
    those apps and every app with a hang, but only while one of the sources is active: a
    count nobody can measure is absent, not 0. `atlas_app_exits_total` is emitted only while
    a source that sees every exit (`exits_active`) runs, with every outcome of each app that
    exited.
    """
    statuses = list(statuses)
    crashes = CRASHES.family()
    for (app, reason), count in sorted(book.crashes().items()):
        crashes.add_metric([app, reason], count)
    last = LAST_CRASH.family()
    for app, when in sorted(book.last_crash().items()):
        last.add_metric([app], when)
    families: list[Metric] = [crashes, last]
    if hang_apps is not None:
        hangs = HANGS.family()
        if any(status.active for status in statuses):
            totals = book.hangs()
            for app in sorted(set(hang_apps) | set(totals)):
                hangs.add_metric([app], totals.get(app, 0))
        families.append(hangs)
    active = SOURCE_ACTIVE.family()
    for status in statuses:
        active.add_metric([status.name], 1.0 if status.active else 0.0)
    skips = REPORTS_SKIPPED.family()
    for reason, count in sorted(skipped.items()):
        skips.add_metric([reason], count)
    if exits_active:
        exits = EXITS.family()
        counts = book.exits()
        for app in sorted({app for app, _ in counts}):
            for outcome in OUTCOMES:
                exits.add_metric([app, outcome], counts.get((app, outcome), 0))
        families.append(exits)
    return [*families, active, skips]
