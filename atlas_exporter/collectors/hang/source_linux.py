"""Linux hang watcher: threads stuck in D state without making progress.

Emits (sub-collector `hang`):

    atlas_app_hung_processes{app="backup"} 1.0
    atlas_app_hangs_total{app="backup"} 3.0

Every `hang.check_interval_seconds` a background loop (`BackgroundLoop`) reads `/proc/<pid>/task/<tid>/stat`
of every task and, for tasks in D, their context-switch counts from `.../status`. A task
is hung once it has stayed in D with an unchanged count for `hang.threshold_seconds`
(the rule of the kernel's hung-task detector); a process is hung while any of its threads
is. An I/O-heavy process passes through D but keeps switching, so it is never hung.
Kernel threads (PF_KTHREAD) are left out, and only they: inside a pid namespace (a container)
pid 2 and its children are ordinary processes and are watched like any other. Nothing is
emitted while the task scan is inactive: a hang count nobody can measure is absent, not 0.

`/proc/stat` `procs_blocked` is not used as a shortcut: it counts only tasks waiting in
io_schedule (nr_iowait), and a vfork parent or a task blocked on a lock shows 0 there.
`parse_task_stat` and `parse_switches` are pure. App names come from the resolver; a hung
process takes a `max_apps` slot only once its hang is counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics_core import Metric

from atlas_exporter.apps.crashes import CrashBook, HangTracker, HangUpdate, TaskObservation
from atlas_exporter.apps.resolver import AppNaming, as_naming
from atlas_exporter.collectors.hang.metrics import HANGS, HUNG_PROCESSES
from atlas_exporter.collectors.process.parsers_linux import PF_KTHREAD, split_stat
from atlas_exporter.collectors.process.readers_linux import current_privilege, read_proc_file
from atlas_exporter.config import Config
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.model import AppOfPid, Looping, Retiring, Snapshot, Source, SourceStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TaskStat:
    """The fields of a task's `stat` that hang detection needs."""

    comm: str
    state: str
    ppid: int
    flags: int
    starttime: int
    num_threads: int = 1


def parse_task_stat(data: bytes) -> TaskStat:
    """Parse `/proc/<pid>/task/<tid>/stat` (or a process's `stat`)."""
    comm, fields = split_stat(data)
    return TaskStat(comm=comm.decode("utf-8", "replace"), state=fields[0].decode("ascii", "replace"),
                    ppid=int(fields[1]), flags=int(fields[6]), starttime=int(fields[19]),
                    num_threads=int(fields[17]))


def parse_switches(text: bytes) -> int:
    """voluntary + nonvoluntary context switches from a task's `status`."""
    total = 0
    seen = 0
    for line in text.splitlines():
        if line.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")):
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"status: bad line {line[:40]!r}")
            total += int(fields[1])
            seen += 1
    if seen != 2:
        raise ValueError("status: no context-switch counts")
    return total


def is_kernel_thread(stat: TaskStat) -> bool:
    """PF_KTHREAD alone says so: pid and parent pid 2 are ordinary processes inside a pid namespace."""
    return bool(stat.flags & PF_KTHREAD)


@dataclass(frozen=True, slots=True)
class BlockedScan:
    """One pass over every task: the tasks in D with their counts, and process names."""

    blocked: list[TaskObservation]
    comms: dict[tuple[int, int], str]
    tasks: int
    errors: int


def scan_blocked_tasks(procfs: Path) -> BlockedScan:
    """Read every user task's state; return those in D with their context-switch counts."""
    root = str(procfs)
    blocked: list[TaskObservation] = []
    comms: dict[tuple[int, int], str] = {}
    tasks = errors = 0
    try:
        pids = [name for name in os.listdir(root) if name.isdigit()]
    except OSError:
        return BlockedScan(blocked, comms, 0, 1)
    for name in pids:
        pid = int(name)
        base = f"{root}/{name}/task"
        # The process's own stat is enough for kernel threads (skipped) and for single-threaded
        # processes (its state is the only thread's); only others need their task folder listed.
        try:
            leader = parse_task_stat(read_proc_file(f"{root}/{name}/stat"))
        except (OSError, ValueError):
            continue  # vanished
        if is_kernel_thread(leader):
            continue
        stats: dict[int, TaskStat] = {}
        if leader.num_threads == 1:
            stats[pid] = leader
        else:
            try:
                tids = os.listdir(base)
            except OSError:
                continue  # vanished
            for tid_name in tids:
                try:
                    stats[int(tid_name)] = parse_task_stat(read_proc_file(f"{base}/{tid_name}/stat"))
                except (OSError, ValueError):
                    continue
            leader = stats.get(pid, leader)
        tasks += len(stats)
        process = (pid, leader.starttime)
        for tid, stat in stats.items():
            if stat.state != "D":
                continue
            try:
                switches = parse_switches(read_proc_file(f"{base}/{tid}/status"))
            except OSError:
                continue
            except ValueError:
                errors += 1
                continue
            blocked.append(TaskObservation(process=process, task=(tid, stat.starttime), switches=switches))
            comms[process] = leader.comm
    return BlockedScan(blocked, comms, tasks, errors)


class LinuxHangSource(Retiring, Looping):
    """The `hang` sub-collector on Linux: a background loop that checks, plus per-app hang series."""

    name = "hang"

    def __init__(
        self,
        naming: AppNaming | AppOfPid,
        *,
        procfs: Path = Path("/proc"),
        threshold_seconds: float = 30.0,
        check_interval_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        scan: Callable[[Path], BlockedScan] = scan_blocked_tasks,
    ) -> None:
        self.naming = as_naming(naming)
        self.procfs = procfs
        self.threshold_seconds = threshold_seconds
        self.check_interval_seconds = check_interval_seconds
        self.clock = clock
        self.scan = scan
        self.tracker = HangTracker(threshold_seconds)
        self.book = CrashBook()
        self._apps: dict[tuple[int, int], str] = {}
        self._hung_by_app: dict[str, int] = {}
        self._lock = threading.Lock()
        self._status = SourceStatus("hang_task_scan", False, "none", "not started")
        # one check at once, then one every interval; a failed check is logged and the next one runs
        self._loop = BackgroundLoop("atlas-hang-watcher", self.check, interval=lambda: self.check_interval_seconds,
                                    log=log, immediate=True)
        self.loops: Sequence[BackgroundLoop] = (self._loop,)

    def start(self) -> None:
        if self._loop.running:
            return
        if not (self.procfs / "self" / "task").is_dir():
            self._status = SourceStatus("hang_task_scan", False, "none", f"{self.procfs} has no task folders")
            return
        self._status = SourceStatus("hang_task_scan", True, current_privilege(self.procfs), "")
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=10)

    def _app(self, process: tuple[int, int], comms: dict[tuple[int, int], str]) -> str:
        app = self._apps.get(process)
        if app is None:
            try:
                app = self.naming.app_of_pid(process[0])
                if app is None:  # gone since the scan: the comm it had then (no slot until it is hung)
                    app = self.naming.name_for(comms.get(process) or "unknown")
            except Exception:  # a naming failure must not stop the watcher
                log.debug("naming pid %d failed", process[0], exc_info=True)
                app = "unknown"
            self._apps[process] = app
        return app

    def check(self) -> HangUpdate:
        """One pass: scan, apply the threshold rule, count the episodes that started."""
        result = self.scan(self.procfs)
        update = self.tracker.update(self.clock(), result.blocked)
        watched = {obs.process for obs in result.blocked}
        for process in watched:
            self._app(process, result.comms)
        for process in update.hung:  # a hung process has series from now on: it takes a slot
            self._apps[process] = self.naming.export(self._apps[process])
        for process in update.started:
            app = self._apps[process]
            self.book.record_hang(app)
            log.warning("process %d (%s) hung: blocked in D for over %gs", process[0], app, self.threshold_seconds)
        for process in update.ended:
            log.info("process %d resumed", process[0])
        hung_by_app: dict[str, int] = {}
        for process in update.hung:
            app = self._apps[process]
            hung_by_app[app] = hung_by_app.get(app, 0) + 1
        self._apps = {p: a for p, a in self._apps.items() if p in watched}
        with self._lock:
            self._hung_by_app = hung_by_app
        return update

    def retire(self, apps: Iterable[str]) -> None:
        """Drop the hang counts of apps the scan retired, with their process series."""
        self.book.retire(apps)

    def statuses(self) -> list[SourceStatus]:
        return [self._status]

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        if not self._status.active:
            return []
        with self._lock:
            hung = dict(self._hung_by_app)
        totals = self.book.hangs()
        gauge = HUNG_PROCESSES.family()
        for app in sorted(set(snapshot.apps) | set(hung)):
            gauge.add_metric([app], hung.get(app, 0))
        counter = HANGS.family()
        for app in sorted(set(snapshot.apps) | set(totals)):
            counter.add_metric([app], totals.get(app, 0))
        return [gauge, counter]


def make_hang_source(config: Config, procfs: Path, naming: AppNaming) -> Source | None:
    """The Linux `hang` sub-collector with `hang.threshold_seconds` and `hang.check_interval_seconds`."""
    return LinuxHangSource(naming, procfs=procfs, threshold_seconds=config.hang.threshold_seconds,
                           check_interval_seconds=config.hang.check_interval_seconds)
