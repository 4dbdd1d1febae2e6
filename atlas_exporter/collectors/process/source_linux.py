"""Linux process table reader: `/proc/<pid>/stat`, `status`, `io`, the fd count and `limits`, per pass.

Returns `ProcessScan`s of `ProcSample`s and `ProcIdentity`s for naming. Reading is kept
apart from parsing: the parsers are pure (`parsers_linux`), identities are read by
`readers_linux.read_identity` behind the blocking-read guard (`identity_linux`). A process
that vanishes mid-read is skipped and counted; a field that is denied is None and counted.
Kernel threads are not processes of any application and are left out.

    LinuxProcessSource("/proc").scan()
        -> ProcessScan(samples=[ProcSample(id=ProcessId(pid=4312, started=123456), ppid=4311, state='S',
                                           cpu_user_seconds=2.5, ..., open_fds=12, read_bytes=4096, ...), ...],
                       errors=ReadErrors(access_denied=3, vanished=0), monotonic=5021.7, skipped=frozenset())

What each file costs, and how often it is read:
- `stat` (CPU, faults, state, threads, rss, vsize), `io` and the fd count: every pass.
- `status` (context switches, VmSwap): only when the process's `stat` text changed since the
  previous pass (a process that did not run and whose memory did not move has the same
  switches and swap as before), and always for a process seen for the first time.
- `limits` (soft RLIMIT_NOFILE): once per process identity, then every `limits_ttl_seconds`.
- `smaps_rollup` (PSS): only with `read_pss` (`--collector.smaps`); the kernel walks the
  page tables to produce it, so it costs in proportion to the process's mapped memory.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from atlas_exporter.collectors.process.identity_linux import IdentityReader
from atlas_exporter.collectors.process.parsers_linux import (
    PF_KTHREAD,
    ParseError,
    StatusCounters,
    parse_btime,
    parse_cgroup,
    parse_io,
    parse_nofile_limit,
    parse_pss,
    parse_stat,
    parse_status_counters,
    sample_from_stat,
)
from atlas_exporter.collectors.process.readers_linux import (
    UserNames,
    current_privilege,
    read_identity,
    read_proc_file,
)
from atlas_exporter.model import (
    ProcessId,
    ProcessScan,
    ProcessSource,
    ProcIdentity,
    ProcSample,
    PssReading,
    ReadErrors,
    SourceStatus,
)

log = logging.getLogger(__name__)

_VANISHED = (FileNotFoundError, ProcessLookupError)


class _Seen:
    """What a pass keeps of a process for the next one: status is re-read only when stat changed
    (a hash collision would keep one pass's switches and swap stale), limits every `limits_ttl_seconds`."""

    __slots__ = ("stat_key", "counters", "started", "fd_limit", "limits_at")

    def __init__(self, started: int) -> None:
        self.stat_key: int | None = None  # hash of the stat text that went with `counters`
        self.counters: StatusCounters | None = None
        self.started = started
        self.fd_limit: int | None = None  # soft RLIMIT_NOFILE
        self.limits_at = float("-inf")  # when limits was read


class LinuxProcessSource(ProcessSource, PssReading):
    """Reads the process table under `procfs` (default `/proc`).

    The fd count comes from `stat(/proc/<pid>/fd).st_size` where the kernel provides it
    (Linux 6.2+), else from listing the folder. `read_pss` adds `smaps_rollup` (PSS) reads.
    A parent's `/proc/<pid>/io` grows by a child's I/O when it reaps it (`reaped_io_in_parent`).
    """

    reaped_io_in_parent = True

    def __init__(self, procfs: Path | str = Path("/proc"), *, read_pss: bool = False,
                 limits_ttl_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.procfs = str(procfs)
        self.read_pss = read_pss
        self.limits_ttl_seconds = limits_ttl_seconds
        self.clock = clock
        self._btime = parse_btime(Path(self.procfs, "stat").read_text())
        self._self_pid = os.getpid()
        self._fd_size_is_count = self._probe_fd_size()
        self._user_names = UserNames()
        self._io_available = self._probe_io()
        self._cache: dict[int, _Seen] = {}  # pid -> what the previous pass kept of it
        self.status_reads = 0  # status files read so far (the rest came from the cache)
        self.identities = IdentityReader(self._read_identity)

    def _probe_fd_size(self) -> bool:
        """True when st_size of a /proc/<pid>/fd folder is its entry count.

        Our own fd folder is skipped: listing it opens one more fd.
        """
        own = str(self._self_pid)
        for name in sorted((n for n in os.listdir(self.procfs) if n.isdigit() and n != own), key=int)[:50]:
            path = f"{self.procfs}/{name}/fd"
            try:
                count = len(os.listdir(path))
                size = os.stat(path).st_size
            except OSError:
                continue
            if count > 0:
                return size == count
        return False

    def _probe_io(self) -> bool:
        """True when the kernel has per-process I/O accounting (`/proc/<pid>/io` exists)."""
        names = [n for n in os.listdir(self.procfs) if n.isdigit()][:20]
        return any(os.path.exists(f"{self.procfs}/{n}/io") for n in ("self", *names))

    def start_token(self, pid: int) -> ProcessId | None:
        try:
            st = parse_stat(read_proc_file(f"{self.procfs}/{pid}/stat"))
        except (OSError, ParseError):
            return None
        return ProcessId(pid, st.starttime)

    def probe(self, pid: int) -> tuple[ProcessId, str, bool] | None:
        """(identity, current comm, is a kernel thread) of a live or zombie pid; None when gone.

        A thread id works too: /proc/<tid> exists for every thread, so its identity is the thread's.
        """
        try:
            st = parse_stat(read_proc_file(f"{self.procfs}/{pid}/stat"))
        except (OSError, ParseError):
            return None
        return ProcessId(pid, st.starttime), st.comm, bool(st.flags & PF_KTHREAD)

    def cgroup_of(self, pid: ProcessId) -> str | None:
        """The cgroup path of a process now (one small read); None when unreadable."""
        try:
            return parse_cgroup(read_proc_file(f"{self.procfs}/{pid.pid}/cgroup").decode("utf-8", "replace"))
        except OSError:
            return None

    def identity(self, pid: ProcessId) -> ProcIdentity | None:
        """The identity of a process, or None when it is gone or could not be read in time.

        The reads run on a reader thread (`identity_linux.IdentityReader`): a read of
        /proc/<pid>/cmdline blocks while the process's memory map lock is held, and the caller
        (a scrape holding the snapshot lock, or a watcher) must not wait for it.
        """
        return self.identities.identity(pid)

    def _read_identity(self, pid: ProcessId) -> ProcIdentity | None:
        return read_identity(self.procfs, pid, self._user_names)

    def scan(self) -> ProcessScan:
        """One pass over every process: stat, io, the fd count, status when stat changed, limits when due."""
        started = time.monotonic()
        # the identities this thread asks for after the scan share one waiting budget once one blocks
        self.identities.begin_pass()
        errors = ReadErrors()
        samples: list[ProcSample] = []
        root = self.procfs
        btime = self._btime
        fd_size = self._fd_size_is_count
        read_io = self._io_available
        read_pss = self.read_pss
        append = samples.append
        skipped: set[int] = set()
        listed = 0
        previous = self._cache
        cache: dict[int, _Seen] = {}
        now = self.clock()
        limits_due = now - self.limits_ttl_seconds
        status_reads = 0
        for name in os.listdir(root):
            if not name.isdigit():
                continue
            base = f"{root}/{name}"
            listed += 1
            pid = int(name)
            try:
                stat_text = read_proc_file(base + "/stat")
                sample = sample_from_stat(pid, stat_text, btime)
            except _VANISHED:
                errors.vanished += 1
                continue
            except (OSError, ParseError) as err:  # still there, but unreadable this pass (EMFILE, ...)
                log.debug("skipping pid %s this pass: %s", name, err)
                skipped.add(pid)
                continue
            if sample is None:  # a kernel thread
                continue
            stat_key = hash(stat_text)
            entry = previous.get(pid)
            if entry is None or entry.started != sample.id.started:  # new, or the pid was reused
                entry = _Seen(sample.id.started)
            if entry.stat_key != stat_key:
                try:
                    entry.counters = parse_status_counters(read_proc_file(base + "/status"))
                    entry.stat_key = stat_key
                    status_reads += 1
                except _VANISHED:
                    errors.vanished += 1
                    continue
                except (OSError, ParseError):
                    entry.counters = entry.stat_key = None  # read again next pass
            cache[pid] = entry
            counters = entry.counters
            if counters is not None:
                sample.voluntary_switches, sample.involuntary_switches, sample.swap_bytes = counters
            if sample.state == "Z":  # exited, not yet reaped: no files, no fds
                append(sample)
                continue
            try:
                if fd_size:
                    sample.open_fds = os.stat(base + "/fd").st_size
                else:
                    sample.open_fds = len(os.listdir(base + "/fd"))
            except PermissionError:
                errors.access_denied += 1
            except _VANISHED:
                errors.vanished += 1
                continue
            except OSError:
                pass
            if read_io:
                try:
                    io = parse_io(read_proc_file(base + "/io"))
                except PermissionError:
                    errors.access_denied += 1
                except _VANISHED:
                    errors.vanished += 1
                    continue
                except ParseError:
                    pass
                except OSError as err:
                    if err.errno == errno.ENOENT:
                        errors.vanished += 1
                        continue
                else:
                    sample.read_bytes = io.read_bytes
                    sample.written_bytes = io.write_bytes
                    sample.cancelled_write_bytes = io.cancelled_write_bytes
                    sample.read_ops = io.syscr
                    sample.write_ops = io.syscw
            if entry.limits_at < limits_due:
                try:
                    entry.fd_limit = parse_nofile_limit(read_proc_file(base + "/limits"))
                except (OSError, ParseError):
                    entry.fd_limit = None
                entry.limits_at = now
            sample.fd_limit = entry.fd_limit
            if read_pss:
                try:
                    sample.proportional_bytes = parse_pss(read_proc_file(base + "/smaps_rollup"))
                except PermissionError:
                    errors.access_denied += 1
                except (OSError, ParseError):
                    pass
            append(sample)
        if listed and len(skipped) * 2 > listed:
            raise OSError(f"{len(skipped)} of {listed} processes unreadable in {root}")
        self.identities.read_ahead(samples)
        self._cache = cache
        self.status_reads += status_reads
        return ProcessScan(samples=samples, errors=errors, monotonic=started, skipped=frozenset(skipped))

    def statuses(self) -> list[SourceStatus]:
        privilege = current_privilege(self.procfs)
        reason = ""
        if privilege == "user":
            reason = ("running unprivileged: disk I/O, I/O operations and open fds of other users' processes "
                      "are absent (grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, or run as root)")
        if not self._io_available:
            reason = "this kernel has no per-process I/O accounting (CONFIG_TASK_IO_ACCOUNTING): disk series absent"
        timeouts = self.identities.timeouts
        if timeouts:
            note = (f"{timeouts} times a process could not be named within "
                    f"{self.identities.deadline_seconds:g}s (a blocked /proc read); it was named in a later pass")
            reason = f"{reason}; {note}" if reason else note
        return [SourceStatus(name="procfs", active=True, privilege=privilege, reason=reason)]


def make_process_source(procfs: Path | str | None = None, *, read_pss: bool = False) -> LinuxProcessSource:
    """The Linux process source over `procfs` (default `/proc`); `read_pss` for `--collector.smaps`."""
    return LinuxProcessSource(procfs or Path("/proc"), read_pss=read_pss)
