"""Per-process deltas folded into per-app totals that never decrease. Pure, no I/O.

A process is identified by (pid, start time). The first time one is seen, its counters
count in full (everything it used since it started); after that, only what it added
since the previous pass. Totals stay when processes exit or pids are reused, and an app
with no processes left stays exported for `retention_seconds`.

When a parent reaps a child on Linux, the child's I/O is added to the parent's I/O
counters (not on macOS: `reaped_io_in_parent`) and its CPU time to the parent's
reaped-children CPU time (cutime, cstime). The tracker counts the parent's reaped-children
CPU too, so a child that lived and died between two passes is not lost; and when a child it
had seen vanishes, it gives the parent a credit of the child's last-seen values, so nothing
is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from atlas_exporter.model import AppView, ProcessId, ProcSample

# index of each counter in the per-process vector; the first six are also the per-app totals
CPU_USER, CPU_SYSTEM, READ_BYTES, WRITTEN_BYTES, READ_OPS, WRITE_OPS, REAPED_USER, REAPED_SYSTEM = range(8)
IO_FIELDS = (READ_BYTES, WRITTEN_BYTES, READ_OPS, WRITE_OPS)
CREDITED = (*IO_FIELDS, REAPED_USER, REAPED_SYSTEM)  # fields a reaped child's values flow into
CREDIT_PASSES = 3  # a reap credit not used up within this many passes is dropped


def counters_of(sample: ProcSample) -> tuple[float | None, ...]:
    """The cumulative counters of one sample, in the order of the index constants."""
    return (sample.cpu_user_seconds, sample.cpu_system_seconds, sample.read_bytes, sample.written_bytes,
            sample.read_ops, sample.write_ops, sample.reaped_cpu_user_seconds, sample.reaped_cpu_system_seconds)


@dataclass(slots=True)
class _Proc:
    app: str
    ppid: int
    last: tuple[float | None, ...]
    credit: list[float] | None = None
    credit_passes: int = 0


@dataclass(slots=True)
class _App:
    totals: list[float | None] = field(default_factory=lambda: [None] * 6)
    last_seen: float = 0.0


@dataclass(frozen=True, slots=True)
class TrackerUpdate:
    """What one pass changed: the apps now, processes gone, and apps retired."""

    apps: dict[str, AppView]
    gone: list[ProcessId]
    retired: list[str]


class Tracker:
    """Keeps per-process last values and per-app monotonic totals across passes."""

    def __init__(self, retention_seconds: float = 3600.0, *, reaped_io_in_parent: bool = True) -> None:
        self.retention_seconds = retention_seconds
        self.reaped_io_in_parent = reaped_io_in_parent
        self._procs: dict[ProcessId, _Proc] = {}
        self._apps: dict[str, _App] = {}

    def update(self, named: Iterable[tuple[ProcSample, str]], now: float,
               keep: frozenset[int] = frozenset()) -> TrackerUpdate:
        """Fold one pass of (sample, app name) pairs into the totals; `now` is a monotonic time.

        Processes whose pid is in `keep` were there but unreadable this pass: they are not gone,
        so they neither credit their parent nor count in full again when they are read next.
        """
        named = list(named)
        procs = self._procs
        current = {sample.id for sample, _ in named}
        gone = [pid for pid in procs if pid not in current and pid.pid not in keep]
        if gone:
            live_by_pid = {pid.pid: pid for pid in current}
            for pid in gone:
                child = procs.pop(pid)
                parent_id = live_by_pid.get(child.ppid)
                parent = procs.get(parent_id) if parent_id is not None else None
                if parent is not None:
                    _add_credit(parent, child.last, self.reaped_io_in_parent)

        views: dict[str, AppView] = {}
        known_state: set[str] = set()
        apps = self._apps
        for sample, app in named:
            now_values = counters_of(sample)
            proc = procs.get(sample.id)
            if proc is None:
                delta = [v or 0.0 for v in now_values]
                proc = procs[sample.id] = _Proc(app=app, ppid=sample.ppid, last=now_values)
            elif now_values == proc.last and proc.app == app:
                delta = None  # an idle process: nothing to add
                proc.ppid = sample.ppid
            else:
                delta = [
                    (now_v if prev_v is None else max(now_v - prev_v, 0.0)) if now_v is not None else 0.0
                    for now_v, prev_v in zip(now_values, proc.last, strict=True)
                ]
                if proc.credit is not None:
                    _use_credit(proc, delta)
                proc.last = tuple(now if now is not None else prev for now, prev in zip(now_values, proc.last,
                                                                                         strict=True))
                proc.ppid = sample.ppid
                proc.app = app
            state = apps.get(app)
            if state is None:
                state = apps[app] = _App()
            state.last_seen = now
            if delta is not None:
                delta[CPU_USER] += delta[REAPED_USER]
                delta[CPU_SYSTEM] += delta[REAPED_SYSTEM]
                totals = state.totals
                for i in range(6):
                    if now_values[i] is not None or totals[i] is not None:
                        totals[i] = (totals[i] or 0.0) + delta[i]
            view = views.get(app)
            if view is None:
                view = views[app] = AppView(name=app)
            if sample.state == "Z":
                continue
            view.processes += 1
            if sample.state != "?":  # "?": the state could not be read
                known_state.add(app)
            if sample.threads is not None:
                view.threads = (view.threads or 0) + sample.threads
            if sample.resident_bytes is not None:
                view.resident_bytes = (view.resident_bytes or 0) + sample.resident_bytes
            if sample.open_fds is not None:
                view.open_fds = (view.open_fds or 0) + sample.open_fds
            if sample.state == "D":
                view.disk_wait_processes += 1
            if view.oldest_start_time_seconds is None or sample.start_time_seconds < view.oldest_start_time_seconds:
                view.oldest_start_time_seconds = sample.start_time_seconds
                view.oldest_pid = sample.id.pid

        retired = [name for name, state in apps.items()
                   if name not in views and now - state.last_seen > self.retention_seconds]
        for name in retired:
            del apps[name]
        for name, state in apps.items():
            view = views.get(name)
            if view is None:
                view = views[name] = AppView(name=name)
            t = state.totals
            view.cpu_user_seconds_total = t[CPU_USER]
            view.cpu_system_seconds_total = t[CPU_SYSTEM]
            if view.processes and name not in known_state:
                view.disk_wait_processes = None
            view.read_bytes_total = t[READ_BYTES]
            view.written_bytes_total = t[WRITTEN_BYTES]
            view.read_ops_total = t[READ_OPS]
            view.write_ops_total = t[WRITE_OPS]
        for proc in procs.values():
            if proc.credit is not None:
                proc.credit_passes += 1
                if proc.credit_passes > CREDIT_PASSES:
                    proc.credit = None
        return TrackerUpdate(apps=views, gone=gone, retired=retired)


def _add_credit(parent: _Proc, child: tuple[float | None, ...], with_io: bool) -> None:
    """What the parent's counters will grow by when it reaps this child."""
    if parent.credit is None:
        parent.credit = [0.0] * 8
    credit = parent.credit
    if with_io:
        for i in IO_FIELDS:
            credit[i] += child[i] or 0.0
    credit[REAPED_USER] += (child[CPU_USER] or 0.0) + (child[REAPED_USER] or 0.0)
    credit[REAPED_SYSTEM] += (child[CPU_SYSTEM] or 0.0) + (child[REAPED_SYSTEM] or 0.0)
    parent.credit_passes = 0


def _use_credit(proc: _Proc, delta: list[float]) -> None:
    credit = proc.credit
    assert credit is not None
    for i in CREDITED:
        used = min(credit[i], delta[i])
        delta[i] -= used
        credit[i] -= used
    if not any(credit[i] > 1e-9 for i in CREDITED):
        proc.credit = None
