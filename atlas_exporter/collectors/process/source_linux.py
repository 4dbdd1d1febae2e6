"""Linux process table reader: `/proc/<pid>/stat`, `status`, `io`, the fd count and `limits`, per pass.

Returns `ProcessScan`s of `ProcSample`s and `ProcIdentity`s for naming. Reading is kept
apart from parsing: `parse_stat`, `parse_io`, `parse_status_counters`, `parse_nofile_limit`
and `parse_pss` are pure. A process that vanishes mid-read is skipped and counted; a field
that is denied is None and counted. Kernel threads are not processes of any application
and are left out.

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
import pwd
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from atlas_exporter.model import (
    ProcessId,
    ProcessScan,
    ProcIdentity,
    ProcSample,
    ReadErrors,
    SourceStatus,
    clean_label,
)

log = logging.getLogger(__name__)

PF_KTHREAD = 0x00200000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# capability bit numbers (linux/capability.h)
CAP_DAC_READ_SEARCH = 2
CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19


class ParseError(ValueError):
    """A /proc file whose text is not in the expected format."""


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of `/proc/<pid>/stat` the exporter uses (times in clock ticks, rss in pages)."""

    comm: str
    state: str
    ppid: int
    flags: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    num_threads: int
    starttime: int
    rss_pages: int
    minflt: int = 0
    cminflt: int = 0
    majflt: int = 0
    cmajflt: int = 0
    vsize: int = 0


class ProcIO(NamedTuple):
    """`/proc/<pid>/io`: storage bytes and read/write system calls."""

    read_bytes: int
    write_bytes: int
    cancelled_write_bytes: int
    syscr: int
    syscw: int


def split_stat(text: bytes) -> tuple[bytes, list[bytes]]:
    """The comm and the fields after it (state first); the comm may hold spaces and ')'."""
    open_paren = text.find(b"(")
    close_paren = text.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ParseError("stat: no '(comm)' field")
    fields = text[close_paren + 2:].split(None, 22)
    if len(fields) < 22:
        raise ParseError(f"stat: {len(fields) + 2} fields, expected at least 24")
    return text[open_paren + 1:close_paren], fields


def parse_stat(text: bytes | str) -> ProcStat:
    """Parse `/proc/<pid>/stat`."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    comm, fields = split_stat(text)
    try:
        return ProcStat(
            comm=comm.decode("utf-8", "replace"),
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            flags=int(fields[6]),
            utime=int(fields[11]),
            stime=int(fields[12]),
            cutime=int(fields[13]),
            cstime=int(fields[14]),
            num_threads=int(fields[17]),
            starttime=int(fields[19]),
            rss_pages=int(fields[21]),
            minflt=int(fields[7]),
            cminflt=int(fields[8]),
            majflt=int(fields[9]),
            cmajflt=int(fields[10]),
            vsize=int(fields[20]),
        )
    except ValueError as err:
        raise ParseError(f"stat: {err}") from None


def sample_from_stat(pid: int, text: bytes, btime: float) -> ProcSample | None:
    """A `ProcSample` straight from `/proc/<pid>/stat` text (the scan's hot path); None for kernel threads."""
    comm, f = split_stat(text)
    try:
        if int(f[6]) & PF_KTHREAD:
            return None
        starttime = int(f[19])
        # positional, in ProcSample's field order: keyword construction costs more per process
        return ProcSample(ProcessId(pid, starttime), int(f[1]), f[0].decode("ascii", "replace"),
                          int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK, int(f[17]), int(f[21]) * PAGE_SIZE,
                          btime + starttime / CLK_TCK, None, None, None, None, None, None,
                          comm.decode("utf-8", "replace"), int(f[13]) / CLK_TCK, int(f[14]) / CLK_TCK,
                          int(f[7]), int(f[9]), int(f[8]), int(f[10]), int(f[20]))
    except ValueError as err:
        raise ParseError(f"stat: {err}") from None


_IO_KEYS = {b"read_bytes:": 0, b"write_bytes:": 1, b"cancelled_write_bytes:": 2, b"syscr:": 3, b"syscw:": 4}


def parse_io(text: bytes | str) -> ProcIO:
    """Parse `/proc/<pid>/io` ("key: value" lines); every field the exporter uses must be there."""
    if isinstance(text, str):
        text = text.encode()
    tokens = text.split()
    if len(tokens) >= 14 and tokens[4] == b"syscr:" and tokens[8] == b"read_bytes:" and tokens[12] == (
            b"cancelled_write_bytes:"):  # the kernel's fixed layout
        try:
            return ProcIO(int(tokens[9]), int(tokens[11]), int(tokens[13]), int(tokens[5]), int(tokens[7]))
        except ValueError:
            pass
    values = [-1] * 5
    for i in range(0, len(tokens) - 1, 2):
        slot = _IO_KEYS.get(tokens[i])
        if slot is not None:
            try:
                values[slot] = int(tokens[i + 1])
            except ValueError:
                raise ParseError(f"io: bad value for {tokens[i].decode(errors='replace')}") from None
    if min(values) < 0:
        raise ParseError("io: missing fields")
    return ProcIO(*values)


# the per-process cache entry of a scan (a list: updated in place)
_STAT_KEY, _COUNTERS, _STARTED, _FD_LIMIT, _LIMITS_AT = range(5)


class StatusCounters(NamedTuple):
    """What a pass needs from `/proc/<pid>/status`: the main thread's context switches and VmSwap."""

    voluntary_switches: int | None
    involuntary_switches: int | None
    swap_bytes: int | None  # None for a zombie or a kernel without the line


def _status_number(text: bytes, key: bytes) -> int | None:
    at = text.find(key)
    if at < 0:
        return None
    end = text.find(b"\n", at + len(key))
    words = text[at + len(key):end if end >= 0 else len(text)].split()
    try:
        return int(words[0]) if words else None
    except ValueError:
        raise ParseError(f"status: bad value for {key.decode()}") from None


def parse_status_counters(text: bytes | str) -> StatusCounters:
    """Context switches and VmSwap from `/proc/<pid>/status` (a missing line is None)."""
    if isinstance(text, str):
        text = text.encode()
    swap = _status_number(text, b"\nVmSwap:")
    return StatusCounters(_status_number(text, b"\nvoluntary_ctxt_switches:"),
                          _status_number(text, b"\nnonvoluntary_ctxt_switches:"),
                          None if swap is None else swap * 1024)


def parse_nofile_limit(text: bytes | str) -> int | None:
    """The soft `Max open files` limit from `/proc/<pid>/limits`; None when unlimited or absent."""
    if isinstance(text, str):
        text = text.encode()
    at = text.find(b"Max open files")
    if at < 0:
        return None
    end = text.find(b"\n", at)
    words = text[at + len(b"Max open files"):end if end >= 0 else len(text)].split()
    if not words or words[0] == b"unlimited":
        return None
    try:
        value = int(words[0])
    except ValueError:
        raise ParseError("limits: bad Max open files line") from None
    return value if value > 0 else None


def parse_pss(text: bytes | str) -> int | None:
    """Proportional set size in bytes from `/proc/<pid>/smaps_rollup` (None without a Pss line)."""
    if isinstance(text, str):
        text = text.encode()
    value = _status_number(b"\n" + text, b"\nPss:")
    return None if value is None else value * 1024


def parse_btime(text: str) -> float:
    """Boot time (Unix seconds) from `/proc/stat`."""
    for line in text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ParseError("stat: no btime line")


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path (the `0::` line) of `/proc/<pid>/cgroup`, else the systemd v1 path."""
    fallback = None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
        if ":name=systemd:" in line:
            fallback = line.split(":", 2)[2]
    return fallback


def parse_uid(status_text: str) -> int | None:
    """The real uid from `/proc/<pid>/status`."""
    for line in status_text.splitlines():
        if line.startswith("Uid:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def parse_capabilities(status_text: str) -> int:
    """The effective capability mask (`CapEff`) from `/proc/<pid>/status`."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split()[1], 16)
            except (IndexError, ValueError):
                return 0
    return 0


def privilege_of(status_text: str, euid: int) -> str:
    """'root', 'capabilities' (ptrace/read-search granted) or 'user'."""
    if euid == 0:
        return "root"
    caps = parse_capabilities(status_text)
    if caps & (1 << CAP_SYS_PTRACE) or caps & (1 << CAP_DAC_READ_SEARCH):
        return "capabilities"
    return "user"


def current_privilege(procfs: Path | str = "/proc") -> str:
    """This process's privilege for reading other processes: 'root', 'capabilities' or 'user'."""
    try:
        status = Path(procfs, "self", "status").read_text()
    except OSError:
        status = ""
    return privilege_of(status, os.geteuid())


def read_proc_file(path: str) -> bytes:
    """The bytes of a small /proc file (one open, one read, one close)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


_VANISHED = (FileNotFoundError, ProcessLookupError)
MAX_NAMING_FILE = 256 * 1024  # package.json files read for naming are at most this large


class ProcessFiles:
    """Reads small files as a process sees them (through `/proc/<pid>/root`), for naming.

    Only a regular file that anyone may read, or that the process's own (non-root) user owns, of
    at most MAX_NAMING_FILE bytes: a FIFO, a device, a link to a root-only file or a huge file is
    None, and nothing is opened for reading before that is known (the file is first opened with
    O_PATH, which never runs a device's open, then reopened through that descriptor).
    """

    __slots__ = ("root", "uid")

    def __init__(self, root: str, uid: int) -> None:
        self.root = root
        self.uid = uid

    def __call__(self, path: str) -> bytes | None:
        if not path.startswith("/") or "\0" in path:
            return None
        try:
            fd = os.open(self.root + path, os.O_PATH | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_NAMING_FILE:
                return None
            # world-readable, or the process's own (non-root) user's: an absolute link inside a
            # container resolves against the exporter's root, so root's own files do not count
            readable = st.st_mode & stat.S_IROTH or (st.st_uid == self.uid != 0 and st.st_mode & stat.S_IRUSR)
            if not readable:
                return None
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            data = os.read(rfd, MAX_NAMING_FILE + 1)
        except OSError:
            return None
        finally:
            os.close(rfd)
        return data if len(data) <= MAX_NAMING_FILE else None

IDENTITY_DEADLINE_SECONDS = 1.0  # one process's identity reads, before it is left for the next pass
# the same for a watcher thread (crash, network, hang) naming a pid: off the scrape path, so it can
# wait out a loaded machine; an answer it gives up on (a rename at exec) would be lost
IDENTITY_WATCHER_DEADLINE_SECONDS = 5.0
IDENTITY_PASS_BUDGET_SECONDS = 2.0  # waiting in one scan pass, from the first read that timed out
IDENTITY_GRACE_SECONDS = 0.02  # a read's wait once the pass budget is spent (an unblocked read takes ~0.1 ms)
IDENTITY_READER_THREADS = 16  # readers stuck on a blocking /proc file each hold one
MAX_PENDING_IDENTITIES = 1024


_CLAIM = threading.Lock()


class _Job:
    """One identity read handed to a reader thread."""

    __slots__ = ("done", "result", "fn", "arg", "claimed")

    def __init__(self, fn: Callable[[ProcessId], ProcIdentity | None], arg: ProcessId) -> None:
        self.fn = fn
        self.arg = arg
        self.done = threading.Event()
        self.result: ProcIdentity | None = None
        self.claimed = False

    def claim(self) -> bool:
        """True for the one caller that gets to run this job."""
        with _CLAIM:
            if self.claimed:
                return False
            self.claimed = True
            return True

    def run(self) -> None:
        try:
            self.result = self.fn(self.arg)
        except Exception:  # a reader thread must survive anything one process does
            log.debug("identity read of pid %d failed", self.arg.pid, exc_info=True)
        finally:
            self.done.set()


class _Batch:
    """The identities of one scan's new processes, read in order by one reader thread.

    One hand-off per batch instead of one per process: a reader that has to win the GIL
    back from busy threads for every single process costs about 1 ms each. A job the batch
    has not reached yet can be claimed and run apart when the batch is stuck on a read.
    """

    STALLED_SECONDS = 0.2

    def __init__(self, jobs: list[_Job]) -> None:
        self.jobs = jobs
        self.current_since: float | None = None
        self.finished = threading.Event()

    def stalled(self) -> bool:
        since = self.current_since
        return since is not None and time.monotonic() - since > self.STALLED_SECONDS

    def run(self) -> None:
        try:
            for job in self.jobs:
                if job.claim():
                    self.current_since = time.monotonic()
                    job.run()
        finally:
            self.current_since = None
            self.finished.set()


class DeadlineReader:
    """Runs reads that may block (cmdline, exe, cgroup of a process whose memory lock is held) on
    daemon threads, so the caller can stop waiting. A thread stuck in a read stays stuck, so up to
    `max_threads` are started; when all are stuck, new reads wait in the queue.
    """

    def __init__(self, max_threads: int = IDENTITY_READER_THREADS) -> None:
        self.max_threads = max_threads
        self._queue: queue.SimpleQueue[_Job | _Batch] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def can_start(self) -> bool:
        """Whether a job submitted now can start at once (a thread is idle or may be added)."""
        with self._lock:
            return self._idle > 0 or self._threads < self.max_threads

    def submit(self, job: _Job | _Batch) -> None:
        with self._lock:
            if self._idle == 0 and self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name="atlas-identity-reader", daemon=True).start()
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._queue.get()
            with self._lock:
                self._idle -= 1
            job.run()


class LinuxProcessSource:
    """Reads the process table under `procfs` (default `/proc`).

    The fd count comes from `stat(/proc/<pid>/fd).st_size` where the kernel provides it
    (Linux 6.2+), else from listing the folder. `read_pss` adds `smaps_rollup` (PSS) reads.
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
        self._users: dict[int, str] = {}
        self._io_available = self._probe_io()
        # pid -> [hash of the stat text, status counters, start time, soft RLIMIT_NOFILE, when limits
        # was read] of the previous pass: status is re-read only when stat changed (a hash collision
        # would keep one pass's switches and swap stale), limits every limits_ttl_seconds
        self._cache: dict[int, list] = {}
        self.status_reads = 0  # status files read so far (the rest came from the cache)
        self.identity_deadline_seconds = IDENTITY_DEADLINE_SECONDS
        self.identity_watcher_deadline_seconds = IDENTITY_WATCHER_DEADLINE_SECONDS
        self.identity_pass_budget_seconds = IDENTITY_PASS_BUDGET_SECONDS
        self.identity_timeouts = 0  # processes not named in time (named in a later pass)
        self._reader = DeadlineReader()
        self._pending: dict[ProcessId, _Job] = {}
        self._pending_lock = threading.Lock()
        self._batched: dict[ProcessId, _Job] = {}  # this scan's new processes, read ahead by `_batch`
        self._batch: _Batch | None = None
        self._seen_ids: set[ProcessId] = set()
        self._pass = threading.local()  # the scanning thread's deadline for identity reads

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

        The reads run on a reader thread (`DeadlineReader`): a read of /proc/<pid>/cmdline
        blocks while the process's memory map lock is held, and the caller (a scrape holding
        the snapshot lock, or a watcher) must not wait for it. The caller waits up to
        `identity_deadline_seconds`; in a scan pass, once one read has timed out, the waits of
        the pass end `identity_pass_budget_seconds` after that read began. A read still running
        then is not waited for again: the process is named in a later pass, once it has finished.
        """
        with self._pending_lock:
            pending = self._pending.pop(pid, None)
            batched = self._batched.pop(pid, None)
        if pending is not None and not pending.done.is_set():
            with self._pending_lock:
                self._pending[pid] = pending
            return None
        if pending is not None:
            return pending.result
        batch = self._batch
        if batched is not None:
            job = batched  # read already, or about to be, by this scan's batch
            can_start = True
        else:
            job = _Job(self._read_identity, pid)
            job.claimed = True
            can_start = self._reader.can_start()
            self._reader.submit(job)
        in_pass = getattr(self._pass, "active", False)  # named by the thread that scanned
        # a watcher is off the scrape path: it waits longer, and still never for ever
        wait = self.identity_deadline_seconds if in_pass else self.identity_watcher_deadline_seconds
        if not can_start:
            wait = 0.0  # every reader is stuck: the read waits in the queue
        started = time.monotonic()
        if in_pass and self._pass.deadline is not None:  # a read of this pass already timed out
            wait = min(wait, max(IDENTITY_GRACE_SECONDS, self._pass.deadline - started))
        deadline = started + wait
        apart = batched is None or batch is None
        while True:
            if job.done.is_set():
                return job.result
            if not apart and batch is not None and batch.stalled() and job.claim():
                self._reader.submit(job)  # the batch is stuck on another process: read this one apart
                apart = True
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # while the batch runs, wait for all of it: one wake-up, not one GIL hand-off per process
            event = job.done if apart or batch is None or batch.finished.is_set() else batch.finished
            event.wait(min(left, _Batch.STALLED_SECONDS))
        if in_pass and self._pass.deadline is None:
            # from the first read that blocks, the rest of the pass shares one budget: a crowd of
            # blocked processes costs a scrape this long, not one deadline each
            self._pass.deadline = started + self.identity_pass_budget_seconds
        self.identity_timeouts += 1
        log.debug("pid %d could not be named within %.2fs: named in a later pass", pid.pid, wait)
        with self._pending_lock:
            self._pending[pid] = job
            while len(self._pending) > MAX_PENDING_IDENTITIES:
                self._pending.pop(next(iter(self._pending)))
        return None

    def _read_ahead(self, samples: list[ProcSample]) -> None:
        """Start reading the identities of the processes this scan sees for the first time.

        They are the ones the resolver is about to ask for; one reader reads them all, in the
        order the resolver asks. A read ahead that nobody asks for (the process was named by
        a watcher already) is dropped at the next scan.
        """
        seen = self._seen_ids
        new = [sample.id for sample in samples if sample.id not in seen]
        self._seen_ids = {sample.id for sample in samples}
        if not new:
            with self._pending_lock:
                self._batched = {}
            return
        jobs = [_Job(self._read_identity, pid) for pid in new]
        batch = _Batch(jobs)
        with self._pending_lock:
            self._batched = {job.arg: job for job in jobs}
            self._batch = batch
        self._reader.submit(batch)

    def _read_identity(self, pid: ProcessId) -> ProcIdentity | None:
        """Read comm, exe, cmdline, user and cgroup of a live or zombie process.

        None if it is gone or is a kernel thread (kernel threads belong to no application).
        A zombie keeps its comm, user and cgroup; its exe and cmdline are gone.
        """
        base = f"{self.procfs}/{pid.pid}"
        try:
            st = parse_stat(read_proc_file(f"{base}/stat"))
        except (OSError, ParseError):
            return None
        if st.starttime != pid.started or st.flags & PF_KTHREAD:
            return None
        ident = ProcIdentity(comm=st.comm, ppid=st.ppid)
        try:
            exe = os.readlink(f"{base}/exe")
            if exe.endswith(" (deleted)"):
                exe = exe[: -len(" (deleted)")]
            ident.exe = clean_label(exe)  # a path of any bytes: undecodable ones become U+FFFD
        except OSError:
            pass
        try:
            ident.cwd = os.readlink(f"{base}/cwd")
        except OSError:
            pass
        try:
            raw = read_proc_file(f"{base}/cmdline")
            ident.cmdline = tuple(a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0") if raw)
        except OSError:
            pass
        uid = None
        try:
            uid = parse_uid(read_proc_file(f"{base}/status").decode("utf-8", "replace"))
            if uid is not None:
                ident.user = self._user_name(uid)
        except (OSError, ValueError):
            pass
        if uid is not None:
            ident.read_file = ProcessFiles(f"{base}/root", uid)
        try:
            ident.cgroup = parse_cgroup(read_proc_file(f"{base}/cgroup").decode("utf-8", "replace"))
        except OSError:
            pass
        return ident

    def _user_name(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = clean_label(pwd.getpwuid(uid).pw_name)
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def scan(self) -> ProcessScan:
        """One pass over every process: stat, io, the fd count, status when stat changed, limits when due."""
        started = time.monotonic()
        # the identities this thread asks for after the scan share one waiting budget once one blocks
        self._pass.active = True
        self._pass.deadline = None
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
        cache: dict[int, list] = {}
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
            if entry is None or entry[_STARTED] != sample.id.started:  # new, or the pid was reused
                entry = [None, None, sample.id.started, None, float("-inf")]
            if entry[_STAT_KEY] != stat_key:
                try:
                    entry[_COUNTERS] = parse_status_counters(read_proc_file(base + "/status"))
                    entry[_STAT_KEY] = stat_key
                    status_reads += 1
                except _VANISHED:
                    errors.vanished += 1
                    continue
                except (OSError, ParseError):
                    entry[_COUNTERS] = entry[_STAT_KEY] = None  # read again next pass
            cache[pid] = entry
            counters = entry[_COUNTERS]
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
            if entry[_LIMITS_AT] < limits_due:
                try:
                    entry[_FD_LIMIT] = parse_nofile_limit(read_proc_file(base + "/limits"))
                except (OSError, ParseError):
                    entry[_FD_LIMIT] = None
                entry[_LIMITS_AT] = now
            sample.fd_limit = entry[_FD_LIMIT]
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
        self._read_ahead(samples)
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
        if self.identity_timeouts:
            note = (f"{self.identity_timeouts} times a process could not be named within "
                    f"{self.identity_deadline_seconds:g}s (a blocked /proc read); it was named in a later pass")
            reason = f"{reason}; {note}" if reason else note
        return [SourceStatus(name="procfs", active=True, privilege=privilege, reason=reason)]


def make_process_source(procfs: Path | str | None = None, *, read_pss: bool = False) -> LinuxProcessSource:
    """The Linux process source over `procfs` (default `/proc`); `read_pss` for `--collector.smaps`."""
    return LinuxProcessSource(procfs or Path("/proc"), read_pss=read_pss)
