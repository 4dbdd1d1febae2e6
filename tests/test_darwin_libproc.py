"""macOS libproc layer: structure layouts, parsers, timebase conversion, the call sequences on a fake library."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
import threading
from collections.abc import Callable

import pytest

from atlas_exporter.collectors.process import libproc_darwin as lp

# (structure, size, {field: offset}) from xnu bsd/sys/resource.h and bsd/sys/proc_info.h
LAYOUTS = [
    (lp.RusageInfoV2, 160, {"ri_uuid": 0, "ri_user_time": 16, "ri_system_time": 24, "ri_resident_size": 64,
                            "ri_phys_footprint": 72, "ri_child_elapsed_abstime": 136,
                            "ri_diskio_bytesread": 144, "ri_diskio_byteswritten": 152}),
    (lp.RusageInfoV3, 232, {"ri_diskio_bytesread": 144, "ri_cpu_time_qos_default": 160,
                            "ri_billed_system_time": 216, "ri_serviced_system_time": 224}),
    (lp.RusageInfoV4, 296, {"ri_diskio_byteswritten": 152, "ri_logical_writes": 232,
                            "ri_lifetime_max_phys_footprint": 240, "ri_instructions": 248, "ri_runnable_time": 288}),
    (lp.ProcTaskInfo, 96, {"pti_resident_size": 8, "pti_total_user": 16, "pti_total_system": 24,
                           "pti_policy": 48, "pti_csw": 80, "pti_threadnum": 84, "pti_numrunning": 88,
                           "pti_priority": 92}),
    (lp.ProcBSDInfo, 136, {"pbi_status": 4, "pbi_ppid": 16, "pbi_comm": 48, "pbi_name": 64, "pbi_nfiles": 96,
                           "pbi_nice": 116, "pbi_start_tvsec": 120, "pbi_start_tvusec": 128}),
    (lp.ProcBSDShortInfo, 64, {"pbsi_status": 12, "pbsi_comm": 16, "pbsi_uid": 36}),
    (lp.ProcThreadInfo, 112, {"pth_run_state": 24, "pth_sleep_time": 32, "pth_name": 48}),
    (lp.ProcFdInfo, 8, {"proc_fdtype": 4}),
    (lp.MachTimebaseInfo, 8, {"denom": 4}),
]


@pytest.mark.parametrize(("struct_type", "size", "offsets"), LAYOUTS, ids=[t[0].__name__ for t in LAYOUTS])
def test_darwin_struct_layout(struct_type: type[ctypes.Structure], size: int, offsets: dict[str, int]) -> None:
    assert ctypes.sizeof(struct_type) == size
    for name, offset in offsets.items():
        assert getattr(struct_type, name).offset == offset, name


def test_darwin_rusage_versions_extend_each_other() -> None:
    v2 = [name for name, _ in lp.RusageInfoV2._fields_]
    v3 = [name for name, _ in lp.RusageInfoV3._fields_]
    v4 = [name for name, _ in lp.RusageInfoV4._fields_]
    assert v3[: len(v2)] == v2 and v4[: len(v3)] == v3
    assert len(set(v4)) == len(v4)


def _rusage_bytes(values: dict[str, int], size: int = 296) -> bytes:
    raw = bytearray(size)
    raw[0:16] = bytes(range(16))  # a uuid
    for name, value in values.items():
        struct.pack_into("<Q", raw, getattr(lp.RusageInfoV4, name).offset, value)
    return bytes(raw)


def test_darwin_parse_rusage_reads_disk_bytes_at_their_offsets() -> None:
    raw = _rusage_bytes({"ri_user_time": 48_000_000, "ri_system_time": 12_000_000, "ri_resident_size": 7 << 20,
                         "ri_phys_footprint": 9 << 20, "ri_diskio_bytesread": 123_456_789,
                         "ri_diskio_byteswritten": 2**40 + 5, "ri_logical_writes": 999,
                         "ri_child_user_time": 240_000_000, "ri_child_system_time": 24_000})
    usage = lp.parse_rusage(raw)
    assert usage == lp.Rusage(user_ticks=48_000_000, system_ticks=12_000_000, resident_bytes=7 << 20,
                              phys_footprint_bytes=9 << 20, diskio_bytes_read=123_456_789,
                              diskio_bytes_written=2**40 + 5, child_user_ticks=240_000_000,
                              child_system_ticks=24_000)
    assert lp.parse_rusage(raw[:160]) == usage  # a v2 buffer is enough


def test_darwin_parse_rusage_rejects_short_buffers() -> None:
    with pytest.raises(ValueError, match="159 bytes"):
        lp.parse_rusage(bytes(159))


def test_darwin_parse_taskinfo() -> None:
    raw = struct.pack("<6Q12i", 1 << 32, 50 << 20, 240_000_000, 24_000_000, 0, 0,
                      0, 10, 0, 0, 0, 0, 0, 0, 77, 9, 2, 31)
    assert len(raw) == 96
    info = lp.parse_taskinfo(raw)
    assert info == lp.TaskInfo(resident_bytes=50 << 20, user_ticks=240_000_000, system_ticks=24_000_000,
                               threads=9, running_threads=2, virtual_bytes=1 << 32, faults=10, pageins=0,
                               context_switches=77)
    with pytest.raises(ValueError):
        lp.parse_taskinfo(raw[:95])


@pytest.mark.parametrize(("numer", "denom", "rate"), [(125, 3, 24_000_000.0), (1, 1, 1e9), (3, 125, 1e9 * 125 / 3)])
def test_darwin_timebase_from_mach_timebase_info(numer: int, denom: int, rate: float) -> None:
    assert lp.Timebase.from_mach(numer, denom).ticks_per_second == pytest.approx(rate)


def test_darwin_apple_silicon_ticks_convert_to_seconds() -> None:
    base = lp.Timebase.from_mach(125, 3)
    # 1.5 s of CPU on Apple silicon: 36 million ticks, which a nanosecond reading would call 36 ms
    assert base.seconds(36_000_000) == pytest.approx(1.5)
    assert lp.Timebase(lp.NANOSECOND_TICKS_PER_SECOND).seconds(36_000_000) == pytest.approx(0.036)
    with pytest.raises(ValueError):
        lp.Timebase.from_mach(0, 1)


def test_darwin_pick_ticks_per_second() -> None:
    candidates = [lp.APPLE_SILICON_TICKS_PER_SECOND, lp.NANOSECOND_TICKS_PER_SECOND]
    assert lp.pick_ticks_per_second(1_200_000, 0.05, candidates) == lp.APPLE_SILICON_TICKS_PER_SECOND
    assert lp.pick_ticks_per_second(52_000_000, 0.05, candidates) == lp.NANOSECOND_TICKS_PER_SECOND
    assert lp.pick_ticks_per_second(10_000, 0.05, candidates) is None  # neither fits within 25 %
    assert lp.pick_ticks_per_second(0, 0.05, candidates) is None


class FakeLib:
    """Stands in for libSystem: proc_pidinfo / proc_pid_rusage / proc_pidpath over a table of pids."""

    def __init__(self) -> None:
        self.fds = {10: 5, os.getpid(): 3}  # the probe asks about our own pid
        self.threads = {10: [lp.TH_STATE_WAITING, lp.TH_STATE_UNINTERRUPTIBLE, None]}  # None: exits mid-read
        self.denied: set[int] = {20}
        self.empty_fd_table: set[int] = set()  # pids whose sizing call already answers 0 bytes
        self.calls: list[tuple[str, int, int]] = []
        self.errno = 0
        self.rusage_flavors_ok = {lp.RUSAGE_INFO_V2, lp.RUSAGE_INFO_V3}
        self.paths = {10: b"/Applications/Caf\xc3\xa9.app/Contents/MacOS/Caf\xff"}
        self.after_fill: Callable[[int], None] = lambda pid: None  # runs while the GIL would be released
        for name in ("proc_pidinfo", "proc_pid_rusage", "proc_pidpath", "sysctlbyname", "mach_timebase_info"):
            setattr(self, name, _Func(getattr(self, "_" + name)))

    def _fail(self, pid: int) -> int:
        ctypes.set_errno(errno.EPERM if pid in self.denied else errno.ESRCH)
        return -1 if pid in self.denied else 0

    def _proc_pidinfo(self, pid: int, flavor: int, arg: int, buf: object, size: int) -> int:
        self.calls.append(("pidinfo", pid, flavor))
        if pid not in self.fds:
            return self._fail(pid)
        if flavor == lp.PROC_PIDLISTFDS:
            count = self.fds[pid]
            if buf is None:
                if pid in self.empty_fd_table:
                    return 0
                return max(count, 64) * 8  # the descriptor table size, at least the open count
            target = buf._obj  # type: ignore[attr-defined]
            count = min(count, size // 8)
            for i in range(count):
                struct.pack_into("<iI", target, i * 8, i, 1)
            return count * 8
        if flavor == lp.PROC_PIDLISTTHREADS:
            handles = buf._obj  # type: ignore[attr-defined]
            states = self.threads[pid]
            for i in range(len(states)):
                handles[i] = 1000 + i
            return len(states) * 8
        if flavor == lp.PROC_PIDTHREADINFO:
            state = self.threads[pid][arg - 1000]
            if state is None:
                ctypes.set_errno(errno.ESRCH)
                return 0
            buf._obj.pth_run_state = state  # type: ignore[attr-defined]
            return ctypes.sizeof(lp.ProcThreadInfo)
        if flavor == lp.PROC_PIDTASKINFO:
            info = buf._obj  # type: ignore[attr-defined]
            info.pti_total_user, info.pti_threadnum, info.pti_resident_size = 24_000_000, 3, pid << 20
            self.after_fill(pid)
            return size
        return 0

    def _proc_pid_rusage(self, pid: int, flavor: int, buf: object) -> int:
        self.calls.append(("rusage", pid, flavor))
        if flavor not in self.rusage_flavors_ok:
            ctypes.set_errno(errno.EINVAL)
            return -1
        if pid not in self.fds:
            self._fail(pid)
            return -1
        buf._obj.ri_diskio_bytesread = 4096  # type: ignore[attr-defined]
        buf._obj.ri_diskio_byteswritten = pid  # type: ignore[attr-defined]
        self.after_fill(pid)
        return 0

    def _proc_pidpath(self, pid: int, buf: ctypes.Array, size: int) -> int:
        if pid not in self.fds:
            return self._fail(pid)
        path = self.paths.get(pid, b"/usr/libexec/proc-%d" % pid)
        ctypes.memmove(buf, path, len(path))
        self.after_fill(pid)
        return len(path)

    def _sysctlbyname(self, name: bytes, value: object, size: object, new: object, new_size: int) -> int:
        value._obj.value = 24_000_000  # type: ignore[attr-defined]
        return 0

    def _mach_timebase_info(self, info: object) -> int:
        return 0


class _Func:
    """A callable with settable argtypes/restype, like a ctypes function pointer."""

    def __init__(self, fn: object) -> None:
        self.fn = fn

    def __call__(self, *args: object) -> int:
        return self.fn(*args)  # type: ignore[operator]


@pytest.fixture
def fake() -> tuple[lp.LibProc, FakeLib]:
    lib = FakeLib()
    return lp.LibProc(loader=lambda: lib), lib  # type: ignore[arg-type, return-value]


def test_darwin_libproc_is_lazy_and_refuses_other_platforms() -> None:
    proc = lp.LibProc()
    if sys.platform != "darwin":
        with pytest.raises(OSError, match="only available on macOS"):
            proc.task_info(1)


def test_darwin_libproc_fd_count_uses_the_filled_size_not_the_table_size(fake) -> None:
    proc, lib = fake
    lib.fds[10] = 300  # more than the preallocated buffer holds
    assert proc.fd_count(10) == 300
    assert [c for c in lib.calls if c[0] == "pidinfo"] == [("pidinfo", 10, lp.PROC_PIDLISTFDS)] * 2


def test_darwin_libproc_no_open_files_is_zero_not_an_error(fake) -> None:
    """libproc answers 0 bytes, errno untouched, for a process with no descriptors: 0 fds, not absent."""
    proc, lib = fake
    lib.fds[10] = 0
    assert proc.fd_count(10) == 0  # the table is sized, then 0 bytes are filled in
    lib.empty_fd_table.add(10)
    assert proc.fd_count(10) == 0  # the sizing call already says 0
    with pytest.raises(lp.ProcessGone):
        proc.fd_count(99)  # 0 with errno ESRCH is still a vanished process


def test_darwin_libproc_translates_errno(fake) -> None:
    proc, _ = fake
    with pytest.raises(lp.AccessDenied):
        proc.task_info(20)
    with pytest.raises(lp.ProcessGone):
        proc.rusage(30)
    with pytest.raises(lp.ProcessGone):
        proc.pid_path(30)


def test_darwin_libproc_rusage_picks_the_newest_accepted_flavor(fake) -> None:
    proc, lib = fake
    usage = proc.rusage(10)
    assert usage.diskio_bytes_read == 4096
    flavors = [c[2] for c in lib.calls if c[0] == "rusage"]
    assert flavors == [lp.RUSAGE_INFO_V4, lp.RUSAGE_INFO_V3, lp.RUSAGE_INFO_V3]


def test_darwin_libproc_thread_states_and_task_info(fake) -> None:
    proc, _ = fake
    assert proc.thread_states(10, 3) == [lp.TH_STATE_WAITING, lp.TH_STATE_UNINTERRUPTIBLE]
    info = proc.task_info(10)
    assert (info.user_ticks, info.threads) == (24_000_000, 3)
    assert proc.timebase().seconds(info.user_ticks) == pytest.approx(1.0)


def test_darwin_libproc_pid_path_keeps_undecodable_bytes(fake) -> None:
    proc, _ = fake
    path = proc.pid_path(10)
    assert path.startswith("/Applications/Café.app/")
    assert path.encode("utf-8", "surrogateescape").endswith(b"Caf\xff")


_READERS = {
    "task_info": lambda proc, pid: proc.task_info(pid).resident_bytes >> 20,
    "rusage": lambda proc, pid: proc.rusage(pid).diskio_bytes_written,
    "pid_path": lambda proc, pid: int(proc.pid_path(pid).rsplit("-", 1)[-1]),
}


@pytest.mark.parametrize("call", sorted(_READERS))
def test_darwin_libproc_calls_from_two_threads_keep_their_own_results(fake, call: str) -> None:
    # The scan and the network source's pid lookups share one LibProc; a real call releases the GIL
    # between filling the buffer and copying it out, which after_fill stands in for.
    proc, lib = fake
    lib.fds.update({41: 1, 42: 1})
    read = _READERS[call]
    filled, other_done = threading.Event(), threading.Event()

    def pause(pid: int) -> None:
        if pid == 41:
            filled.set()
            other_done.wait(0.3)  # the other thread's call would overwrite a shared buffer now

    lib.after_fill = pause
    results: dict[str, int] = {}
    worker = threading.Thread(target=lambda: results.update(first=read(proc, 41)))
    worker.start()
    assert filled.wait(10)
    results["second"] = read(proc, 42)
    other_done.set()
    worker.join(10)
    assert results == {"first": 41, "second": 42}


def test_darwin_parsers_agree_with_the_ctypes_structures() -> None:
    raw = os.urandom(ctypes.sizeof(lp.RusageInfoV4))
    ri = lp.RusageInfoV4.from_buffer_copy(raw)
    assert lp.parse_rusage(raw) == lp.Rusage(
        user_ticks=ri.ri_user_time, system_ticks=ri.ri_system_time, resident_bytes=ri.ri_resident_size,
        phys_footprint_bytes=ri.ri_phys_footprint, diskio_bytes_read=ri.ri_diskio_bytesread,
        diskio_bytes_written=ri.ri_diskio_byteswritten, child_user_ticks=ri.ri_child_user_time,
        child_system_ticks=ri.ri_child_system_time)
    raw = os.urandom(ctypes.sizeof(lp.ProcTaskInfo))
    ti = lp.ProcTaskInfo.from_buffer_copy(raw)
    assert lp.parse_taskinfo(raw) == lp.TaskInfo(
        resident_bytes=ti.pti_resident_size, user_ticks=ti.pti_total_user, system_ticks=ti.pti_total_system,
        threads=ti.pti_threadnum, running_threads=ti.pti_numrunning, virtual_bytes=ti.pti_virtual_size,
        faults=ti.pti_faults & 0xFFFFFFFF, pageins=ti.pti_pageins & 0xFFFFFFFF,
        context_switches=ti.pti_csw & 0xFFFFFFFF)
