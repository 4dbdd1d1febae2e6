"""One consistent `Snapshot` of the machine, shared by scrapes that arrive close together.

`Snapshotter.get()` is serialized: the first caller scans the process table, names the
processes, folds them into the tracker and copies in the network totals; callers within
`max_age_seconds` of that get the same snapshot. The CSV mirror reads the same snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from atlas_exporter.apps.resolver import AppResolver
from atlas_exporter.apps.tracker import Tracker
from atlas_exporter.model import ProcessSource, ProcSample, Snapshot

log = logging.getLogger(__name__)

# app -> (receive bytes total, transmit bytes total)
AppNetworkTotals = Callable[[], Mapping[str, tuple[float, float]]]


class Snapshotter:
    """Builds snapshots from a process source, a resolver and a tracker."""

    def __init__(self, source: ProcessSource, resolver: AppResolver, tracker: Tracker, *,
                 max_age_seconds: float = 1.0, network_totals: AppNetworkTotals | None = None,
                 on_retired: Sequence[Callable[[Iterable[str]], None]] = (),
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.resolver = resolver
        self.tracker = tracker
        self.max_age_seconds = max_age_seconds
        self.network_totals = network_totals
        self.on_retired = list(on_retired)  # told which apps were retired, to drop their state too
        self.clock = clock
        self.wall_clock = wall_clock
        self.read_errors_total = {"access_denied": 0, "vanished": 0}
        self.scan_error: str | None = None
        self._lock = threading.Lock()
        self._last: Snapshot | None = None

    def get(self) -> Snapshot:
        """The current snapshot, taken now unless the last one is younger than max_age_seconds."""
        with self._lock:
            now = self.clock()
            last = self._last
            if last is not None and now - last.monotonic < self.max_age_seconds:
                return last
            snapshot = self._take(now)
            self._last = snapshot
            return snapshot

    def _take(self, now: float) -> Snapshot:
        try:
            return self._build(now)
        except Exception as err:  # the process table failed: report it, keep serving the rest
            log.error("process snapshot failed: %s", err)
            self.scan_error = str(err) or type(err).__name__
            return Snapshot(wall_time=self.wall_clock(), monotonic=now,
                            read_errors_total=dict(self.read_errors_total))

    def _build(self, now: float) -> Snapshot:
        scan = self.source.scan()
        self.scan_error = None
        self.read_errors_total["access_denied"] += scan.errors.access_denied
        self.read_errors_total["vanished"] += scan.errors.vanished
        app_for = self.resolver.app_for
        named: list[tuple[ProcSample, str]] = []
        for sample in scan.samples:
            app = app_for(sample)
            if app is None:
                if sample.state != "Z":  # a zombie never seen alive is left unnamed, not a read error
                    self.read_errors_total["vanished"] += 1
                continue
            named.append((sample, app))
        update = self.tracker.update(named, now, keep=scan.skipped)
        if update.gone:
            self.resolver.forget(update.gone)
        if update.retired:
            self.resolver.release(update.retired)
            for retire in self.on_retired:
                try:
                    retire(update.retired)
                except Exception as err:
                    log.warning("could not retire apps %s: %s", update.retired, err)
        apps = update.apps
        if self.network_totals is not None:
            try:
                totals = self.network_totals()
            except Exception as err:
                log.warning("network totals unavailable for this snapshot: %s", err)
                totals = {}
            for name, (rx, tx) in totals.items():
                view = apps.get(name)
                if view is not None:
                    view.network_receive_bytes_total = rx
                    view.network_transmit_bytes_total = tx
        return Snapshot(wall_time=self.wall_clock(), monotonic=now, apps=apps,
                        read_errors_total=dict(self.read_errors_total))
