"""Linux crash watcher: the proc connector, systemd-coredump, apport and kernel log lines.

Emits (sub-collector `crash`):

    atlas_app_crashes_total{app="nginx",reason="SIGSEGV"} 1.0
    atlas_app_last_crash_timestamp_seconds{app="nginx"} 1.764118845e+09
    atlas_crash_source_active{source="proc_connector"} 1.0
    atlas_crash_reports_skipped_total{reason="malformed"} 0.0

Sources, best first; every one that works at start is used, and one crash seen by
several of them counts once (same pid within a time window):
- `proc_connector`: NETLINK_CONNECTOR / CN_IDX_PROC exit events with the wait status
  (root or CAP_NET_ADMIN). Exec and fork events keep pid -> app while processes live.
- `systemd_coredump`: new file names in /var/lib/systemd/coredump (any user may list).
- `apport`: new or rewritten `*.crash` files in /var/crash (names for anyone, headers
  when readable).
- `kernel_log`: `segfault at` / `traps:` lines, and the OOM killer's `Out of memory: Killed
  process N` / `oom-kill:...,pid=N` lines, in /dev/kmsg (CAP_SYSLOG when kernel.dmesg_restrict=1).
- `cgroup_oom`: the `oom_kill` count of each memory cgroup that holds one app's processes
  (`memory.events.local` / `memory.events` on v2, `memory.oom_control` on v1; anyone may read).
An OOM kill is `reason="oom_kill"`, counted once whichever of the last two sources saw it.

Every process exit the proc connector reports is also counted by outcome (only while the proc
connector runs, the one source that sees every exit):

    atlas_app_exits_total{app="etl",outcome="error"} 3.0

Where each part lives: the proc connector in `connector_linux.py`, the report folders in
`folders_linux.py`, cgroup OOM counters in `oom_linux.py`, the pure parsers in
`reports_linux.py`, their readers in `readers_linux.py`, the pid -> app map in `pids_linux.py`.
This module detects the sources, runs the watcher loop and the kernel log, and exposes the counts.

Every app name comes from the resolver (`apps/resolver.py`): an exec event is named at once
from the new program (whatever was cached for the pid before), a forked child keeps its
parent's name only until it execs, a process already reaped at exit time is named from what
was read at its exec, a zombie from its comm and cgroup, never from its parent. A kernel-log
line's thread id is mapped to its process (`Tgid` of `/proc/<tid>/status`, or the fork event),
so a crashing thread is one crash of its process. Report file names and log comms are named
through `name_for` (no slot), and a crash is folded into `other` (`max_apps`) only when counted.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from prometheus_client.metrics_core import Metric

from atlas_exporter.apps.crashes import (
    OOM_KILL,
    CrashBook,
    CrashEvent,
    crash_reason,
    decode_wait_status,
    exit_outcome,
)
from atlas_exporter.apps.resolver import AppNaming, as_naming
from atlas_exporter.collectors.crash.connector_linux import ProcConnector, ProcEvent, SequenceGaps
from atlas_exporter.collectors.crash.folders_linux import APPORT_DIR, COREDUMP_DIR, ReportFolders
from atlas_exporter.collectors.crash.metrics import crash_metric_families
from atlas_exporter.collectors.crash.oom_linux import CgroupOomWatcher, MemoryRoot
from atlas_exporter.collectors.crash.pids_linux import OTHER_APP, PidApps, PidNames
from atlas_exporter.collectors.crash.readers_linux import open_kmsg, read_kmsg
from atlas_exporter.collectors.crash.reports_linux import (
    AmbiguousLine,
    KernelCrash,
    kmsg_escape,
    kmsg_unescape,
    parse_core_pattern,
    parse_kmsg_record,
)
from atlas_exporter.collectors.process.parsers_linux import CAP_NET_ADMIN, parse_capabilities, privilege_of
from atlas_exporter.config import Config
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.model import AppOfPid, Snapshot, Source, SourceStatus

log = logging.getLogger(__name__)

SOURCE_NAMES = ("proc_connector", "systemd_coredump", "apport", "kernel_log", "cgroup_oom")
# No `too_large` here: an apport report is never skipped for its size, only its head is read.
# `ambiguous`: a kernel crash line whose comm and pid can be read two ways; `comm_mismatch`: a
# kernel crash line whose pid is alive under another comm; `untrusted_owner`: a report file
# owned by neither root nor the user its process ran as; `lost_events`: proc connector events
# the kernel dropped (counted from gaps in its per-CPU sequence numbers).
SKIP_REASONS = ("malformed", "unreadable", "lost_events", "ambiguous", "comm_mismatch", "untrusted_owner")
KMSG = Path("/dev/kmsg")
KMSG_WAIT_SECONDS = 1.0  # how long a gone thread's kernel-log crash waits for its exit event
MAX_KMSG_WAITING = 1024


class LinuxCrashSource:
    """The `crash` sub-collector on Linux: a watcher loop plus per-app crash counters."""

    name = "crash"

    def __init__(
        self,
        naming: AppNaming | AppOfPid,
        *,
        procfs: Path = Path("/proc"),
        coredump_dir: Path = COREDUMP_DIR,
        report_dirs: Iterable[Path] = (APPORT_DIR,),
        kmsg: Path = KMSG,
        use_connector: bool = True,
        cgroup_roots: list[MemoryRoot] | None = None,
        poll_interval_seconds: float = 2.0,
        rescan_interval_seconds: float = 10.0,
        dedup_window_seconds: float = 30.0,
        names_per_second: float = 200.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.naming = as_naming(naming)
        self.procfs = procfs
        self.kmsg_path = kmsg
        self.use_connector = use_connector
        self.poll_interval_seconds = poll_interval_seconds
        self.rescan_interval_seconds = rescan_interval_seconds
        self.clock = clock
        self.monotonic = monotonic
        self.book = CrashBook(window_seconds=dedup_window_seconds)
        self.pids = PidApps()
        self.names = PidNames(self.naming, self.pids, procfs=procfs, names_per_second=names_per_second,
                              monotonic=monotonic)
        self.folders = ReportFolders(self.naming, self.pids, self._skip, coredump_dir=coredump_dir,
                                     report_dirs=report_dirs)
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.overruns = 0  # ENOBUFS from the proc connector socket (each one loses one or more events)
        self._gaps = SequenceGaps()
        self.handler = "unknown"
        self._status: dict[str, SourceStatus] = {}
        self._connector: ProcConnector | None = None
        self._kmsg_fd: int | None = None
        self._cgroup_roots = cgroup_roots
        self._oom: CgroupOomWatcher | None = None
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1
        # kernel-log crashes of threads already gone, waiting for the exit events that map them
        self._kmsg_waiting: list[tuple[float, KernelCrash]] = []
        self._last_poll = float("-inf")
        self._rescanned = False
        # select() blocks in each step; after a failed step the loop pauses one poll interval
        self._loop = BackgroundLoop("atlas-crash-watcher", self._step, interval=0.0, log=log, immediate=True,
                                    error_pause=poll_interval_seconds)
        self.loops: Sequence[BackgroundLoop] = (self._loop,)
        self._started = False

    # -- lifecycle

    def start(self) -> None:
        """Detect every source, take a baseline of existing reports, start the watcher loop."""
        if self._started:
            return
        self._detect()
        self._wake_r, self._wake_w = os.pipe()
        self._started = True
        self._rescanned = False
        self._loop.error_pause = self.poll_interval_seconds
        self._loop.start()

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._loop.stopping.set()
        try:
            os.write(self._wake_w, b"x")  # wakes the step out of select()
        except OSError:
            pass
        self._loop.stop(timeout=10)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._connector is not None:
            self._connector.close()
            self._connector = None
        if self._kmsg_fd is not None:
            os.close(self._kmsg_fd)
            self._kmsg_fd = None

    def _detect(self) -> None:
        try:
            self.handler = parse_core_pattern((self.procfs / "sys/kernel/core_pattern").read_text())
        except OSError:
            self.handler = "unknown"
        try:
            self_status = (self.procfs / "self" / "status").read_text()
        except OSError:
            self_status = ""
        try:
            capabilities = parse_capabilities(self_status)
        except (IndexError, ValueError):
            self_status, capabilities = "", 0
        privilege = privilege_of(self_status, os.geteuid())  # the words the process sources use
        status: dict[str, SourceStatus] = {}

        reason = ""
        if not self.use_connector:
            reason = "disabled"
        elif not capabilities & (1 << CAP_NET_ADMIN):
            reason = "the proc connector needs root or CAP_NET_ADMIN"
        else:
            try:
                self._connector = ProcConnector()
            except OSError as err:
                reason = f"cannot subscribe to the proc connector: {err.strerror or err}"
        status["proc_connector"] = SourceStatus("proc_connector", self._connector is not None,
                                                privilege if self._connector else "none", reason)

        status["systemd_coredump"], status["apport"] = self.folders.detect(privilege, self.handler)

        reason = ""
        try:
            self._kmsg_fd = open_kmsg(self.kmsg_path)
        except PermissionError:
            reason = f"reading {self.kmsg_path} needs CAP_SYSLOG (kernel.dmesg_restrict=1)"
        except OSError as err:
            reason = f"cannot read {self.kmsg_path}: {err.strerror or err}"
        status["kernel_log"] = SourceStatus("kernel_log", self._kmsg_fd is not None,
                                            privilege if self._kmsg_fd is not None else "none", reason)

        oom = CgroupOomWatcher(self.names.resolve, procfs=self.procfs, roots=self._cgroup_roots,
                               clock=self.monotonic, app_of_cgroup=self.names.app_of_cgroup)
        reason = ""
        if not oom.available:
            reason = "no memory cgroup hierarchy is mounted"
        else:
            try:
                oom.poll()  # the baseline: kills before the start are not counted
                self._oom = oom
            except OSError as err:
                reason = f"cannot read the memory cgroups: {err.strerror or err}"
        status["cgroup_oom"] = SourceStatus("cgroup_oom", self._oom is not None,
                                            privilege if self._oom is not None else "none", reason)
        self._status = status
        for item in status.values():
            if item.active:
                log.info("crash source %s active", item.name)
            else:
                log.info("crash source %s inactive: %s", item.name, item.reason)

    # -- the watcher loop

    def _step(self) -> None:
        """One pass: wait for events (or the poll interval), handle them, poll folders and cgroups."""
        if not self._rescanned:
            self._rescanned = True
            self.names.rescan()
        fds = [self._wake_r]
        if self._connector is not None:
            fds.append(self._connector.fileno())
        if self._kmsg_fd is not None:
            fds.append(self._kmsg_fd)
        timeout = KMSG_WAIT_SECONDS / 4 if self._kmsg_waiting else self.poll_interval_seconds
        ready, _, _ = select.select(fds, [], [], timeout)
        if self._loop.stopping.is_set():
            return
        if self._connector is not None and self._connector.fileno() in ready:
            # no batching delay: an exec must be named before a short-lived program is gone
            self._drain_connector()
        if self._kmsg_fd is not None and self._kmsg_fd in ready:
            for record in read_kmsg(self._kmsg_fd):
                self._on_kmsg(record)
        if self._kmsg_waiting:
            self._count_waiting_kmsg()
        now_mono = self.monotonic()
        if not ready or now_mono - self._last_poll >= self.poll_interval_seconds:
            self._last_poll = now_mono
            for event in self.folders.poll():
                self._record(event)
            self._poll_cgroups()
            if self._connector is None and now_mono - self.names.last_rescan >= self.rescan_interval_seconds:
                self.names.rescan()
            self.pids.prune(now_mono)

    def _drain_connector(self) -> None:
        assert self._connector is not None
        for _ in range(4096):
            try:
                events = self._connector.read()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # an overrun; the sequence gaps say how many events
                    self.overruns += 1
                    log.warning("proc connector overrun: the kernel dropped process events (read too slowly)")
                    continue
                raise
            except ValueError:
                self._skip("malformed")
                continue
            for event in events:
                if event.what != "none":
                    lost = self._gaps.see(event.cpu, event.seq)
                    if lost:
                        self._skip("lost_events", lost)
                self._on_proc_event(event)

    def _on_proc_event(self, event: ProcEvent) -> None:
        if event.what == "fork":
            if event.pid != event.tgid:
                self.pids.learn_thread(event.pid, event.tgid)
                return
            self.names.forked(event.pid, event.parent_tgid)
        elif event.what == "exec":
            if event.pid != event.tgid:
                return
            self.names.execed(event.pid)
        elif event.what == "exit":
            self._on_exit(event)

    def _on_exit(self, event: ProcEvent) -> None:
        now = self.monotonic()
        if event.pid != event.tgid:  # a thread, not the process
            # its process is known now, even for a thread made before the watcher started: a
            # kernel-log line about the thread, read after it is gone, still counts for the process
            self.pids.learn_thread(event.pid, event.tgid)
            self.pids.died(event.pid, now)
            return
        status = decode_wait_status(event.exit_code)
        reason = crash_reason(status)
        outcome = exit_outcome(status)
        if reason is None and outcome == "success":
            # the common case, kept cheap for exit storms: the app it was learned under, if it
            # has series; a process never learned (an exec storm over the naming budget) is other
            known = self.pids.app(event.pid)
            self.book.record_exit(self.names.exit_label(known, outcome) if known is not None else OTHER_APP, outcome)
        elif reason is not None or outcome is not None:
            app = self.names.app_at_exit(event.pid, failed=True)
            if outcome is not None:
                self.book.record_exit(self.names.exit_label(app, outcome), outcome)
            if reason is not None:
                when = self.clock() - max(0.0, now - event.timestamp_ns / 1e9)
                self._record(CrashEvent(source="proc_connector", time=when, reason=reason, app=app, pid=event.pid))
        self.pids.exited(event.pid)
        self.pids.died(event.pid, now)

    def _poll_cgroups(self) -> None:
        if self._oom is None:
            return
        now = self.clock()
        for app, kills in self._oom.poll():
            for _ in range(kills):
                self._record(CrashEvent(source="cgroup_oom", time=now, reason=OOM_KILL, app=app))

    # -- the kernel log

    def _on_kmsg(self, record: str) -> None:
        try:
            crash = parse_kmsg_record(record)
        except AmbiguousLine as err:
            self._skip("ambiguous")
            log.info("kernel log crash line not counted: %s", err)
            return
        if crash is None:
            return
        # the kernel names the faulting thread: while it still exists, its comm must be the one
        # the line shows, or the line is not about the process that now has this pid
        live_comm = self.names.comm_bytes(crash.pid)
        if live_comm is not None and kmsg_escape(live_comm) != crash.comm:
            self._skip("comm_mismatch")
            log.info("kernel log crash line not counted: pid %d is %r now, the line says %r",
                     crash.pid, live_comm, crash.comm)
            return
        pid = self.names.tgid(crash.pid)  # a thread's line counts for its process
        if pid is None and self._connector is not None and len(self._kmsg_waiting) < MAX_KMSG_WAITING:
            # gone already: the exit events of its threads, read next, will say whose thread it was
            self._kmsg_waiting.append((self.monotonic() + KMSG_WAIT_SECONDS, crash))
            return
        self._count_kmsg(crash, pid if pid is not None else crash.pid)

    def _count_waiting_kmsg(self) -> None:
        now = self.monotonic()
        waiting, self._kmsg_waiting = self._kmsg_waiting, []
        for deadline, crash in waiting:
            pid = self.pids.tgid_known(crash.pid)
            if pid is not None or now >= deadline:
                self._count_kmsg(crash, pid if pid is not None else crash.pid)
            else:
                self._kmsg_waiting.append((deadline, crash))

    def _count_kmsg(self, crash: KernelCrash, pid: int) -> None:
        app = self.pids.app(pid) or self.names.resolve(pid) or self.naming.name_for(kmsg_unescape(crash.comm))
        when = self.clock() - max(0.0, self.monotonic() - crash.monotonic_seconds)
        self._record(CrashEvent(source="kernel_log", time=when, reason=crash.reason, app=app, pid=pid,
                                comm=kmsg_unescape(crash.comm)))

    # -- counting and reporting

    def _record(self, event: CrashEvent) -> None:
        # a counted crash gets a series: only then does its app take a `max_apps` slot
        counted = self.book.record_crash(event, self.naming.export)
        log.log(logging.INFO if counted else logging.DEBUG, "crash %s: app=%s pid=%s reason=%s (%s)",
                "counted" if counted else "duplicate", event.app, event.pid, event.reason, event.source)

    def _skip(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    def retire(self, apps: Iterable[str]) -> None:
        """Drop the crash and exit counts of apps the scan retired, with their process series."""
        self.book.retire(apps)

    def statuses(self) -> list[SourceStatus]:
        if not self._status:
            return [SourceStatus(name, False, "none", "not started") for name in SOURCE_NAMES]
        return [self._status[name] for name in SOURCE_NAMES]

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        with self._lock:
            skipped = dict(self.skipped)
        return crash_metric_families(self.book, self.statuses(), skipped, exits_active=self._connector is not None)


def make_crash_source(config: Config, procfs: Path, naming: AppNaming) -> Source | None:
    """The Linux `crash` sub-collector; extra `crash.report_dirs` are watched like /var/crash."""
    dirs = [APPORT_DIR, *(Path(os.path.expanduser(d)) for d in config.crash.report_dirs)]
    return LinuxCrashSource(naming, procfs=procfs, report_dirs=dirs)
