"""The CSV mirror: every interval, the top apps of the shared snapshot as rows of `app_resources.csv`.

It reads the same `Snapshot`s as /metrics (through an injected `take_snapshot`), so it is not a
second collection path. Rows look like the original agent's file::

    timestamp,app_name,pid,cpu_percent,memory_mb,threads,network_bytes_sent,network_bytes_recv,disk_read_ops,disk_write_ops,open_files
    2026-11-26T01:02:03+00:00,postgres,812,99.87,412.50,23,1520.33,880.00,12.50,40.17,57

CPU is a percentage of one core over the interval; network and disk values are per second over
the interval, from deltas of the monotonic per-app totals. A value the platform cannot measure is
an empty cell. Each interval's rows go to the file in one append-mode write of whole lines; a
failed write is truncated back, so no torn line is left. The file rotates by size.

As a sub-collector ("csv") it emits::

    atlas_csv_rows_written_total 240.0
    atlas_csv_write_errors_total 0.0
    atlas_csv_last_write_timestamp_seconds 1.7641163e+09
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.metrics_core import Metric

from atlas_exporter.config import Config, CsvOptions
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.metrics import MetricSpec
from atlas_exporter.model import AppView, Snapshot, SourceStatus

log = logging.getLogger(__name__)

ROWS_WRITTEN = MetricSpec("atlas_csv_rows_written_total", "counter", "Rows written to the CSV mirror file.")
WRITE_ERRORS = MetricSpec(
    "atlas_csv_write_errors_total", "counter",
    "Intervals whose rows could not be written to the CSV mirror file (disk full, path unusable, no snapshot).")
LAST_WRITE = MetricSpec("atlas_csv_last_write_timestamp_seconds", "gauge",
                        "Unix time of the last successful write to the CSV mirror file.", unit="seconds")
METRICS: tuple[MetricSpec, ...] = (ROWS_WRITTEN, WRITE_ERRORS, LAST_WRITE)

HEADER: tuple[str, ...] = (
    "timestamp", "app_name", "pid", "cpu_percent", "memory_mb", "threads",
    "network_bytes_sent", "network_bytes_recv", "disk_read_ops", "disk_write_ops", "open_files",
)
# The csv module's default dialect, as the original agent used: RFC 4180 quoting, CRLF line ends.
LINE_END = "\r\n"
HEADER_LINE = ",".join(HEADER) + LINE_END
HEADER_BYTES = HEADER_LINE.encode("ascii")

# An app that used at least this share of one core over the interval is always listed, even beyond `top`.
CORE_BURNER_PERCENT = 90.0
# Repeated failures are logged at most once per this many seconds (the first one always).
ERROR_LOG_INTERVAL_SECONDS = 300.0

MIB = 1024 * 1024


class CsvError(Exception):
    """The CSV path cannot be used; the one-line message names the path and the problem."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One app over one interval. None is an empty cell (the platform cannot measure it)."""

    timestamp: str
    app_name: str
    pid: int | None
    cpu_percent: float | None
    memory_mb: float | None
    threads: int | None
    network_bytes_sent: float | None  # per second
    network_bytes_recv: float | None  # per second
    disk_read_ops: float | None  # per second
    disk_write_ops: float | None  # per second
    open_files: int | None

    def cells(self) -> list[str]:
        return [
            self.timestamp, self.app_name, _int(self.pid), _percent(self.cpu_percent), _num(self.memory_mb),
            _int(self.threads), _num(self.network_bytes_sent), _num(self.network_bytes_recv),
            _num(self.disk_read_ops), _num(self.disk_write_ops), _int(self.open_files),
        ]


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _int(value: int | None) -> str:
    return "" if value is None else str(value)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def format_timestamp(wall_time: float) -> str:
    """ISO 8601 in UTC to the second, with an explicit offset: `2026-11-26T01:02:03+00:00`."""
    return datetime.fromtimestamp(wall_time, tz=UTC).isoformat(timespec="seconds")


def _delta(now: float | None, before: float | None) -> float | None:
    """The increase of a monotonic total; None when either side is unknown.

    A decrease means the total restarted (the app was forgotten and came back), so the new
    total is the whole increase, as Prometheus' rate() treats a counter reset.
    """
    if now is None or before is None:
        return None
    return now - before if now >= before else now


def _per_second(now: float | None, before: float | None, seconds: float) -> float | None:
    change = _delta(now, before)
    return None if change is None else change / seconds


def app_row(app: AppView, before: AppView | None, seconds: float, timestamp: str, *,
            network_before: bool = False) -> CsvRow:
    """One row for `app` over the `seconds` since `before` (None: the app is new since then).

    `network_before`: network totals were being kept at `before` (some app had one). An app
    whose network total first appears now then sent and received all of it in this interval:
    the network source keeps a total only from an app's first byte on.
    """
    if before is not None and network_before and before.network_receive_bytes_total is None and \
            before.network_transmit_bytes_total is None:
        before = replace(before, network_receive_bytes_total=0.0, network_transmit_bytes_total=0.0)
    if before is None:
        # Everything the app has accumulated happened after the previous snapshot.
        before = AppView(name=app.name, cpu_user_seconds_total=0.0, cpu_system_seconds_total=0.0,
                         read_bytes_total=0.0, written_bytes_total=0.0, read_ops_total=0.0,
                         write_ops_total=0.0, network_receive_bytes_total=0.0, network_transmit_bytes_total=0.0)
    cpu = _delta(app.cpu_seconds_total(), before.cpu_seconds_total())
    return CsvRow(
        timestamp=timestamp,
        app_name=app.name,
        pid=app.oldest_pid,
        cpu_percent=None if cpu is None else cpu / seconds * 100.0,
        memory_mb=None if app.resident_bytes is None else app.resident_bytes / MIB,
        threads=app.threads,
        network_bytes_sent=_per_second(app.network_transmit_bytes_total, before.network_transmit_bytes_total, seconds),
        network_bytes_recv=_per_second(app.network_receive_bytes_total, before.network_receive_bytes_total, seconds),
        disk_read_ops=_per_second(app.read_ops_total, before.read_ops_total, seconds),
        disk_write_ops=_per_second(app.write_ops_total, before.write_ops_total, seconds),
        open_files=app.open_fds,
    )


def build_rows(previous: Snapshot, current: Snapshot, top: int) -> list[CsvRow]:
    """The rows of one interval: apps with live processes, by CPU then memory, the top `top`.

    Apps at `CORE_BURNER_PERCENT` or more of one core are kept even beyond `top`. Returns no rows
    when the two snapshots are the same reading (no time passed between them).
    """
    seconds = current.monotonic - previous.monotonic
    if seconds <= 0:
        return []
    timestamp = format_timestamp(current.wall_time)
    network_before = any(app.network_receive_bytes_total is not None for app in previous.apps.values())
    rows = [app_row(app, previous.apps.get(name), seconds, timestamp, network_before=network_before)
            for name, app in current.apps.items() if app.processes > 0]
    rows.sort(key=lambda r: (-(r.cpu_percent or 0.0), -(r.memory_mb or 0.0), r.app_name))
    return [row for i, row in enumerate(rows) if i < top or (row.cpu_percent or 0.0) >= CORE_BURNER_PERCENT]


def format_rows(rows: Sequence[CsvRow]) -> str:
    """The rows as CSV text of whole lines (csv module quoting, CRLF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=LINE_END)
    writer.writerows(row.cells() for row in rows)
    return out.getvalue()


class CsvFile:
    """Appends whole-line chunks to one CSV file, with the header, size rotation and truncate-on-failure.

    The file is opened for each append, so a file deleted, truncated or renamed by someone else
    is noticed and a fresh one gets the header. `write` is `os.write`, injectable for tests.
    """

    def __init__(self, path: Path, *, max_bytes: int, backup_count: int,
                 write: Callable[[int, bytes], int] = os.write, fsync: bool = True) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._write = write
        self._fsync = fsync
        self._inode: tuple[int, int] | None = None

    def check(self) -> None:
        """Make the folder and file usable now, or raise `CsvError`; writes the header to a new file."""
        where = f"csv.path {self.path}"
        if self.path.is_dir():
            raise CsvError(f"{where}: is a directory, not a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CsvError(f"{where}: cannot create folder {self.path.parent}: {_reason(err)}") from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise CsvError(f"{where}: cannot open for writing: {_reason(err)}") from None
        try:
            size = os.fstat(fd).st_size
            if size and not self._starts_with_header(fd):
                first = os.pread(fd, 80, 0).decode("utf-8", "replace").splitlines()[0]
                raise CsvError(f"{where}: exists and is not an app_resources CSV (first line {first!r})")
            if size == 0:
                self._write_all(fd, HEADER_BYTES)
        except OSError as err:
            raise CsvError(f"{where}: cannot write: {_reason(err)}") from None
        finally:
            os.close(fd)

    def append(self, text: str) -> None:
        """Append whole lines; on any failure no partial line remains, and OSError is raised."""
        data = text.encode("utf-8")
        fd = self._open()
        try:
            stat = os.fstat(fd)
            rotated = False
            if stat.st_size and not self._starts_with_header(fd):
                log.warning("%s does not start with the CSV header; moving it aside and starting a new file",
                            self.path)
                rotated = True
            elif stat.st_size > len(HEADER_BYTES) and stat.st_size + len(data) > self.max_bytes:
                rotated = True
            if rotated:
                os.close(fd)
                fd = -1
                self.rotate()
                fd = self._open()
                stat = os.fstat(fd)
            size = stat.st_size
            inode = (stat.st_dev, stat.st_ino)
            if self._inode is not None and inode != self._inode and not rotated:
                log.info("%s was deleted or replaced by someone else; writing to the new file", self.path)
            prefix = b""
            if size == 0:
                prefix = HEADER_BYTES
            elif os.pread(fd, 1, size - 1) != b"\n":
                prefix = LINE_END.encode()  # end a partial line someone else left
            try:
                self._write_all(fd, prefix + data)
                if self._fsync:
                    os.fsync(fd)
            except OSError:
                self._truncate(fd, size)
                raise
            self._inode = inode
        finally:
            if fd >= 0:
                os.close(fd)

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o644)

    def rotate(self) -> None:
        """path.N-1 -> path.N, ..., path -> path.1; with no backups kept, the file is removed."""
        if self.backup_count <= 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backup_count - 1, 0, -1):
            older = self._backup(i)
            if older.exists():
                os.replace(older, self._backup(i + 1))
        try:
            os.replace(self.path, self._backup(1))
        except FileNotFoundError:
            pass  # someone else moved it first

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _starts_with_header(self, fd: int) -> bool:
        head = os.pread(fd, len(HEADER_BYTES), 0)
        return head == HEADER_BYTES or head.startswith(HEADER_BYTES[:-2] + b"\n")

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._write(fd, view.tobytes())
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]

    def _truncate(self, fd: int, size: int) -> None:
        try:
            os.ftruncate(fd, size)
        except OSError as err:
            log.error("cannot truncate %s back to %d bytes after a failed write: %s", self.path, size, _reason(err))


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


class CsvMirror:
    """Writes the top apps to a CSV file every `interval_seconds`, from the exporter's shared snapshots.

    The first snapshot only primes the deltas (`start` takes it at once); each later one writes
    one interval's rows. Failures are logged (rate-limited) and counted, never raised. The writes
    run on `loop`, a `BackgroundLoop` (`loops`: the exporter fails the "csv" collector when it dies).
    """

    name = "csv"

    def __init__(self, options: CsvOptions, take_snapshot: Callable[[], Snapshot],
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 *, fsync: bool = True) -> None:
        self.options = options
        self.path = Path(os.path.abspath(os.path.expanduser(options.path)))
        self.file = CsvFile(self.path, max_bytes=options.max_bytes, backup_count=options.backup_count, fsync=fsync)
        self._take_snapshot = take_snapshot
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()  # guards the counters and the last error
        self._write_lock = threading.Lock()
        self._previous: Snapshot | None = None
        self._rows_written = 0
        self._write_errors = 0
        self._last_write: float | None = None
        self._last_error: str | None = None
        self._failed_in_a_row = 0
        self._last_error_log: float | None = None
        self._suppressed = 0
        self._next_write: float | None = None  # monotonic time the next interval is due
        self.loop = BackgroundLoop("atlas-csv-mirror", self._guarded_write, interval=self._until_next_write,
                                   log=log, immediate=True)
        self.loops = (self.loop,)

    # -- the writing side ---------------------------------------------------------------------

    def write_interval(self) -> int:
        """Take one snapshot and write the interval since the previous one; returns rows written.

        The first call (no previous snapshot) only primes. A snapshot that is the same reading as
        the previous one, or an empty one (the process table could not be read), writes nothing
        and keeps the previous snapshot as the baseline.
        """
        with self._write_lock:  # one writer at a time; scrapes only wait for `_lock`, briefly
            try:
                snapshot = self._take_snapshot()
            except Exception as err:  # the snapshot machinery is not ours; a failure costs one interval
                self._failed(f"cannot take a snapshot: {err}", exc=err)
                return 0
            previous = self._previous
            if previous is not None and (snapshot.monotonic <= previous.monotonic or not snapshot.apps):
                return 0
            self._previous = snapshot
            if previous is None:
                return 0
            rows = build_rows(previous, snapshot, self.options.top)
            if not rows:
                return 0
            try:
                self.file.append(format_rows(rows))
            except OSError as err:
                self._failed(f"cannot write {self.path}: {_reason(err)}")
                return 0
            with self._lock:
                self._rows_written += len(rows)
                self._last_write = self._wall_clock()
                recovered, self._failed_in_a_row = self._failed_in_a_row, 0
                self._last_error = None
            if recovered:
                log.info("CSV writes to %s work again after %d failed intervals", self.path, recovered)
            return len(rows)

    def _failed(self, message: str, exc: BaseException | None = None) -> None:
        now = self._clock()
        with self._lock:
            self._write_errors += 1
            self._failed_in_a_row += 1
            self._last_error = message
            if self._last_error_log is not None and now - self._last_error_log < ERROR_LOG_INTERVAL_SECONDS:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._last_error_log = now
        more = f" ({suppressed} more failures since the last message)" if suppressed else ""
        log.error("CSV mirror: %s; rows of this interval are lost%s", message, more,
                  exc_info=exc if exc is not None and not isinstance(exc, OSError) else None)

    # -- the Source protocol ------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop: prime at once, then write every `interval_seconds`."""
        if self.loop.running:
            return
        self._next_write = None
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop(timeout=max(5.0, self.options.interval_seconds))

    def _until_next_write(self) -> float:
        """Seconds from now to the next interval: writes keep a fixed rate; one that fell behind (a slow
        disk, a suspended machine) moves the schedule on rather than bursting."""
        now = self._clock()
        interval = self.options.interval_seconds
        if self._next_write is None:
            self._next_write = now + interval
        else:
            self._next_write += interval
            if self._next_write <= now:
                self._next_write = now + interval
        return max(0.0, self._next_write - now)

    def _guarded_write(self) -> None:
        try:
            self.write_interval()
        except Exception as err:  # an unexpected failure costs one interval and counts as a write error
            self._failed(f"unexpected error: {err}", exc=err)

    def statuses(self) -> list[SourceStatus]:
        with self._lock:
            error = self._last_error
        if error is not None:
            return [SourceStatus(name=self.name, active=False, reason=f"CSV mirror failing: {error}")]
        return [SourceStatus(name=self.name, active=True)]

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        with self._lock:
            rows, errors, last = self._rows_written, self._write_errors, self._last_write
        yield ROWS_WRITTEN.value(float(rows))
        yield WRITE_ERRORS.value(float(errors))
        if last is not None:
            yield LAST_WRITE.value(float(last))


def make_csv_mirror(config: Config, take_snapshot: Callable[[], Snapshot]) -> CsvMirror | None:
    """The CSV mirror for `config.csv`, or None when it is off; raises `CsvError` when the path is unusable."""
    if not config.csv.enabled:
        return None
    mirror = CsvMirror(config.csv, take_snapshot)
    mirror.file.check()
    return mirror
