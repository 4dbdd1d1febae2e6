"""Per-app network bytes on macOS from one `nettop -P -L 1 -x -n -J bytes_in,bytes_out` per collection.

Emits, like the Linux source (values from nettop's cumulative per-process `bytes_in` / `bytes_out`,
which cover the process's TCP and UDP flows):

    atlas_app_network_receive_bytes_total{app="Safari"} 1.4696988e+08
    atlas_app_network_transmit_bytes_total{app="Safari"} 1.459684e+08
    atlas_network_unattributed_receive_bytes_total 745.0
    atlas_network_unattributed_transmit_bytes_total 952.0

nettop runs once for all processes (never per pid), without a shell, with stdin from /dev/null
and a timeout (`network.nettop_timeout_seconds`); a run that times out is killed and the scrape
goes on with the totals it has. nettop's values are cumulative per process and can drop when
sockets close, so `NettopDeltas` turns them into per-process deltas (a drop counts as 0), keyed by
pid plus first sighting (a pid that disappears, or comes back under another name, starts over),
and adds them to monotonic per-app totals through `app_of_pid`. Bytes of a pid no app can be found
for (it exited before it was named) are unattributed. `parse_nettop_csv` is pure.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.metrics_core import Metric

from atlas_exporter.collectors.network.metrics import byte_families
from atlas_exporter.config import Config
from atlas_exporter.model import AppOfPid, Snapshot, Source, SourceStatus

log = logging.getLogger(__name__)

NETTOP = "/usr/bin/nettop"
NETTOP_ARGS = ("-P", "-L", "1", "-x", "-n", "-J", "bytes_in,bytes_out")
REFRESH_MAX_AGE_SECONDS = 1.0  # a collect and the snapshot of the same scrape share one nettop run


@dataclass(frozen=True, slots=True)
class NettopRow:
    """One per-process row: the (possibly truncated) name, the pid and the cumulative byte counts."""

    name: str
    pid: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True, slots=True)
class NettopFrame:
    """The rows of one nettop frame (the last complete one in the text) and what was skipped."""

    rows: dict[int, NettopRow] = field(default_factory=dict)
    skipped: int = 0  # rows that were not a process row with numeric counters


def _strip_terminator(line: str) -> str:
    # nettop ends every line, header included, with exactly one terminating comma; empty fields before
    # it are real columns, so strip one comma only
    return line[:-1] if line.endswith(",") else line


def parse_nettop_csv(text: str) -> NettopFrame | None:
    """Parse `nettop -P -L n -x` CSV output; None when it has no header with bytes_in and bytes_out.

    Columns are found by header name. The process column is the one with an empty header cell; its
    value is `<name>.<pid>` where the name may hold dots, spaces and commas and is cut to 15
    characters. Counter columns are addressed from the right, so commas in a name cannot shift them.
    With several frames (each starts with the header), the last one is returned.
    """
    frames: list[NettopFrame] = []
    header: list[str] | None = None
    rows: dict[int, NettopRow] = {}
    skipped = 0
    name_at = tail_in = tail_out = 0
    for raw in text.splitlines():
        line = _strip_terminator(raw.rstrip("\r"))
        if not line.strip():
            continue
        cols = line.split(",")
        if "bytes_in" in cols and "bytes_out" in cols:
            if header is not None:
                frames.append(NettopFrame(rows, skipped))
            header = cols
            rows, skipped = {}, 0
            name_at = cols.index("") if "" in cols else 0
            tail_in = len(cols) - cols.index("bytes_in")
            tail_out = len(cols) - cols.index("bytes_out")
            continue
        if header is None:
            continue
        extra = len(cols) - len(header)
        if extra < 0:
            skipped += 1
            continue
        label = ",".join(cols[name_at:name_at + 1 + extra])
        name, dot, pid_text = label.rpartition(".")
        if not dot or not name or not pid_text.isdigit() or "<->" in label:
            skipped += 1
            continue
        try:
            bytes_in = int(cols[len(cols) - tail_in])
            bytes_out = int(cols[len(cols) - tail_out])
        except ValueError:
            skipped += 1
            continue
        if bytes_in < 0 or bytes_out < 0:
            skipped += 1
            continue
        pid = int(pid_text)
        rows[pid] = NettopRow(name, pid, bytes_in, bytes_out)
    if header is None:
        return None
    frames.append(NettopFrame(rows, skipped))
    return frames[-1]


@dataclass(slots=True)
class _Seen:
    name: str
    first_seen: float
    bytes_in: int
    bytes_out: int


class NettopDeltas:
    """Cumulative per-process nettop values -> monotonic per-app totals. Pure; the caller locks.

    A process is (pid, first sighting): a pid missing from a frame, or back under another name, is a
    new process whose whole value counts. A value that drops (a socket closed) adds nothing, and the
    next increase counts from the lower value.
    """

    def __init__(self, app_of_pid: AppOfPid, clock: Callable[[], float] = time.monotonic) -> None:
        self._app_of_pid = app_of_pid
        self._clock = clock
        self._seen: dict[int, _Seen] = {}
        self.apps: dict[str, list[float]] = {}  # app -> [receive, transmit]
        self.unattributed = [0.0, 0.0]

    def apply(self, frame: NettopFrame) -> None:
        now = self._clock()
        seen: dict[int, _Seen] = {}
        target: list[float] | None
        for pid, row in frame.rows.items():
            old = self._seen.get(pid)
            if old is None or old.name != row.name:
                old = _Seen(row.name, now, 0, 0)
            d_in = max(0, row.bytes_in - old.bytes_in)
            d_out = max(0, row.bytes_out - old.bytes_out)
            old.bytes_in, old.bytes_out = row.bytes_in, row.bytes_out
            seen[pid] = old
            if not (d_in or d_out):
                continue
            app = self._app_of_pid(pid)
            if app is None:
                target = self.unattributed
            else:
                target = self.apps.get(app)
                if target is None:
                    target = self.apps[app] = [0.0, 0.0]
            target[0] += d_in
            target[1] += d_out
        self._seen = seen

    def tracked(self) -> int:
        return len(self._seen)

    def totals(self) -> dict[str, tuple[float, float]]:
        return {app: (v[0], v[1]) for app, v in self.apps.items()}

    def retire(self, apps: Iterable[str]) -> None:
        """Drop the totals of apps that are no longer exported; later bytes of such an app start from 0."""
        for app in apps:
            self.apps.pop(app, None)


class NettopRunner:
    """Runs nettop once and returns its stdout; None (and a reason) when it failed or timed out."""

    def __init__(self, command: Sequence[str], timeout: float) -> None:
        self.command = list(command)
        self.timeout = timeout
        self.last_error = ""

    def run(self) -> str | None:
        try:
            done = subprocess.run(self.command, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            self.last_error = f"nettop did not finish within {self.timeout:g} s"
            return None
        except OSError as err:
            self.last_error = f"cannot run {self.command[0]}: {err.strerror or err}"
            return None
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
            self.last_error = f"nettop exited with status {done.returncode}" + (f": {detail[0]}" if detail else "")
            return None
        self.last_error = ""
        return done.stdout.decode("utf-8", "replace")


class DarwinNetworkSource:
    """The "network" `Source` on macOS: one nettop run per collection, with a timeout."""

    name = "network"

    def __init__(self, app_of_pid: AppOfPid, *, command: Sequence[str] | None = None, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._runner = NettopRunner(command or (NETTOP, *NETTOP_ARGS), timeout)
        self.deltas = NettopDeltas(app_of_pid, clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_run = float("-inf")
        self._ok_runs = 0
        self._probed = False
        self.without_x = False  # the probe found that this nettop rejects -x
        self.runs = 0
        self.failures = 0
        self.skipped_rows = 0

    def _probe_x(self, text: str | None) -> str | None:
        """On the first run only: when nettop failed with `-x`, try once without it and keep what works."""
        self._probed = True
        command = self._runner.command
        if text is not None or "-x" not in command or "exited with status" not in self._runner.last_error:
            return text
        fallback = NettopRunner([c for c in command if c != "-x"], self._runner.timeout)
        retry = fallback.run()
        if retry is None or parse_nettop_csv(retry) is None:
            log.debug("network: nettop fails without -x too: %s", fallback.last_error)
            return text
        log.info("network: this nettop rejects -x (%s); running it without -x", self._runner.last_error)
        self._runner = fallback
        self.without_x = True
        return retry

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def refresh(self, max_age: float = REFRESH_MAX_AGE_SECONDS) -> None:
        """Run nettop unless it ran within `max_age` seconds, and add the new deltas."""
        with self._lock:
            if self._clock() - self._last_run < max_age:
                return
            self.runs += 1
            text = self._runner.run()
            if not self._probed:
                text = self._probe_x(text)
            self._last_run = self._clock()
            frame = parse_nettop_csv(text) if text is not None else None
            if frame is None:
                self.failures += 1
                if text is not None:
                    self._runner.last_error = "nettop printed no bytes_in/bytes_out header"
                log.debug("network: %s", self._runner.last_error)
                return
            self._ok_runs += 1
            self.skipped_rows += frame.skipped
            self.deltas.apply(frame)

    def app_totals(self) -> dict[str, tuple[float, float]]:
        """app -> (receive_bytes_total, transmit_bytes_total)."""
        self.refresh()
        with self._lock:
            return self.deltas.totals()

    def retire(self, apps: Iterable[str]) -> None:
        """Drop the totals of apps the tracker retired (no processes for `retention_seconds`).

        An app that comes back later starts again from 0, which Prometheus treats as a counter reset.
        """
        with self._lock:
            self.deltas.retire(apps)

    def collect(self, snapshot: Snapshot) -> Iterator[Metric]:
        self.refresh()
        with self._lock:
            if not self._ok_runs:
                return
            totals = self.deltas.totals()
            unattributed = tuple(self.deltas.unattributed)
        yield from byte_families(totals, unattributed)

    def statuses(self) -> list[SourceStatus]:
        with self._lock:
            ok = self._ok_runs > 0 and not self._runner.last_error
            reason = self._runner.last_error
            if not reason and not self._ok_runs:
                reason = "nettop has not run yet"
            details = ("nettop runs without -x (this version rejects it)",) if self.without_x else ()
        return [SourceStatus("network.nettop", ok, "user", reason, details=details)]


def make_network_source(config: Config, procfs: Path, app_of_pid: AppOfPid) -> Source | None:
    """The macOS network source (nettop). Without nettop it stays off and its status says why."""
    command = NETTOP if Path(NETTOP).exists() else (shutil.which("nettop") or NETTOP)
    return DarwinNetworkSource(app_of_pid, command=(command, *NETTOP_ARGS),
                               timeout=config.network.nettop_timeout_seconds)
