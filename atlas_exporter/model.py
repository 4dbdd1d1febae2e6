"""Plain data shared by sources, apps and the exporter.

Sources fill `ProcSample`s; the tracker turns them into `AppView`s inside a `Snapshot`;
sub-collectors (`Source`) read a snapshot and yield metric families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from atlas_exporter.loop import BackgroundLoop


def clean_label(text: str) -> str:
    """`text` as valid UTF-8: bytes that did not decode (surrogates) become U+FFFD.

    Every label value that comes from the host (file names, kernel log lines, process
    names, cgroup paths) passes through here where it enters, so the exposition can
    never fail to encode. Valid text is returned as is (one encode, no copy kept).
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # os.fsdecode / surrogateescape: the original bytes come back, then decode with replacement
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate from elsewhere
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class ProcessId(NamedTuple):
    """A process identity that survives pid reuse: the pid plus an opaque start token.

    `started` is the platform's start time in its own units (clock ticks since boot on
    Linux, microseconds since the epoch on macOS). Only equality matters. A NamedTuple, not
    a dataclass: it is a dict key on the hot path, and tuples hash and compare in C.
    """

    pid: int
    started: int


@dataclass(slots=True)
class ProcIdentity:
    """Static attributes of a process, read once per `ProcessId` and used for naming."""

    comm: str
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    user: str | None = None
    cgroup: str | None = None  # Linux: the cgroup v2 path ("0::" line); macOS: None
    bundle: str | None = None  # macOS: display name of the outermost .app/.appex bundle
    ppid: int | None = None  # the parent's pid, for tree-aware grouping
    cwd: str | None = None  # working folder, to resolve a script given by a relative path
    # reads a small regular file as the process sees it (its root, its mounts): bytes, or None
    # when absent, not a regular file, too large or not readable; None: no file lookups
    read_file: Callable[[str], bytes | None] | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class ProcSample:
    """One reading of one process. A field the platform or privilege cannot read is None."""

    id: ProcessId
    ppid: int
    state: str  # one-letter state as in /proc/<pid>/stat ("R", "S", "D", "Z", ...); "?" if unreadable
    cpu_user_seconds: float | None  # None: not readable (macOS: another user's process)
    cpu_system_seconds: float | None
    threads: int | None
    resident_bytes: int | None
    start_time_seconds: float  # Unix time the process started
    open_fds: int | None = None
    read_bytes: int | None = None
    written_bytes: int | None = None  # Linux: write_bytes (what reached the storage layer's page cache)
    read_ops: int | None = None
    write_ops: int | None = None
    footprint_bytes: int | None = None  # macOS physical footprint
    comm: str | None = None  # the current process name; a change means the process exec'd
    reaped_cpu_user_seconds: float | None = None  # Linux cutime: CPU of children this process reaped
    reaped_cpu_system_seconds: float | None = None  # Linux cstime
    minor_faults: int | None = None
    major_faults: int | None = None
    reaped_minor_faults: int | None = None  # Linux cminflt: faults of children this process reaped
    reaped_major_faults: int | None = None  # Linux cmajflt
    virtual_bytes: int | None = None
    cancelled_write_bytes: int | None = None  # Linux: dirty bytes truncated or deleted before writeback
    voluntary_switches: int | None = None  # Linux: the main thread's, as /proc/<pid>/status gives them
    involuntary_switches: int | None = None
    context_switches: int | None = None  # macOS: every switch, with no voluntary/involuntary split
    swap_bytes: int | None = None
    fd_limit: int | None = None  # soft RLIMIT_NOFILE; None when unknown or unlimited
    proportional_bytes: int | None = None  # PSS (smaps_rollup), only when asked for

    @classmethod
    def from_stat(cls, id: ProcessId, ppid: int, state: str, cpu_user_seconds: float, cpu_system_seconds: float,
                  threads: int, resident_bytes: int, start_time_seconds: float, comm: str,
                  reaped_cpu_user_seconds: float, reaped_cpu_system_seconds: float, minor_faults: int,
                  major_faults: int, reaped_minor_faults: int, reaped_major_faults: int,
                  virtual_bytes: int) -> ProcSample:
        """A sample from one reading of a process's stat record (Linux `/proc/<pid>/stat`), in base units.

        The other fields (open fds, I/O, switches, swap, limits, PSS) start as None; the scan sets
        those it can read. This is the scan's hot path: callers pass the arguments positionally,
        and the fields are filled positionally here, next to their declaration (keyword
        construction costs about twice as much per process).
        """
        return cls(id, ppid, state, cpu_user_seconds, cpu_system_seconds, threads, resident_bytes,
                   start_time_seconds, None, None, None, None, None, None, comm, reaped_cpu_user_seconds,
                   reaped_cpu_system_seconds, minor_faults, major_faults, reaped_minor_faults, reaped_major_faults,
                   virtual_bytes)


@dataclass(slots=True)
class ReadErrors:
    """Per-scan counts of processes or fields that could not be read."""

    access_denied: int = 0
    vanished: int = 0


@dataclass(frozen=True, slots=True)
class ProcessScan:
    """What a process source returns for one pass over the process table."""

    samples: list[ProcSample]
    errors: ReadErrors
    monotonic: float  # time.monotonic() when the pass started
    # pids that are still there but could not be read this pass (not vanished): the tracker keeps them
    skipped: frozenset[int] = frozenset()


@dataclass(slots=True)
class AppView:
    """One application at one snapshot: gauges now, counters as monotonic totals.

    A counter or gauge that no process of the app could provide is None (the series is
    absent). `pids` lists (pid, start time) of the live processes, oldest first.
    """

    name: str
    processes: int = 0
    threads: int | None = None
    resident_bytes: int | None = None
    open_fds: int | None = None
    disk_wait_processes: int | None = 0  # None: no process's state could be read
    oldest_start_time_seconds: float | None = None
    oldest_pid: int | None = None
    cpu_user_seconds_total: float | None = None
    cpu_system_seconds_total: float | None = None
    read_bytes_total: float | None = None
    written_bytes_total: float | None = None
    read_ops_total: float | None = None
    write_ops_total: float | None = None
    network_receive_bytes_total: float | None = None
    network_transmit_bytes_total: float | None = None
    cancelled_write_bytes_total: float | None = None
    minor_faults_total: float | None = None
    major_faults_total: float | None = None
    voluntary_switches_total: float | None = None
    involuntary_switches_total: float | None = None
    switches_total: float | None = None  # macOS: no voluntary/involuntary split
    virtual_bytes: int | None = None
    swap_bytes: int | None = None
    proportional_bytes: int | None = None
    open_fds_limit_ratio: float | None = None
    # processes by state name ("running", "sleeping", ...); None when no state could be read
    states: dict[str, int] | None = None

    def cpu_seconds_total(self) -> float | None:
        """User plus system CPU seconds; None when neither could be read."""
        if self.cpu_user_seconds_total is None and self.cpu_system_seconds_total is None:
            return None
        return (self.cpu_user_seconds_total or 0.0) + (self.cpu_system_seconds_total or 0.0)


@dataclass(slots=True)
class Snapshot:
    """One consistent reading of the machine, shared by every sub-collector of a scrape."""

    wall_time: float  # time.time()
    monotonic: float  # time.monotonic()
    apps: dict[str, AppView] = field(default_factory=dict)
    read_errors_total: dict[str, int] = field(default_factory=dict)  # reason -> count


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """What a source reports about itself for the status page and `atlas_source_active`.

    `privilege` is a short word such as "root", "user" or "none"; `reason` says why the
    source is off or degraded, in one sentence, or is empty. `details` are short facts for
    the status page, such as the folders a watcher reads.
    """

    name: str
    active: bool
    privilege: str = ""
    reason: str = ""
    details: tuple[str, ...] = ()


# Resolves a live pid to its (already folded) app name, or None when the process is gone
# or cannot be read. Thread-safe; watchers call it from their own threads.
AppOfPid = Callable[[int], str | None]


class ProcessSource(Protocol):
    """A platform's process table reader (`collectors/process/source_linux.py`, `source_darwin.py`).

    `reaped_io_in_parent` says whether a parent's I/O counters grow by a child's when it
    reaps it (Linux /proc/<pid>/io does; macOS rusage_info does not).
    """

    reaped_io_in_parent: bool

    def scan(self) -> ProcessScan: ...

    def identity(self, pid: ProcessId) -> ProcIdentity | None:
        """Static attributes for naming; None when the process is gone."""
        ...

    def start_token(self, pid: int) -> ProcessId | None:
        """The current identity of a live pid (cheap), or None when it is gone."""
        ...

    def statuses(self) -> list[SourceStatus]: ...


class Source(Protocol):
    """A sub-collector: one `--collector.<name>` switch, isolated in the exporter.

    `collect` must be fast and must not block on I/O for long; event sources do their
    work in a background thread started by `start` and only report here.
    """

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def statuses(self) -> list[SourceStatus]: ...

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]: ...


# Optional capabilities. The exporter finds them with isinstance(); a type checker holds each
# implementation to its signature.


@runtime_checkable
class Retiring(Protocol):
    """A source that keeps per-app totals and drops those of apps the tracker retired."""

    def retire(self, apps: Iterable[str]) -> None: ...


@runtime_checkable
class NetworkTotals(Protocol):
    """A source of per-app network byte totals, which the tracker copies into each `AppView`."""

    def app_totals(self) -> Mapping[str, tuple[float, float]]:
        """app -> (receive_bytes_total, transmit_bytes_total)."""
        ...


@runtime_checkable
class Looping(Protocol):
    """A source or output that does its work on `BackgroundLoop`s; a dead one fails its collector."""

    loops: Sequence[BackgroundLoop]


@runtime_checkable
class PssReading(Protocol):
    """A process source that can also read PSS (`smaps_rollup`), switched on by `--collector.smaps`."""

    read_pss: bool
