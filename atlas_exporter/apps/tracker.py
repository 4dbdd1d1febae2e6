"""Per-process deltas folded into per-app totals that never decrease. Pure, no I/O.

A process is identified by (pid, start time). The first time one is seen, its counters
count in full (everything it used since it started); after that, only what it added
since the previous pass. Totals stay when processes exit or pids are reused, and an app
with no processes left stays exported for `retention_seconds`.

When a parent reaps a child on Linux, the child's I/O is added to the parent's I/O
counters (not on macOS: `reaped_io_in_parent`), its CPU time to the parent's
reaped-children CPU time (cutime, cstime) and its page faults to the parent's
reaped-children faults (cminflt, cmajflt). The tracker counts the parent's reaped-children
CPU and faults too, so a child that lived and died between two passes is not lost. A
child it had seen is not counted twice:
- when a child it had seen vanishes, its last-seen values become a reap credit;
- a credit is used only in a pass where some process's reaped-children counters grew by at
  least the child's CPU and faults: that growth is the reap. A child that nobody waited for
  (SIGCHLD ignored, auto-reaped) moves no counter, so its credit is never used and expires
  without touching the parent's own I/O;
- the credit goes to the child's parent at its last pass. When that parent is gone too (an
  orphan reparented to a subreaper or init after its last pass), it goes to the nearest live
  ancestor (the subreaper, when there is one), and also to a pool: after every process has
  used its own credits, a process whose remaining reaped-children growth covers a pooled
  credit uses it (init, or a subreaper further up).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from atlas_exporter.model import AppView, ProcessId, ProcSample

# index of each counter in the per-process vector; the first TOTALS are also the per-app totals
(CPU_USER, CPU_SYSTEM, READ_BYTES, WRITTEN_BYTES, CANCELLED_BYTES, READ_OPS, WRITE_OPS, MINOR_FAULTS,
 MAJOR_FAULTS, VOLUNTARY, INVOLUNTARY, SWITCHES, REAPED_USER, REAPED_SYSTEM, REAPED_MINOR, REAPED_MAJOR) = range(16)
TOTALS = 12
IO_FIELDS = (READ_BYTES, WRITTEN_BYTES, CANCELLED_BYTES, READ_OPS, WRITE_OPS)
REAPED = (REAPED_USER, REAPED_SYSTEM, REAPED_MINOR, REAPED_MAJOR)
FOLDS_INTO = ((REAPED_USER, CPU_USER), (REAPED_SYSTEM, CPU_SYSTEM), (REAPED_MINOR, MINOR_FAULTS),
              (REAPED_MAJOR, MAJOR_FAULTS))
CREDIT_PASSES = 3  # a reap credit not used within this many passes is dropped
EPSILON = 1e-6

STATE_NAMES = {"R": "running", "S": "sleeping", "D": "disk_sleep", "T": "stopped", "t": "stopped",
               "Z": "zombie", "I": "idle"}
STATES = ("running", "sleeping", "disk_sleep", "stopped", "zombie", "idle")


def counters_of(sample: ProcSample) -> tuple[float | None, ...]:
    """The cumulative counters of one sample, in the order of the index constants."""
    return (sample.cpu_user_seconds, sample.cpu_system_seconds, sample.read_bytes, sample.written_bytes,
            sample.cancelled_write_bytes, sample.read_ops, sample.write_ops, sample.minor_faults,
            sample.major_faults, sample.voluntary_switches, sample.involuntary_switches, sample.context_switches,
            sample.reaped_cpu_user_seconds, sample.reaped_cpu_system_seconds, sample.reaped_minor_faults,
            sample.reaped_major_faults)


@dataclass(slots=True)
class _Credit:
    """What a parent's counters grow by when it reaps one child the tracker had seen."""

    values: list[float]  # indexed like the counter vector; only IO_FIELDS and REAPED are set
    passes: int = 0
    used: bool = False  # an orphan's credit sits with an ancestor and in the pool: used once


@dataclass(slots=True)
class _Proc:
    app: str
    ppid: int
    last: tuple[float | None, ...]
    credits: list[_Credit] | None = None
    io_pending: list[float] | None = None  # I/O credit of a matched reap still to come (read race)


@dataclass(slots=True)
class _App:
    totals: list[float | None] = field(default_factory=lambda: [None] * TOTALS)
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
        self._orphans: list[_Credit] = []  # credits of children whose parent was gone too
        self._gone_parents: dict[int, tuple[int, int]] = {}  # pid of a recently gone process -> (ppid, passes)

    def update(self, named: Iterable[tuple[ProcSample, str]], now: float,
               keep: frozenset[int] = frozenset()) -> TrackerUpdate:
        """Fold one pass of (sample, app name) pairs into the totals; `now` is a monotonic time.

        Processes whose pid is in `keep` were there but unreadable this pass: they are not gone,
        so they neither credit their parent nor count in full again when they are read next.
        """
        named = list(named)
        gone = self._settle_deaths(named, keep)
        self._add_deltas(named, now)
        views, known_state = _gauge_views(named)
        retired = self._retire(views, now)
        self._add_totals(views, known_state)
        self._age_credits()
        return TrackerUpdate(apps=views, gone=gone, retired=retired)

    def _settle_deaths(self, named: list[tuple[ProcSample, str]], keep: frozenset[int]) -> list[ProcessId]:
        """Deaths and credits: forget the processes that are gone, and hand each one's reap credit
        to its parent (or nearest live ancestor, and the orphan pool). Returns the gone ids."""
        procs = self._procs
        current = {sample.id for sample, _ in named}
        gone = [pid for pid in procs if pid not in current and pid.pid not in keep]
        if not gone:
            return gone
        live_by_pid = {pid.pid: pid for pid in current}
        gone_procs = [(pid, procs.pop(pid)) for pid in gone]
        for pid, child in gone_procs:
            self._gone_parents[pid.pid] = (child.ppid, 0)
        gone_parent = {pid: ppid for pid, (ppid, _) in self._gone_parents.items()}
        for _pid, child in gone_procs:
            credit = _credit_of(child.last, self.reaped_io_in_parent)
            if credit is None:
                continue
            ancestor, orphan, hops = child.ppid, False, 0
            while ancestor not in live_by_pid and ancestor in gone_parent and hops < 64:
                ancestor, orphan, hops = gone_parent[ancestor], True, hops + 1
            parent_id = live_by_pid.get(ancestor)
            parent = procs.get(parent_id) if parent_id is not None else None
            if parent is not None:
                if parent.credits is None:
                    parent.credits = []
                parent.credits.append(credit)
            if parent is None or orphan:
                self._orphans.append(credit)
        return gone

    def _add_deltas(self, named: list[tuple[ProcSample, str]], now: float) -> None:
        """Deltas: what each process added since the previous pass (all of it when new), less the
        reaps of children already counted, added to its app's totals; marks each app seen at `now`."""
        procs = self._procs
        apps = self._apps
        leftover: list[tuple[_Proc, _App, list[float]]] = []  # reaped growth no own credit explained
        for sample, app in named:
            now_values = counters_of(sample)
            proc = procs.get(sample.id)
            delta: list[float] | None
            if proc is None:
                delta = [v or 0.0 for v in now_values]
                proc = procs[sample.id] = _Proc(app=app, ppid=sample.ppid, last=now_values)
            elif now_values == proc.last and proc.app == app:
                delta = None  # an idle process: nothing to add
                proc.ppid = sample.ppid
                proc.io_pending = None  # the reaped I/O it waited for did not come: never take it from later I/O
            else:
                delta = _advance(proc, now_values, sample.ppid, app)
            state = apps.get(app)
            if state is None:
                state = apps[app] = _App()
            state.last_seen = now
            if delta is not None:
                if self._orphans and any(delta[i] > EPSILON for i in REAPED):
                    leftover.append((proc, state, list(delta)))
                for reaped, into in FOLDS_INTO:
                    delta[into] += delta[reaped]
                totals = state.totals
                for i in range(TOTALS):
                    if now_values[i] is not None or totals[i] is not None:
                        totals[i] = (totals[i] or 0.0) + delta[i]
        for proc, state, delta in leftover:  # after every process used its own credits
            self._use_pool(proc, state, delta)

    def _retire(self, views: dict[str, AppView], now: float) -> list[str]:
        """Retirement: drop the apps with no process in `views` for over `retention_seconds`."""
        apps = self._apps
        retired = [name for name, state in apps.items()
                   if name not in views and now - state.last_seen > self.retention_seconds]
        for name in retired:
            del apps[name]
        return retired

    def _add_totals(self, views: dict[str, AppView], known_state: set[str]) -> None:
        """Views: every app still tracked gets its counter totals (an app with no process, an empty view)."""
        for name, state in self._apps.items():
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
            view.cancelled_write_bytes_total = t[CANCELLED_BYTES]
            view.read_ops_total = t[READ_OPS]
            view.write_ops_total = t[WRITE_OPS]
            view.minor_faults_total = t[MINOR_FAULTS]
            view.major_faults_total = t[MAJOR_FAULTS]
            view.voluntary_switches_total = t[VOLUNTARY]
            view.involuntary_switches_total = t[INVOLUNTARY]
            view.switches_total = t[SWITCHES]

    def _use_pool(self, proc: _Proc, state: _App, delta: list[float]) -> None:
        """Take pooled orphan credits out of growth this pass already added to the app's totals."""
        self._orphans = [c for c in self._orphans if not c.used]
        if not self._orphans:
            return
        before = list(delta)
        _use_credits(proc, delta, self._orphans)
        totals = state.totals
        for i in (*IO_FIELDS, *REAPED):
            taken = before[i] - delta[i]
            if taken > 0:
                into = dict(FOLDS_INTO).get(i, i)
                totals[into] = max((totals[into] or 0.0) - taken, 0.0)

    def _age_credits(self) -> None:
        if self._gone_parents:
            self._gone_parents = {pid: (ppid, passes + 1) for pid, (ppid, passes) in self._gone_parents.items()
                                  if passes < CREDIT_PASSES}
        for proc in self._procs.values():
            if proc.credits:
                for credit in proc.credits:
                    credit.passes += 1
                proc.credits = [c for c in proc.credits if c.passes <= CREDIT_PASSES and not c.used] or None
        if self._orphans:
            for credit in self._orphans:
                credit.passes += 1
            self._orphans = [c for c in self._orphans if c.passes <= CREDIT_PASSES and not c.used]


def _advance(proc: _Proc, now_values: tuple[float | None, ...], ppid: int, app: str) -> list[float]:
    """The delta of a process seen before whose counters moved (or whose app changed).

    A counter that went down counts 0, one unread now counts 0 and keeps its last value; reaps
    of children already counted (the process's credits, and I/O still due from a matched reap)
    are taken out.
    """
    delta = [
        (now_v if prev_v is None else max(now_v - prev_v, 0.0)) if now_v is not None else 0.0
        for now_v, prev_v in zip(now_values, proc.last, strict=True)
    ]
    if proc.io_pending is not None:
        _use_io(proc.io_pending, delta)
        proc.io_pending = None
    if proc.credits:
        _use_credits(proc, delta, proc.credits)
        proc.credits = [c for c in proc.credits if not c.used] or None
    proc.last = tuple(now if now is not None else prev for now, prev in zip(now_values, proc.last, strict=True))
    proc.ppid = ppid
    proc.app = app
    return delta


def _gauge_views(named: list[tuple[ProcSample, str]]) -> tuple[dict[str, AppView], set[str]]:
    """Views: one `AppView` per app with a process this pass, its gauges summed over its processes.

    Returns the views (in the order their apps first appear) and the apps at least one of whose
    live processes had a readable state. A zombie counts only in `states`.
    """
    views: dict[str, AppView] = {}
    known_state: set[str] = set()
    for sample, app in named:
        view = views.get(app)
        if view is None:
            view = views[app] = AppView(name=app)
        state = sample.state
        state_name = STATE_NAMES.get(state)
        if state_name is not None:
            states = view.states
            if states is None:
                states = view.states = dict.fromkeys(STATES, 0)
            states[state_name] += 1
        if state == "Z":
            continue
        view.processes += 1
        if state != "?":  # "?": the state could not be read
            known_state.add(app)
        if sample.threads is not None:
            view.threads = (view.threads or 0) + sample.threads
        if sample.resident_bytes is not None:
            view.resident_bytes = (view.resident_bytes or 0) + sample.resident_bytes
        if sample.open_fds is not None:
            view.open_fds = (view.open_fds or 0) + sample.open_fds
            if sample.fd_limit:
                ratio = sample.open_fds / sample.fd_limit
                if view.open_fds_limit_ratio is None or ratio > view.open_fds_limit_ratio:
                    view.open_fds_limit_ratio = ratio
        if sample.virtual_bytes is not None:
            view.virtual_bytes = (view.virtual_bytes or 0) + sample.virtual_bytes
        if sample.swap_bytes is not None:
            view.swap_bytes = (view.swap_bytes or 0) + sample.swap_bytes
        if sample.proportional_bytes is not None:
            view.proportional_bytes = (view.proportional_bytes or 0) + sample.proportional_bytes
        if state == "D":
            view.disk_wait_processes = (view.disk_wait_processes or 0) + 1
        if view.oldest_start_time_seconds is None or sample.start_time_seconds < view.oldest_start_time_seconds:
            view.oldest_start_time_seconds = sample.start_time_seconds
            view.oldest_pid = sample.id.pid
    return views, known_state


def _credit_of(child: tuple[float | None, ...], with_io: bool) -> _Credit | None:
    """The credit a vanished child leaves; None when its platform has no reaped-children counters."""
    if child[REAPED_USER] is None and child[REAPED_MINOR] is None:
        return None  # no reaped-children counters (macOS): nothing of the child reappears in a parent
    values = [0.0] * len(child)
    if with_io:
        for i in IO_FIELDS:
            values[i] = child[i] or 0.0
    for reaped, own in FOLDS_INTO:
        reaped_value = child[reaped]
        if reaped_value is not None:  # a counter the parent has no reaped-children twin of never reappears
            values[reaped] = (child[own] or 0.0) + reaped_value
    return _Credit(values)


def _covers(growth_left: list[float], credit: _Credit) -> bool:
    """Whether the reaped-children growth left in this pass includes this child's reap."""
    values = credit.values
    if not any(values[i] > EPSILON for i in REAPED):
        return False  # a child with no CPU and no faults cannot be told apart from nothing
    return all(growth_left[k] + EPSILON >= values[i] for k, i in enumerate(REAPED))


def _use_credits(proc: _Proc, delta: list[float], pool: list[_Credit]) -> None:
    """Take the reaps of `pool`'s children seen in this pass's reaped-children growth out of `delta`."""
    growth = [delta[i] for i in REAPED]
    if not any(g > EPSILON for g in growth):
        return  # nothing was reaped: the parent's own I/O is all its own
    for credit in pool:
        if credit.used or not _covers(growth, credit):
            continue
        credit.used = True
        values = credit.values
        for k, i in enumerate(REAPED):
            used = min(values[i], delta[i])
            delta[i] -= used
            growth[k] -= used
        pending = [0.0] * len(values)
        for i in IO_FIELDS:
            used = min(values[i], delta[i])
            delta[i] -= used
            pending[i] = values[i] - used
        if any(pending[i] > EPSILON for i in IO_FIELDS):
            # the reap fell between the stat and io reads: the I/O shows up next pass
            if proc.io_pending is None:
                proc.io_pending = pending
            else:
                for i in IO_FIELDS:
                    proc.io_pending[i] += pending[i]


def _use_io(pending: list[float], delta: list[float]) -> None:
    for i in IO_FIELDS:
        delta[i] -= min(pending[i], delta[i])
