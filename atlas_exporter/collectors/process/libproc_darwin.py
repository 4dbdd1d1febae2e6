"""libproc on macOS through ctypes: per-process task info, rusage, fd counts, paths, thread states.

Returns plain frozen dataclasses (`TaskInfo`, `Rusage`) and raises `ProcessGone` (ESRCH) or
`AccessDenied` (EPERM/EACCES) at the boundary. The ctypes structures mirror xnu's
`bsd/sys/resource.h` and `bsd/sys/proc_info.h`; their sizes and offsets are checked in
the tests. Parsing is kept apart from the calls: `parse_rusage(raw)` and
`parse_taskinfo(raw)` take the bytes a call filled in. The library is loaded on first
use, so this module imports on Linux (where only the parsers and structures are used).

CPU times in `proc_taskinfo` and `rusage_info_*` are Mach absolute-time ticks, not
nanoseconds: 24,000,000 ticks per second on Apple silicon, 1,000,000,000 on Intel.
`Timebase` converts them.

A `LibProc` is shared by threads (the scrape's scan, the network source's pid lookups), and
ctypes releases the GIL during each call, so its reusable buffers are held under a lock from
the call until their bytes are copied out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

c_uint64 = ctypes.c_uint64
c_int32 = ctypes.c_int32
c_uint32 = ctypes.c_uint32

# proc_pidinfo flavors (bsd/sys/proc_info.h)
PROC_PIDLISTFDS = 1
PROC_PIDTBSDINFO = 3
PROC_PIDTASKINFO = 4
PROC_PIDTHREADINFO = 5
PROC_PIDLISTTHREADS = 6
PROC_PIDT_SHORTBSDINFO = 13
PROC_PIDPATHINFO_MAXSIZE = 4 * 1024

# proc_pid_rusage flavors (bsd/sys/resource.h)
RUSAGE_INFO_V2 = 2
RUSAGE_INFO_V3 = 3
RUSAGE_INFO_V4 = 4

# proc_threadinfo.pth_run_state
TH_STATE_RUNNING = 1
TH_STATE_STOPPED = 2
TH_STATE_WAITING = 3
TH_STATE_UNINTERRUPTIBLE = 4
TH_STATE_HALTED = 5

# p_stat values (sys/proc.h), as in proc_bsdinfo.pbi_status and kinfo_proc
SIDL, SRUN, SSLEEP, SSTOP, SZOMB = 1, 2, 3, 4, 5

APPLE_SILICON_TICKS_PER_SECOND = 24_000_000.0
NANOSECOND_TICKS_PER_SECOND = 1_000_000_000.0


class ProcessGone(Exception):
    """The process exited (ESRCH), or is a zombie where the call needs a live task."""


class AccessDenied(Exception):
    """The call needs the same uid as the process, or root (EPERM/EACCES)."""


class RusageInfoV2(ctypes.Structure):
    """`struct rusage_info_v2` (macOS 10.9+): 160 bytes."""

    _fields_ = [
        ("ri_uuid", ctypes.c_uint8 * 16),
        ("ri_user_time", c_uint64),
        ("ri_system_time", c_uint64),
        ("ri_pkg_idle_wkups", c_uint64),
        ("ri_interrupt_wkups", c_uint64),
        ("ri_pageins", c_uint64),
        ("ri_wired_size", c_uint64),
        ("ri_resident_size", c_uint64),
        ("ri_phys_footprint", c_uint64),
        ("ri_proc_start_abstime", c_uint64),
        ("ri_proc_exit_abstime", c_uint64),
        ("ri_child_user_time", c_uint64),
        ("ri_child_system_time", c_uint64),
        ("ri_child_pkg_idle_wkups", c_uint64),
        ("ri_child_interrupt_wkups", c_uint64),
        ("ri_child_pageins", c_uint64),
        ("ri_child_elapsed_abstime", c_uint64),
        ("ri_diskio_bytesread", c_uint64),
        ("ri_diskio_byteswritten", c_uint64),
    ]


class RusageInfoV3(ctypes.Structure):
    """`struct rusage_info_v3` (OS X 10.10+, first in xnu-2782): v2 plus QoS CPU times, 232 bytes."""

    _fields_ = [
        *RusageInfoV2._fields_,
        ("ri_cpu_time_qos_default", c_uint64),
        ("ri_cpu_time_qos_maintenance", c_uint64),
        ("ri_cpu_time_qos_background", c_uint64),
        ("ri_cpu_time_qos_utility", c_uint64),
        ("ri_cpu_time_qos_legacy", c_uint64),
        ("ri_cpu_time_qos_user_initiated", c_uint64),
        ("ri_cpu_time_qos_user_interactive", c_uint64),
        ("ri_billed_system_time", c_uint64),
        ("ri_serviced_system_time", c_uint64),
    ]


class RusageInfoV4(ctypes.Structure):
    """`struct rusage_info_v4`: v3 plus logical writes, footprint peaks, instructions, 296 bytes."""

    _fields_ = [
        *RusageInfoV3._fields_,
        ("ri_logical_writes", c_uint64),
        ("ri_lifetime_max_phys_footprint", c_uint64),
        ("ri_instructions", c_uint64),
        ("ri_cycles", c_uint64),
        ("ri_billed_energy", c_uint64),
        ("ri_serviced_energy", c_uint64),
        ("ri_interval_max_phys_footprint", c_uint64),
        ("ri_runnable_time", c_uint64),
    ]


class ProcTaskInfo(ctypes.Structure):
    """`struct proc_taskinfo` (PROC_PIDTASKINFO): 96 bytes; times in Mach ticks."""

    _fields_ = [
        ("pti_virtual_size", c_uint64),
        ("pti_resident_size", c_uint64),
        ("pti_total_user", c_uint64),
        ("pti_total_system", c_uint64),
        ("pti_threads_user", c_uint64),
        ("pti_threads_system", c_uint64),
        ("pti_policy", c_int32),
        ("pti_faults", c_int32),
        ("pti_pageins", c_int32),
        ("pti_cow_faults", c_int32),
        ("pti_messages_sent", c_int32),
        ("pti_messages_received", c_int32),
        ("pti_syscalls_mach", c_int32),
        ("pti_syscalls_unix", c_int32),
        ("pti_csw", c_int32),
        ("pti_threadnum", c_int32),
        ("pti_numrunning", c_int32),
        ("pti_priority", c_int32),
    ]


class ProcBSDInfo(ctypes.Structure):
    """`struct proc_bsdinfo` (PROC_PIDTBSDINFO): 136 bytes."""

    _fields_ = [
        ("pbi_flags", c_uint32),
        ("pbi_status", c_uint32),
        ("pbi_xstatus", c_uint32),
        ("pbi_pid", c_uint32),
        ("pbi_ppid", c_uint32),
        ("pbi_uid", c_uint32),
        ("pbi_gid", c_uint32),
        ("pbi_ruid", c_uint32),
        ("pbi_rgid", c_uint32),
        ("pbi_svuid", c_uint32),
        ("pbi_svgid", c_uint32),
        ("rfu_1", c_uint32),
        ("pbi_comm", ctypes.c_char * 16),
        ("pbi_name", ctypes.c_char * 32),
        ("pbi_nfiles", c_uint32),
        ("pbi_pgid", c_uint32),
        ("pbi_pjobc", c_uint32),
        ("e_tdev", c_uint32),
        ("e_tpgid", c_uint32),
        ("pbi_nice", c_int32),
        ("pbi_start_tvsec", c_uint64),
        ("pbi_start_tvusec", c_uint64),
    ]


class ProcBSDShortInfo(ctypes.Structure):
    """`struct proc_bsdshortinfo` (PROC_PIDT_SHORTBSDINFO, no same-uid check): 64 bytes."""

    _fields_ = [
        ("pbsi_pid", c_uint32),
        ("pbsi_ppid", c_uint32),
        ("pbsi_pgid", c_uint32),
        ("pbsi_status", c_uint32),
        ("pbsi_comm", ctypes.c_char * 16),
        ("pbsi_flags", c_uint32),
        ("pbsi_uid", c_uint32),
        ("pbsi_gid", c_uint32),
        ("pbsi_ruid", c_uint32),
        ("pbsi_rgid", c_uint32),
        ("pbsi_svuid", c_uint32),
        ("pbsi_svgid", c_uint32),
        ("pbsi_rfu", c_uint32),
    ]


class ProcThreadInfo(ctypes.Structure):
    """`struct proc_threadinfo` (PROC_PIDTHREADINFO): 112 bytes."""

    _fields_ = [
        ("pth_user_time", c_uint64),
        ("pth_system_time", c_uint64),
        ("pth_cpu_usage", c_int32),
        ("pth_policy", c_int32),
        ("pth_run_state", c_int32),
        ("pth_flags", c_int32),
        ("pth_sleep_time", c_int32),
        ("pth_curpri", c_int32),
        ("pth_priority", c_int32),
        ("pth_maxpriority", c_int32),
        ("pth_name", ctypes.c_char * 64),
    ]


class ProcFdInfo(ctypes.Structure):
    """`struct proc_fdinfo` (one PROC_PIDLISTFDS entry): 8 bytes."""

    _fields_ = [("proc_fd", c_int32), ("proc_fdtype", c_uint32)]


class MachTimebaseInfo(ctypes.Structure):
    """`mach_timebase_info_data_t`: nanoseconds = ticks * numer / denom."""

    _fields_ = [("numer", c_uint32), ("denom", c_uint32)]


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What the exporter takes from `proc_taskinfo` (times in Mach ticks)."""

    resident_bytes: int
    user_ticks: int
    system_ticks: int
    threads: int
    running_threads: int
    virtual_bytes: int | None = None
    faults: int | None = None  # page faults of every kind (pti_faults)
    pageins: int | None = None  # faults that read from storage (pti_pageins)
    context_switches: int | None = None  # of every thread, live or gone (pti_csw)


@dataclass(frozen=True, slots=True)
class Rusage:
    """What the exporter takes from `rusage_info_v2` or later (times in Mach ticks)."""

    user_ticks: int
    system_ticks: int
    resident_bytes: int
    phys_footprint_bytes: int
    diskio_bytes_read: int
    diskio_bytes_written: int
    child_user_ticks: int = 0  # CPU of children this process reaped (wait()ed for)
    child_system_ticks: int = 0


# Both macOS architectures (arm64, x86_64) are little-endian. The formats pick the fields
# the exporter uses at the offsets of the structures above (checked in the tests).
# virtual size, resident, total_user, total_system, faults, pageins, csw, threadnum, numrunning
_TASKINFO = struct.Struct("<QQQQ20xII20xIii")
_RUSAGE = struct.Struct("<16xQQ32xQQ16xQQ32xQQ")  # user, system, resident, footprint, child user/system, disk


def parse_taskinfo(raw: bytes) -> TaskInfo:
    """Decode the bytes `proc_pidinfo(PROC_PIDTASKINFO)` filled in."""
    if len(raw) < ctypes.sizeof(ProcTaskInfo):
        raise ValueError(f"proc_taskinfo: {len(raw)} bytes, expected {ctypes.sizeof(ProcTaskInfo)}")
    virtual, resident, user, system, faults, pageins, switches, threads, running = _TASKINFO.unpack_from(raw)
    return TaskInfo(resident_bytes=resident, user_ticks=user, system_ticks=system, threads=threads,
                    running_threads=running, virtual_bytes=virtual, faults=faults, pageins=pageins,
                    context_switches=switches)


def parse_rusage(raw: bytes) -> Rusage:
    """Decode the bytes `proc_pid_rusage(RUSAGE_INFO_V2 or later)` filled in (a v2 prefix suffices)."""
    if len(raw) < ctypes.sizeof(RusageInfoV2):
        raise ValueError(f"rusage_info: {len(raw)} bytes, expected at least {ctypes.sizeof(RusageInfoV2)}")
    user, system, resident, footprint, child_user, child_system, read, written = _RUSAGE.unpack_from(raw)
    return Rusage(user_ticks=user, system_ticks=system, resident_bytes=resident, phys_footprint_bytes=footprint,
                  diskio_bytes_read=read, diskio_bytes_written=written, child_user_ticks=child_user,
                  child_system_ticks=child_system)


@dataclass(frozen=True, slots=True)
class Timebase:
    """Converts Mach absolute-time ticks to seconds."""

    ticks_per_second: float

    def seconds(self, ticks: int) -> float:
        return ticks / self.ticks_per_second

    @classmethod
    def from_mach(cls, numer: int, denom: int) -> Timebase:
        """From `mach_timebase_info` (ns = ticks * numer / denom): 125/3 gives 24 MHz."""
        if numer <= 0 or denom <= 0:
            raise ValueError(f"mach_timebase_info: bad ratio {numer}/{denom}")
        return cls(NANOSECOND_TICKS_PER_SECOND * denom / numer)


def pick_ticks_per_second(ticks: int, seconds: float, candidates: Sequence[float],
                          tolerance: float = 0.25) -> float | None:
    """The candidate rate under which `ticks` of measured CPU best match `seconds`, or None.

    Used to check the timebase against `time.process_time()` at start-up: under Rosetta
    `mach_timebase_info` says 1/1 while the kernel counts 24 MHz ticks.
    """
    if ticks <= 0 or seconds <= 0:
        return None
    best: tuple[float, float] | None = None
    for rate in candidates:
        if rate <= 0:
            continue
        error = abs(ticks / rate - seconds) / seconds
        if error <= tolerance and (best is None or error < best[0]):
            best = (error, rate)
    return best[1] if best else None


def _raise_for_errno(err: int, what: str) -> None:
    if err == errno.ESRCH:
        raise ProcessGone(what)
    if err in (errno.EPERM, errno.EACCES):
        raise AccessDenied(what)
    raise OSError(err, f"{what}: {os.strerror(err) if err else 'failed'}")


_LIBRARY_PATHS = ("/usr/lib/libSystem.B.dylib", "/usr/lib/libproc.dylib")


class LibProc:
    """The real libproc calls. The library is loaded on first use (macOS only).

    Every method raises `ProcessGone` or `AccessDenied` for the two expected failures and
    `OSError` for anything else. Methods are thread-safe: each fills a buffer of this
    object and copies it out under `_lock`.
    """

    def __init__(self, loader: Callable[[], ctypes.CDLL] | None = None) -> None:
        self._loader = loader or self._load
        self._lib: ctypes.CDLL | None = None
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()  # held while a call fills one of the buffers below and they are read
        self._rusage_flavor = RUSAGE_INFO_V2
        self._rusage_buf = RusageInfoV4()
        self._task_buf = ProcTaskInfo()
        self._thread_buf = ProcThreadInfo()
        self._path_buf = ctypes.create_string_buffer(PROC_PIDPATHINFO_MAXSIZE)
        self._fd_buf = ctypes.create_string_buffer(8 * 256)

    @staticmethod
    def _load() -> ctypes.CDLL:
        if sys.platform != "darwin":
            raise OSError(errno.ENOSYS, "libproc is only available on macOS")
        last: OSError | None = None
        for path in (*_LIBRARY_PATHS, ctypes.util.find_library("proc") or ""):
            if not path:
                continue
            try:
                return ctypes.CDLL(path, use_errno=True)
            except OSError as err:
                last = err
        raise last or OSError(errno.ENOENT, "libproc not found")

    @property
    def lib(self) -> ctypes.CDLL:
        if self._lib is not None:
            return self._lib
        with self._load_lock:
            if self._lib is not None:
                return self._lib
            lib = self._loader()
            lib.proc_pidinfo.argtypes = [ctypes.c_int, ctypes.c_int, c_uint64, ctypes.c_void_p, ctypes.c_int]
            lib.proc_pidinfo.restype = ctypes.c_int
            lib.proc_pid_rusage.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
            lib.proc_pid_rusage.restype = ctypes.c_int
            lib.proc_pidpath.argtypes = [ctypes.c_int, ctypes.c_void_p, c_uint32]
            lib.proc_pidpath.restype = ctypes.c_int
            lib.sysctlbyname.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                         ctypes.c_void_p, ctypes.c_size_t]
            lib.sysctlbyname.restype = ctypes.c_int
            lib.mach_timebase_info.argtypes = [ctypes.POINTER(MachTimebaseInfo)]
            lib.mach_timebase_info.restype = ctypes.c_int
            self._rusage_flavor = self._probe_rusage_flavor(lib)
            self._lib = lib  # published last: another thread sees the library only with its flavor
        return lib

    @staticmethod
    def _probe_rusage_flavor(lib: ctypes.CDLL) -> int:
        """The newest flavor this kernel accepts for our own pid (v4, else v3, else v2)."""
        buf = RusageInfoV4()
        for flavor in (RUSAGE_INFO_V4, RUSAGE_INFO_V3):
            if lib.proc_pid_rusage(os.getpid(), flavor, ctypes.byref(buf)) == 0:
                return flavor
        return RUSAGE_INFO_V2

    def _pidinfo(self, pid: int, flavor: int, arg: int, buf: ctypes.Array[c_uint64] | ctypes.Structure, size: int,
                 what: str) -> int:
        ctypes.set_errno(0)
        got: int = self.lib.proc_pidinfo(pid, flavor, arg, ctypes.byref(buf), size)
        if got <= 0:
            _raise_for_errno(ctypes.get_errno(), f"{what} of pid {pid}")
        return got

    def task_info(self, pid: int) -> TaskInfo:
        size = ctypes.sizeof(ProcTaskInfo)
        with self._lock:
            got = self._pidinfo(pid, PROC_PIDTASKINFO, 0, self._task_buf, size, "proc_taskinfo")
            raw = bytes(self._task_buf)
        if got < size:
            raise OSError(errno.EIO, f"proc_taskinfo of pid {pid}: short read ({got} bytes)")
        return parse_taskinfo(raw)

    def rusage(self, pid: int) -> Rusage:
        lib = self.lib  # loading also picks the flavor
        with self._lock:
            ctypes.set_errno(0)
            if lib.proc_pid_rusage(pid, self._rusage_flavor, ctypes.byref(self._rusage_buf)) != 0:
                _raise_for_errno(ctypes.get_errno(), f"proc_pid_rusage of pid {pid}")
            raw = bytes(self._rusage_buf)
        return parse_rusage(raw)

    def fd_count(self, pid: int) -> int:
        """Open descriptors: PROC_PIDLISTFDS bytes / sizeof(proc_fdinfo).

        A first call without a buffer returns the size of the descriptor table (an upper
        bound), the second fills in the open ones. libproc returns 0 both on failure (with
        errno set) and for a process with no open descriptors (errno left at 0): that is 0
        descriptors, not an unreadable count.
        """
        lib = self.lib
        ctypes.set_errno(0)
        need = lib.proc_pidinfo(pid, PROC_PIDLISTFDS, 0, None, 0)
        if need < 0 or (need == 0 and ctypes.get_errno()):
            _raise_for_errno(ctypes.get_errno(), f"PROC_PIDLISTFDS of pid {pid}")
        if need == 0:
            return 0
        with self._lock:
            if need > len(self._fd_buf):
                self._fd_buf = ctypes.create_string_buffer(need + 8 * 64)
            ctypes.set_errno(0)
            got: int = lib.proc_pidinfo(pid, PROC_PIDLISTFDS, 0, ctypes.byref(self._fd_buf), len(self._fd_buf))
            if got < 0 or (got == 0 and ctypes.get_errno()):
                _raise_for_errno(ctypes.get_errno(), f"PROC_PIDLISTFDS of pid {pid}")
        return got // ctypes.sizeof(ProcFdInfo)

    def thread_states(self, pid: int, threads: int) -> list[int]:
        """`pth_run_state` of each thread (PROC_PIDLISTTHREADS, then PROC_PIDTHREADINFO each)."""
        ids = (c_uint64 * max(threads + 16, 32))()  # this call's own buffer
        got = self._pidinfo(pid, PROC_PIDLISTTHREADS, 0, ids, ctypes.sizeof(ids), "PROC_PIDLISTTHREADS")
        states: list[int] = []
        size = ctypes.sizeof(ProcThreadInfo)
        for handle in ids[: got // 8]:
            with self._lock:
                try:
                    self._pidinfo(pid, PROC_PIDTHREADINFO, handle, self._thread_buf, size, "PROC_PIDTHREADINFO")
                except ProcessGone:
                    continue  # the thread exited between the two calls
                states.append(self._thread_buf.pth_run_state)
        return states

    def pid_path(self, pid: int) -> str:
        """The executable path (`proc_pidpath`, readable for every process), decoded like `os.fsdecode`."""
        lib = self.lib
        with self._lock:
            ctypes.set_errno(0)
            got = lib.proc_pidpath(pid, self._path_buf, PROC_PIDPATHINFO_MAXSIZE)
            if got <= 0:
                _raise_for_errno(ctypes.get_errno(), f"proc_pidpath of pid {pid}")
            raw = self._path_buf.raw[:got]
        return os.fsdecode(raw)

    def timebase(self) -> Timebase:
        """Ticks per second: `hw.tbfrequency` (right under Rosetta), else `mach_timebase_info`."""
        lib = self.lib
        value = c_uint64(0)
        size = ctypes.c_size_t(ctypes.sizeof(value))
        if lib.sysctlbyname(b"hw.tbfrequency", ctypes.byref(value), ctypes.byref(size), None, 0) == 0 \
                and value.value > 0:
            return Timebase(float(value.value))
        info = MachTimebaseInfo()
        if lib.mach_timebase_info(ctypes.byref(info)) != 0:
            raise OSError(errno.EIO, "mach_timebase_info failed")
        return Timebase.from_mach(info.numer, info.denom)
