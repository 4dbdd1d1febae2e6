"""Which app each pid is, for the Linux crash watcher: the pid -> app map and how it is filled.

`PidApps` is the state: pid -> app for live and recently dead processes, thread id -> process
id, and identities read at exec but not yet named. `PidNames` fills it through the resolver
(`apps/resolver.py`) as the proc connector reports forks and execs, within a naming budget, and
answers what a crash or an exit needs: the app of a pid at exit, the `app` label of an exit,
the process of a thread id, the name of a process known only by its comm. It returns names,
never exposition; the crash source turns them into

    atlas_app_crashes_total{app="nginx",reason="SIGSEGV"} 1.0
    atlas_app_exits_total{app="other",outcome="success"} 120.0
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from atlas_exporter.apps.resolver import AppNaming, clean_name
from atlas_exporter.collectors.crash.readers_linux import read_comm, read_tgid
from atlas_exporter.model import ProcIdentity

log = logging.getLogger(__name__)

UNKNOWN_APP = "unknown"
OTHER_APP = "other"  # the label of what has no series of its own (the `max_apps` fold's too)
MAX_CAPTURED = 4096
CAPTURES_PER_NAME = 5  # over the naming budget, this many times as many execs are read (not named)


@runtime_checkable
class Capturing(Protocol):
    """A naming that can read a live process's identity now and name it later (the resolver)."""

    def capture(self, pid: int) -> ProcIdentity | None: ...

    def name_of_identity(self, ident: ProcIdentity) -> str: ...


@runtime_checkable
class ExportChecking(Protocol):
    """A naming that tells whether an app already has series, without giving it a slot."""

    def label_if_exported(self, name: str) -> str | None: ...


class TokenBucket:
    """At most `rate` takes per second on average, with bursts up to `rate` (full at the start)."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.clock = clock
        self._tokens = rate
        self._at = float("-inf")

    def take(self) -> bool:
        now = self.clock()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class PidApps:
    """pid -> app for live and recently dead processes, plus thread id -> thread group id.

    Dead entries are kept for `grace_seconds`, so a report that arrives after the
    process has gone (a core file, a kernel line) can still be attributed.
    """

    def __init__(self, grace_seconds: float = 120.0) -> None:
        self.grace_seconds = grace_seconds
        self._apps: dict[int, str] = {}
        self._threads: dict[int, int] = {}
        self._dead: dict[int, float] = {}
        # identities read at exec but not named (over the naming budget): named only if they crash
        self._captured: dict[int, ProcIdentity] = {}

    def learn(self, pid: int, app: str) -> None:
        self._apps[pid] = app
        self._dead.pop(pid, None)

    def tgid_known(self, tid: int) -> int | None:
        return self._threads.get(tid)

    def forget(self, pid: int) -> None:
        """The process changed (exec) and could not be named again: drop its old name."""
        self._apps.pop(pid, None)
        self._captured.pop(pid, None)
        self._dead.pop(pid, None)

    def capture(self, pid: int, ident: ProcIdentity) -> None:
        self._captured[pid] = ident
        if len(self._captured) > MAX_CAPTURED:  # exits lost in an overrun: the oldest go
            del self._captured[next(iter(self._captured))]

    def captured(self, pid: int) -> ProcIdentity | None:
        return self._captured.get(pid)

    def exited(self, pid: int) -> None:
        """A process exit was handled: what was captured for it is not needed any more."""
        self._captured.pop(pid, None)

    def learn_thread(self, tid: int, tgid: int) -> None:
        self._threads[tid] = tgid
        self._dead.pop(tid, None)

    def app(self, pid: int) -> str | None:
        return self._apps.get(pid)

    def tgid(self, tid: int) -> int:
        return self._threads.get(tid, tid)

    def pids(self) -> set[int]:
        """Processes believed alive."""
        return set(self._apps) - set(self._dead)

    def died(self, pid: int, now: float) -> None:
        if pid in self._apps or pid in self._threads:
            self._dead[pid] = now

    def prune(self, now: float) -> None:
        for pid in [p for p, t in self._dead.items() if now - t > self.grace_seconds]:
            del self._dead[pid]
            self._apps.pop(pid, None)
            self._threads.pop(pid, None)



class PidNames:
    """Names pids through the resolver for the crash watcher and keeps `pids` up to date.

    Naming at exec costs ~0.3 ms; in an exec storm the budget (`names_per_second`) runs out and
    the rest are named at exit (resolver cache, else the zombie's comm). Every naming failure is
    logged at debug level and treated as "not known": it must not stop the watcher.
    """

    def __init__(self, naming: AppNaming, pids: PidApps, *, procfs: Path, names_per_second: float,
                 monotonic: Callable[[], float]) -> None:
        self.naming = naming
        # optional capabilities, looked up once: an isinstance() on a Protocol costs microseconds
        self._capturing = naming if isinstance(naming, Capturing) else None
        self._label_if_exported = naming.label_if_exported if isinstance(naming, ExportChecking) else naming.export
        self.pids = pids
        self.procfs = procfs
        self.monotonic = monotonic
        self.last_rescan = float("-inf")
        self._names = TokenBucket(names_per_second, monotonic)
        self._captures = TokenBucket(CAPTURES_PER_NAME * names_per_second, monotonic)

    def resolve(self, pid: int, *, exec_: bool = False) -> str | None:
        try:
            return self.naming.app_after_exec(pid) if exec_ else self.naming.app_of_pid(pid)
        except Exception:  # a naming failure must not stop the watcher
            log.debug("naming pid %d failed", pid, exc_info=True)
            return None

    def forked(self, pid: int, parent_tgid: int) -> None:
        """A new process: the same program as its parent until it execs."""
        app = self.pids.app(parent_tgid)
        if app is None and self._names.take():
            app = self.resolve(pid)
        if app is not None:
            self.pids.learn(pid, app)

    def execed(self, pid: int) -> None:
        """A process ran a new program: the parent's name no longer applies, whether or not the
        new program can be named now."""
        self.pids.forget(pid)
        if not self._names.take():
            # an exec storm: keep what only the live process shows, name it if it crashes
            if self._captures.take():
                self._capture(pid)
            return
        app = self.resolve(pid, exec_=True)
        if app is not None:
            self.pids.learn(pid, app)

    def app_at_exit(self, pid: int, *, failed: bool) -> str:
        """The app of a process that just exited: named at its exec (or its parent's if it never
        exec'd), else what the zombie shows.

        Only a failure (a crash, an error code, a signal) is named now when the watcher never
        learned the process, else it takes its comm: exit storms spend none of the naming budget
        that exec events need.
        """
        app = self.pids.app(pid)
        if app is None and failed:
            captured = self.pids.captured(pid)
            app = self._name_captured(captured) if captured is not None else self.resolve(pid)
        return app or self.comm(pid)

    def _capture(self, pid: int) -> None:
        if self._capturing is None:
            return
        try:
            ident = self._capturing.capture(pid)
        except Exception:  # a failed read must not stop the watcher
            log.debug("capturing pid %d failed", pid, exc_info=True)
            return
        if ident is not None:
            self.pids.capture(pid, ident)

    def _name_captured(self, ident: ProcIdentity) -> str | None:
        if self._capturing is None:
            return None
        try:
            return self._capturing.name_of_identity(ident)
        except Exception:  # a naming failure must not stop the watcher
            log.debug("naming a captured identity failed", exc_info=True)
            return None

    def exit_label(self, app: str, outcome: str) -> str:
        """The `app` label of an exit.

        A failure (`error`, `signal`) gives the app a series of its own, taking a `max_apps` slot
        as a crash does. A successful exit is counted under its app only when the app already has
        a series (the process scan saw it, or it failed before); else under `other`, so that a
        host's many short-lived commands (sh, grep, sed) take no slots.
        """
        if outcome != "success":
            return self.naming.export(app)
        return self._label_if_exported(app) or OTHER_APP

    def app_of_cgroup(self, cgroup: str) -> str | None:
        try:
            return self.naming.app_of_cgroup(cgroup)
        except Exception:  # a naming failure must not stop the watcher
            log.debug("naming cgroup %s failed", cgroup, exc_info=True)
            return None

    def comm_bytes(self, pid: int) -> bytes | None:
        """The raw comm of a task (a thread id works too), None when it is gone or unreadable."""
        return read_comm(self.procfs, pid)

    def comm(self, pid: int) -> str:
        """The name of a process known only by its comm now, else `unknown` (through the resolver).

        Not folded: the exit or crash that asks decides whether it takes a slot.
        """
        raw = self.comm_bytes(pid) or UNKNOWN_APP
        try:
            return self.naming.name_for(raw)
        except Exception:  # a naming failure must not stop the watcher
            log.debug("naming comm %r failed", raw, exc_info=True)
            return clean_name(raw)

    def tgid(self, tid: int) -> int | None:
        """The process of a thread id: the fork or exit event's answer, else `/proc/<tid>/status`.

        None when neither knows (the thread is gone and no event named it).
        """
        known = self.pids.tgid_known(tid)
        if known is not None:
            return known
        tgid = read_tgid(self.procfs, tid)
        if tgid is not None and tgid != tid:
            self.pids.learn_thread(tid, tgid)
        return tgid

    def rescan(self) -> None:
        """Learn the app of every live pid (at start, and periodically without the connector).

        The resolver caches names per (pid, start time), so asking again is cheap and
        notices a reused pid. Known pids that are gone are marked dead.
        """
        try:
            entries = os.listdir(self.procfs)
        except OSError:
            return
        now = self.monotonic()
        live = set()
        for name in entries:
            if not name.isdigit():
                continue
            pid = int(name)
            live.add(pid)
            app = self.resolve(pid)
            if app is not None:
                self.pids.learn(pid, app)
        for pid in self.pids.pids() - live:
            self.pids.died(pid, now)
        self.last_rescan = now  # set once done: the first rescan's end is when every pid is known
