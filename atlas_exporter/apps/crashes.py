"""Crash and hang bookkeeping, with no I/O: signal -> reason, dedup, per-app counts.

The crash and hang sources feed this module and read back what they export:

    atlas_app_crashes_total{app="nginx",reason="SIGSEGV"} 2.0
    atlas_app_last_crash_timestamp_seconds{app="nginx"} 1.7641212e+09
    atlas_app_hung_processes{app="backup"} 1.0
    atlas_app_hangs_total{app="backup"} 1.0
    atlas_app_exits_total{app="etl",outcome="error"} 3.0

`CrashBook` dedups one crash seen by several sources (same pid within a time window, or
the same app within the window when a source has no pid) in constant time per event,
counts crashes per app and reason, and counts hang episodes. `HangTracker` applies the kernel's hung-task rule to
successive task observations: a task in D whose context-switch count has not changed
for the threshold is hung; the episode counts once and ends when it makes progress.
The metrics themselves are declared, and their families built, in `collectors/crash/metrics.py`
(and `collectors/hang/metrics.py`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from atlas_exporter.model import clean_label

CRASH_SIGNALS: dict[int, str] = {
    int(signal.SIGSEGV): "SIGSEGV",
    int(signal.SIGABRT): "SIGABRT",
    int(signal.SIGBUS): "SIGBUS",
    int(signal.SIGILL): "SIGILL",
    int(signal.SIGFPE): "SIGFPE",
    int(signal.SIGSYS): "SIGSYS",
    int(signal.SIGTRAP): "SIGTRAP",
}
OTHER = "other"
OOM_KILL = "oom_kill"  # the reason of a death by the kernel's OOM killer
OUTCOMES = ("success", "error", "signal")

# Signal names as crash reports spell them; macOS numbers differ from Linux, so names win.
_NAME_ALIASES = {"SIGIOT": "SIGABRT", "SIGEMT": OTHER}


def reason_of_signal(number: int | None) -> str:
    """The `reason` label for a death by signal `number` on this platform."""
    if number is None:
        return OTHER
    return CRASH_SIGNALS.get(number, OTHER)


def reason_of_name(name: str | None) -> str:
    """The `reason` label for a signal given by name ("SIGSEGV", "segv", "SIGIOT")."""
    if not name:
        return OTHER
    upper = name.strip().upper()
    if not upper.startswith("SIG"):
        upper = "SIG" + upper
    upper = _NAME_ALIASES.get(upper, upper)
    return upper if upper in CRASH_SIGNALS.values() else OTHER


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """A decoded wait status: the terminating signal (or None), core dumped, exit code."""

    signal: int | None
    core_dumped: bool
    exit_code: int | None


def decode_wait_status(status: int) -> ExitStatus:
    """Decode a wait(2) status word as the kernel reports it (`exit_code` of a task)."""
    status &= 0xFFFF
    low = status & 0x7F
    if low == 0:
        return ExitStatus(signal=None, core_dumped=False, exit_code=(status >> 8) & 0xFF)
    if low == 0x7F:  # stopped, not an exit
        return ExitStatus(signal=None, core_dumped=False, exit_code=None)
    return ExitStatus(signal=low, core_dumped=bool(status & 0x80), exit_code=None)


def exit_outcome(status: ExitStatus) -> str | None:
    """`success` (exit 0), `error` (a non-zero exit code), `signal` (killed by any signal); None: no exit."""
    if status.signal is not None:
        return "signal"
    if status.exit_code is None:
        return None
    return "success" if status.exit_code == 0 else "error"


def crash_reason(status: ExitStatus) -> str | None:
    """The crash reason for an exit, or None when the exit is not a crash.

    A crash is a death by one of `CRASH_SIGNALS` or any exit that dumped core (SIGQUIT
    with a core file counts as `other`). SIGKILL, SIGTERM and normal exits are not crashes.
    """
    if status.signal is None:
        return None
    if status.signal in CRASH_SIGNALS:
        return CRASH_SIGNALS[status.signal]
    return OTHER if status.core_dumped else None


@dataclass(frozen=True, slots=True)
class CrashEvent:
    """One crash as one source saw it. `time` is Unix time of the crash itself."""

    source: str
    time: float
    reason: str
    app: str
    pid: int | None = None
    comm: str | None = None


def _app_key(event: CrashEvent) -> tuple[str, bool]:
    """How events without a pid are matched: by app, and an OOM kill (a cgroup counter rise,
    which has no pid) only ever with another OOM kill, never with a crash of another reason."""
    return (event.app, event.reason == OOM_KILL)


@dataclass(slots=True)
class _AppCounts:
    by_reason: dict[str, int] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    last_crash: float | None = None
    hangs: int = 0


# Sources whose events are distinct by construction: the proc connector reports each process
# lifetime's exit once, so the same pid twice within the window is a reused pid, not a repeat.
DISTINCT_SOURCES = frozenset({"proc_connector"})

# per time bucket: key -> source -> [earliest, latest] event time seen there
_Index = dict[tuple[object, int], dict[str, list[float]]]


class CrashBook:
    """Thread-safe per-app crash and hang-episode counts with cross-source dedup.

    One crash seen by several sources counts once: an event with a pid is a duplicate when
    another source (or the same one, unless it is in `DISTINCT_SOURCES`) reported that pid
    within `window_seconds`, or reported the same app without a pid; an event without a pid
    is a duplicate when another source reported the same app within the window. Events are
    indexed by key and time bucket (one bucket per window), so recording costs the same
    whatever the crash rate: three buckets are looked at, each holding at most one
    [earliest, latest] pair per source.

    App labels come folded from the resolver (its `export`, the one `max_apps` fold, so the
    crashes and the CPU of an app share one label); they are made valid UTF-8 here. `retire`
    drops the counts of apps the scan retired, as their process series are.
    """

    def __init__(self, window_seconds: float = 30.0) -> None:
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._apps: dict[str, _AppCounts] = {}
        self._by_pid: _Index = {}
        self._by_app: _Index = {}  # every event
        self._by_app_without_pid: _Index = {}
        self._bucket_keys: dict[int, list[tuple[_Index, tuple[object, int]]]] = {}
        self._newest_bucket: int | None = None
        self.duplicates = 0

    def _app(self, name: str) -> _AppCounts:
        counts = self._apps.get(name)
        if counts is None:
            counts = self._apps[name] = _AppCounts()
        return counts

    def retire(self, apps: Iterable[str]) -> None:
        """Drop every count of `apps` (retired by the scan: their slots are given back)."""
        with self._lock:
            for app in apps:
                self._apps.pop(app, None)

    def _bucket(self, when: float) -> int:
        return int(when // self.window_seconds) if self.window_seconds > 0 else 0

    def _near(self, index: _Index, key: object, when: float, bucket: int, source: str, same_source: bool) -> bool:
        """True when `index` has an event for `key` within the window of `when` from another source.

        With `same_source`, an event of `source` itself counts too.
        """
        window = self.window_seconds
        for offset in (-1, 0, 1):
            entry = index.get((key, bucket + offset))
            if not entry:
                continue
            for seen_source, (earliest, latest) in entry.items():
                if seen_source == source and not same_source:
                    continue
                # every time in the same bucket is closer than a window; in the bucket before,
                # the latest time is the closest one, in the bucket after the earliest
                if (offset == 0 or (offset < 0 and when - latest <= window)
                        or (offset > 0 and earliest - when <= window)):
                    return True
        return False

    def _index(self, index: _Index, key: object, when: float, bucket: int, source: str) -> None:
        slot = (key, bucket)
        entry = index.get(slot)
        if entry is None:
            entry = index[slot] = {}
            self._bucket_keys.setdefault(bucket, []).append((index, slot))
        span = entry.get(source)
        if span is None:
            entry[source] = [when, when]
        elif when < span[0]:
            span[0] = when
        elif when > span[1]:
            span[1] = when

    def _prune(self, bucket: int) -> None:
        """Forget buckets more than four windows older than the newest event seen."""
        if self._newest_bucket is not None and bucket <= self._newest_bucket:
            return
        self._newest_bucket = bucket
        for old in [b for b in self._bucket_keys if b < bucket - 4]:
            for index, slot in self._bucket_keys.pop(old):
                index.pop(slot, None)

    def _is_duplicate(self, event: CrashEvent, bucket: int) -> bool:
        app = _app_key(event)
        if event.pid is not None:
            return (self._near(self._by_pid, event.pid, event.time, bucket, event.source,
                               event.source not in DISTINCT_SOURCES)
                    or self._near(self._by_app_without_pid, app, event.time, bucket, event.source, False))
        return self._near(self._by_app, app, event.time, bucket, event.source, False)

    def record_crash(self, event: CrashEvent, export: Callable[[str], str] | None = None) -> bool:
        """Count `event` unless another source already reported it; True when counted.

        `export` (the resolver's fold) gives the label the count goes under, called only for a
        counted crash: a duplicate takes no `max_apps` slot. Duplicates are matched by the name.
        """
        app = clean_label(event.app)
        if app is not event.app:
            event = replace(event, app=app)
        bucket = self._bucket(event.time)
        with self._lock:
            self._prune(bucket)
            if self._is_duplicate(event, bucket):
                self.duplicates += 1
                return False
            if event.pid is not None:
                self._index(self._by_pid, event.pid, event.time, bucket, event.source)
            else:
                self._index(self._by_app_without_pid, _app_key(event), event.time, bucket, event.source)
            self._index(self._by_app, _app_key(event), event.time, bucket, event.source)
            counts = self._app(clean_label(export(event.app)) if export is not None else event.app)
            counts.by_reason[event.reason] = counts.by_reason.get(event.reason, 0) + 1
            if counts.last_crash is None or event.time > counts.last_crash:
                counts.last_crash = event.time
            return True

    def tracked(self) -> int:
        """How many (key, bucket) entries the dedup index holds (bounded by the crash rate x 5 windows)."""
        with self._lock:
            return len(self._by_pid) + len(self._by_app) + len(self._by_app_without_pid)

    def record_exit(self, app: str, outcome: str) -> None:
        """Count one process exit of `app` by outcome (`OUTCOMES`)."""
        with self._lock:
            exits = self._app(app).exits
            exits[outcome] = exits.get(outcome, 0) + 1

    def exits(self) -> dict[tuple[str, str], int]:
        """(app, outcome) -> exits so far."""
        with self._lock:
            return {(app, outcome): n for app, c in self._apps.items() for outcome, n in c.exits.items()}

    def record_hang(self, app: str, count: int = 1) -> None:
        """Count `count` hang episodes that started for `app`."""
        app = clean_label(app)
        with self._lock:
            self._app(app).hangs += count

    def crashes(self) -> dict[tuple[str, str], int]:
        """(app, reason) -> crashes so far."""
        with self._lock:
            return {(app, reason): n for app, c in self._apps.items() for reason, n in c.by_reason.items()}

    def last_crash(self) -> dict[str, float]:
        with self._lock:
            return {app: c.last_crash for app, c in self._apps.items() if c.last_crash is not None}

    def hangs(self) -> dict[str, int]:
        with self._lock:
            return {app: c.hangs for app, c in self._apps.items() if c.hangs}


@dataclass(frozen=True, slots=True)
class TaskObservation:
    """One task (thread) seen in state D by a scan.

    `process` identifies the thread group (pid plus the leader's start time) and `task`
    the thread (tid plus its start time). `switches` is voluntary + involuntary
    context switches.
    """

    process: tuple[int, int]
    task: tuple[int, int]
    switches: int


@dataclass(frozen=True, slots=True)
class HangUpdate:
    """What changed in one `HangTracker.update`: processes hung now and episodes begun."""

    hung: frozenset[tuple[int, int]]
    started: tuple[tuple[int, int], ...]
    ended: tuple[tuple[int, int], ...]


class HangTracker:
    """The kernel's hung-task rule across scans, per thread, summarised per process.

    Feed it every task seen in D at each scan (tasks not in D are simply not passed).
    A task is hung once it has been seen in D with an unchanged switch count for at
    least `threshold_seconds`. A process is hung while any of its tasks is hung.
    """

    def __init__(self, threshold_seconds: float) -> None:
        self.threshold_seconds = threshold_seconds
        self._since: dict[tuple[tuple[int, int], tuple[int, int]], tuple[float, int]] = {}
        self._hung: frozenset[tuple[int, int]] = frozenset()

    def update(self, now: float, blocked: Iterable[TaskObservation]) -> HangUpdate:
        since: dict[tuple[tuple[int, int], tuple[int, int]], tuple[float, int]] = {}
        hung: set[tuple[int, int]] = set()
        for obs in blocked:
            key = (obs.process, obs.task)
            previous = self._since.get(key)
            if previous is None or previous[1] != obs.switches:
                previous = (now, obs.switches)
            since[key] = previous
            if now - previous[0] >= self.threshold_seconds:
                hung.add(obs.process)
        self._since = since
        started = tuple(sorted(hung - self._hung))
        ended = tuple(sorted(self._hung - hung))
        self._hung = frozenset(hung)
        return HangUpdate(hung=self._hung, started=started, ended=ended)

    @property
    def hung(self) -> frozenset[tuple[int, int]]:
        return self._hung
