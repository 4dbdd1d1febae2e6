"""macOS process table reader: sysctl (through psutil) for every process, libproc for the rest.

Returns `ProcessScan`s of `ProcSample`s and `ProcIdentity`s for naming, like the Linux
source. Per process and pass it reads:

- `kinfo_proc` (sysctl, any process): ppid, BSD status, start time;
- `proc_pidinfo(PROC_PIDTASKINFO)` (same uid or root): CPU user/system, resident bytes,
  threads, running threads;
- `proc_pid_rusage(RUSAGE_INFO_V2+)` (same uid or root): physical footprint (kept in the
  sample, not exported), `ri_diskio_bytesread` / `ri_diskio_byteswritten`, and the CPU of reaped children
  (`ri_child_user_time` / `ri_child_system_time`);
- `proc_pidinfo(PROC_PIDLISTFDS)` (same uid or root): open descriptors.

CPU times arrive in Mach ticks and are converted with the timebase (24 MHz on Apple
silicon). Values of another user's process that need the same uid are None and the
process is counted once in `ReadErrors.access_denied`; its state and start time are still
read. `read_ops` / `write_ops` are always None: macOS has no per-process read/write system
call counts. `ProcessId.started` is the kernel's start time in microseconds since the
epoch, as recorded (a later wall-clock step does not change it).

A process whose `kinfo_proc` cannot be read (other than because it exited) is left out of
the pass and its pid is listed in `ProcessScan.skipped`, so the tracker keeps it. A
failure to list the processes at all raises, so the pass fails instead of looking empty.

States, as Linux letters: "Z" zombie, "T" stopped, "R" when a thread is running, "D" when
no thread runs and one is in uninterruptible wait (ps shows "U"), else "S". When the
task info cannot be read (another user's process, without root) the state is "?",
unknown: the BSD status alone cannot tell running, sleeping and disk wait apart (macOS
keeps it at SRUN while a process lives). Zombie and stopped come from the BSD status and
are always known.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from atlas_exporter.collectors.process.bundles_darwin import BundleNamer, shared_bundle_namer
from atlas_exporter.collectors.process.libproc_darwin import (
    APPLE_SILICON_TICKS_PER_SECOND,
    NANOSECOND_TICKS_PER_SECOND,
    TH_STATE_RUNNING,
    TH_STATE_UNINTERRUPTIBLE,
    AccessDenied,
    LibProc,
    ProcessGone,
    Rusage,
    TaskInfo,
    Timebase,
    pick_ticks_per_second,
)
from atlas_exporter.model import (
    ProcessId,
    ProcessScan,
    ProcessSource,
    ProcIdentity,
    ProcSample,
    ReadErrors,
    SourceStatus,
)

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

KERNEL_TASK_PID = 0


@dataclass(frozen=True, slots=True)
class KInfo:
    """What sysctl `kinfo_proc` gives for any process: status is psutil's word for p_stat.

    `started_us` is the kernel's start time as it was recorded (microseconds since the
    epoch), which never changes for a process, so it identifies it; `start_time` is the
    same instant corrected for later wall-clock steps, for display.
    """

    ppid: int
    uid: int
    status: str  # "running", "sleeping", "stopped", "zombie", "idle"
    started_us: int
    start_time: float
    comm: str | None = None  # p_comm, at most 16 bytes


class ProcessTable(Protocol):
    """The sysctl side (psutil on a Mac): readable for every process."""

    def pids(self) -> list[int]: ...

    def kinfo(self, pid: int) -> KInfo: ...

    def name(self, pid: int) -> str: ...

    def cmdline(self, pid: int) -> tuple[str, ...]: ...


@runtime_checkable
class CwdReading(Protocol):
    """A process table that also reads a process's working folder (psutil's does; test tables may not)."""

    def cwd(self, pid: int) -> str | None: ...


class LibProcLayer(Protocol):
    """The libproc side (`libproc_darwin.LibProc`): same uid or root, except `pid_path`."""

    def task_info(self, pid: int) -> TaskInfo: ...

    def rusage(self, pid: int) -> Rusage: ...

    def fd_count(self, pid: int) -> int: ...

    def thread_states(self, pid: int, threads: int) -> list[int]: ...

    def pid_path(self, pid: int) -> str: ...

    def timebase(self) -> Timebase: ...


class PsutilTable:
    """`ProcessTable` over psutil, translating its errors to `ProcessGone` / `AccessDenied`."""

    def __init__(self, darwin: bool = sys.platform == "darwin") -> None:
        import psutil

        self._psutil = psutil
        self._darwin = darwin

    def _process(self, pid: int) -> psutil.Process:
        try:
            return self._psutil.Process(pid)
        except self._psutil.NoSuchProcess:
            raise ProcessGone(f"pid {pid}") from None
        except self._psutil.AccessDenied:
            raise AccessDenied(f"pid {pid}") from None

    def pids(self) -> list[int]:
        return self._psutil.pids()

    def kinfo(self, pid: int) -> KInfo:
        proc = self._process(pid)
        try:
            with proc.oneshot():
                start_time = proc.create_time()
                raw_start, comm = raw_kinfo(proc, start_time) if self._darwin else (start_time, None)
                return KInfo(ppid=proc.ppid(), uid=proc.uids().real, status=proc.status(),
                             started_us=round(raw_start * 1_000_000), start_time=start_time, comm=comm)
        except self._psutil.NoSuchProcess:
            raise ProcessGone(f"pid {pid}") from None
        except self._psutil.AccessDenied:
            raise AccessDenied(f"pid {pid}") from None

    def name(self, pid: int) -> str:
        try:
            return self._process(pid).name()
        except self._psutil.NoSuchProcess:
            raise ProcessGone(f"pid {pid}") from None
        except self._psutil.AccessDenied:
            raise AccessDenied(f"pid {pid}") from None

    def cmdline(self, pid: int) -> tuple[str, ...]:
        try:
            return tuple(self._process(pid).cmdline())
        except self._psutil.ZombieProcess:
            return ()
        except self._psutil.NoSuchProcess:
            raise ProcessGone(f"pid {pid}") from None
        except self._psutil.AccessDenied:
            raise AccessDenied(f"pid {pid}") from None

    def cwd(self, pid: int) -> str | None:
        """The working folder (same user or root), for naming scripts started by a relative path."""
        try:
            return self._process(pid).cwd() or None
        except (ProcessGone, AccessDenied, self._psutil.Error, OSError):
            return None


def raw_kinfo(proc: object, start_time: float) -> tuple[float, str | None]:
    """The unadjusted start time and p_comm from psutil's platform object (one cached sysctl).

    psutil >= 7.1 shifts `create_time()` after a wall-clock step; the raw value is what it
    uses itself to tell processes apart. Older psutil has no `monotonic` argument and never
    shifts. On Linux the raw value counts from boot instead of the epoch.
    """
    impl = getattr(proc, "_proc", None)
    if impl is None:
        return start_time, None
    try:
        raw = impl.create_time(monotonic=True)
    except TypeError:
        raw = start_time
    try:
        comm = impl.name()
    except Exception:  # noqa: BLE001 - a private psutil call: any failure just leaves comm out
        comm = None
    return raw, comm if isinstance(comm, str) else None


UNKNOWN_STATE = "?"


def _minor(task: TaskInfo | None) -> int | None:
    """Faults served without reading storage: all faults less page-ins."""
    if task is None or task.faults is None or task.pageins is None:
        return None
    return max(task.faults - task.pageins, 0)


def state_letter(status: str, task: TaskInfo | None, thread_states: list[int] | None, *,
                 threads_unreadable: bool = False) -> str:
    """A Linux-like state letter from the BSD status and, when readable, the task and its threads.

    "Z" and "T" come from the BSD status alone. Anything else needs the task info (`task`
    None: unreadable, so "?"), and telling "D" from "S" needs the threads' run states
    (`threads_unreadable`: they were wanted but could not be read, so "?" too).
    """
    if status == "zombie":
        return "Z"
    if status == "stopped":
        return "T"
    if task is None:
        return UNKNOWN_STATE
    if task.running_threads > 0:
        return "R"
    if thread_states:
        if TH_STATE_RUNNING in thread_states:
            return "R"
        if TH_STATE_UNINTERRUPTIBLE in thread_states:
            return "D"
    return UNKNOWN_STATE if threads_unreadable else "S"


def calibrate_timebase(libproc: LibProcLayer, reported: Timebase, *, pid: int | None = None,
                       process_time: Callable[[], float] = time.process_time, burn_seconds: float = 0.05,
                       ) -> Timebase:
    """Check the reported timebase against our own CPU time and correct it when it is off.

    Burns about `burn_seconds` of CPU, compares the task-info tick delta of this process
    with `process_time()`; keeps `reported` unless 24 MHz or 1 GHz fits clearly better.
    """
    pid = os.getpid() if pid is None else pid
    try:
        before = libproc.task_info(pid)
        start = process_time()
        spent = 0.0
        while spent < burn_seconds:
            sum(i * i for i in range(2000))
            spent = process_time() - start
        after = libproc.task_info(pid)
    except (ProcessGone, AccessDenied, OSError) as err:
        log.debug("timebase check skipped: %s", err)
        return reported
    ticks = (after.user_ticks + after.system_ticks) - (before.user_ticks + before.system_ticks)
    rate = pick_ticks_per_second(ticks, spent, [reported.ticks_per_second])
    if rate is not None:
        return reported
    rate = pick_ticks_per_second(ticks, spent, [APPLE_SILICON_TICKS_PER_SECOND, NANOSECOND_TICKS_PER_SECOND])
    if rate is None:
        log.warning("CPU timebase check inconclusive (%d ticks for %.3f s CPU); keeping %.0f ticks/s",
                    ticks, spent, reported.ticks_per_second)
        return reported
    log.warning("CPU timebase reported %.0f ticks/s but measured %.0f ticks/s; using the measured rate",
                reported.ticks_per_second, rate)
    return Timebase(rate)


class DarwinProcessSource(ProcessSource):
    """Reads the macOS process table through an injected sysctl table and libproc layer.

    `thread_states` reads each thread's run state of processes with no running thread, to
    tell uninterruptible wait ("D") from sleep; it costs one call per thread.
    """

    reaped_io_in_parent = False  # rusage_info has no children's disk fields

    def __init__(self, table: ProcessTable | None = None, libproc: LibProcLayer | None = None,
                 bundles: BundleNamer | None = None, *, timebase: Timebase | None = None,
                 thread_states: bool = True, euid: Callable[[], int] = os.geteuid,
                 user_name: Callable[[int], str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.table: ProcessTable = table if table is not None else PsutilTable()
        self._cwd_of = self.table.cwd if isinstance(self.table, CwdReading) else None
        self.libproc: LibProcLayer = libproc if libproc is not None else LibProc()
        self.bundles = bundles if bundles is not None else BundleNamer()
        self._timebase = timebase
        self._timebase_error = ""
        self.thread_states = thread_states
        self._euid = euid
        self._user_name = user_name or _passwd_name
        self._users: dict[int, str] = {}
        self._clock = clock
        self._denied_last = 0

    @property
    def timebase(self) -> Timebase | None:
        if self._timebase is None and not self._timebase_error:
            try:
                self._timebase = self.libproc.timebase()
            except (OSError, ValueError) as err:
                self._timebase_error = f"cannot read the CPU timebase: {err}"
                log.warning("%s; CPU seconds are absent", self._timebase_error)
        return self._timebase

    def calibrate(self, *, process_time: Callable[[], float] = time.process_time, burn_seconds: float = 0.05,
                  pid: int | None = None) -> None:
        """Check the timebase against this process's own CPU time (see `calibrate_timebase`)."""
        base = self.timebase
        if base is not None:
            self._timebase = calibrate_timebase(self.libproc, base, pid=pid, process_time=process_time,
                                                burn_seconds=burn_seconds)

    def start_token(self, pid: int) -> ProcessId | None:
        try:
            return ProcessId(pid, self.table.kinfo(pid).started_us)
        except (ProcessGone, AccessDenied, OSError):
            return None

    def identity(self, pid: ProcessId) -> ProcIdentity | None:
        """comm, exe, cmdline, user and bundle name of a live process (None if it is gone or reused)."""
        try:
            kinfo = self.table.kinfo(pid.pid)
            if kinfo.started_us != pid.started:
                return None
            comm = self.table.name(pid.pid)
        except (ProcessGone, AccessDenied, OSError):
            return None
        ident = ProcIdentity(comm=comm, user=self._user(kinfo.uid), ppid=kinfo.ppid)
        try:
            ident.exe = self.libproc.pid_path(pid.pid) or None
        except (ProcessGone, AccessDenied, OSError):
            pass
        try:
            ident.cmdline = self.table.cmdline(pid.pid)
        except (ProcessGone, AccessDenied, OSError):
            pass
        if self._cwd_of is not None:
            ident.cwd = self._cwd_of(pid.pid)
        ident.bundle = self.bundles.name_for_exe(ident.exe)
        return ident

    def _user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            name = self._users[uid] = self._user_name(uid)
        return name

    def scan(self) -> ProcessScan:
        """One pass over every process except the kernel (pid 0)."""
        started = self._clock()
        errors = ReadErrors()
        samples: list[ProcSample] = []
        skipped: set[int] = set()
        base = self.timebase
        pids = self.table.pids()  # an OSError fails the pass: an empty table would end every process
        for pid in pids:
            if pid == KERNEL_TASK_PID:
                continue
            sample = self._sample(pid, base, errors, skipped)
            if sample is not None:
                samples.append(sample)
        self._denied_last = errors.access_denied
        return ProcessScan(samples=samples, errors=errors, monotonic=started, skipped=frozenset(skipped))

    def _sample(self, pid: int, base: Timebase | None, errors: ReadErrors, skipped: set[int]) -> ProcSample | None:
        try:
            kinfo = self.table.kinfo(pid)
        except ProcessGone:
            errors.vanished += 1
            return None
        except (AccessDenied, OSError) as err:  # still there, but unreadable this pass
            log.debug("skipping pid %d this pass: %s", pid, err)
            errors.access_denied += 1
            skipped.add(pid)
            return None
        denied = False
        zombie = kinfo.status == "zombie"
        task: TaskInfo | None = None
        usage: Rusage | None = None
        fds: int | None = None
        threads: list[int] | None = None
        threads_unreadable = False
        if not zombie:
            try:
                task = self.libproc.task_info(pid)
            except AccessDenied:
                denied = True
            except ProcessGone:
                errors.vanished += 1
                return None
            except OSError as err:
                log.debug("proc_taskinfo of pid %d: %s", pid, err)
        if not denied:
            try:
                usage = self.libproc.rusage(pid)
            except AccessDenied:
                denied = True
            except ProcessGone:
                if not zombie:
                    errors.vanished += 1
                    return None
            except OSError as err:
                log.debug("proc_pid_rusage of pid %d: %s", pid, err)
        if task is not None:
            try:
                fds = self.libproc.fd_count(pid)
            except AccessDenied:
                denied = True
            except ProcessGone:
                errors.vanished += 1
                return None
            except OSError as err:
                log.debug("PROC_PIDLISTFDS of pid %d: %s", pid, err)
            if self.thread_states and task.running_threads == 0 and task.threads > 0:
                try:
                    threads = self.libproc.thread_states(pid, task.threads)
                except ProcessGone:
                    threads = None  # exiting: no thread is waiting on the disk any more
                except (AccessDenied, OSError) as err:
                    log.debug("thread states of pid %d: %s", pid, err)
                    threads_unreadable = True
        if denied:
            errors.access_denied += 1
        cpu_user = cpu_system = reaped_user = reaped_system = None
        if base is not None and usage is not None:
            reaped_user, reaped_system = base.seconds(usage.child_user_ticks), base.seconds(usage.child_system_ticks)
        if base is not None:
            if task is not None:
                cpu_user, cpu_system = base.seconds(task.user_ticks), base.seconds(task.system_ticks)
            elif usage is not None:
                cpu_user, cpu_system = base.seconds(usage.user_ticks), base.seconds(usage.system_ticks)
        resident: int | None = task.resident_bytes if task is not None else None
        if zombie:
            threads_now: int | None = 0
            resident = 0
        else:
            threads_now = task.threads if task is not None else None
        return ProcSample(
            id=ProcessId(pid, kinfo.started_us),
            ppid=kinfo.ppid,
            state=state_letter(kinfo.status, task, threads, threads_unreadable=threads_unreadable),
            cpu_user_seconds=cpu_user,  # None: not readable here
            cpu_system_seconds=cpu_system,
            threads=threads_now,
            resident_bytes=resident,
            start_time_seconds=kinfo.start_time,
            open_fds=fds,
            read_bytes=usage.diskio_bytes_read if usage is not None else None,
            written_bytes=usage.diskio_bytes_written if usage is not None else None,
            footprint_bytes=usage.phys_footprint_bytes if usage is not None else None,
            comm=kinfo.comm,
            reaped_cpu_user_seconds=reaped_user,
            reaped_cpu_system_seconds=reaped_system,
            minor_faults=_minor(task),
            major_faults=task.pageins if task is not None else None,
            virtual_bytes=task.virtual_bytes if task is not None else None,
            context_switches=task.context_switches if task is not None else None,
        )

    def statuses(self) -> list[SourceStatus]:
        euid = self._euid()
        privilege = "root" if euid == 0 else "user"
        if self.timebase is None:
            return [SourceStatus(name="libproc", active=False, privilege=privilege, reason=self._timebase_error)]
        reason = ""
        if privilege == "user":
            reason = (f"running as {self._user(euid)}: CPU, memory, threads, open fds, disk bytes and disk-wait "
                      "state of other users' processes are absent (run as a LaunchDaemon as root to see them)")
        return [SourceStatus(name="libproc", active=True, privilege=privilege, reason=reason)]


def _passwd_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def make_process_source(procfs: Path | None = None) -> DarwinProcessSource:
    """The macOS process source over the real sysctl and libproc; `procfs` is ignored (macOS has none).

    The CPU timebase is checked once against this process's own CPU time. Bundle names go
    through the shared `BundleNamer`, so crash reports can be named by bundle id.
    """
    del procfs
    source = DarwinProcessSource(bundles=shared_bundle_namer())
    source.calibrate()
    return source
