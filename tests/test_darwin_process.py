"""The macOS process source over a faked sysctl table and libproc layer (and psutil's table on this machine)."""

from __future__ import annotations

import os
import plistlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from atlas_exporter.collectors.process.bundles_darwin import BundleNamer
from atlas_exporter.collectors.process.libproc_darwin import (
    APPLE_SILICON_TICKS_PER_SECOND,
    NANOSECOND_TICKS_PER_SECOND,
    TH_STATE_RUNNING,
    TH_STATE_UNINTERRUPTIBLE,
    TH_STATE_WAITING,
    AccessDenied,
    ProcessGone,
    Rusage,
    TaskInfo,
    Timebase,
)
from atlas_exporter.collectors.process.source_darwin import (
    DarwinProcessSource,
    KInfo,
    PsutilTable,
    raw_kinfo,
    state_letter,
)
from atlas_exporter.model import ProcessId

TICKS = APPLE_SILICON_TICKS_PER_SECOND
STAGES = ("kinfo", "task", "rusage", "fds", "threads")


@dataclass
class FakeProc:
    """One process as the fakes report it.

    `vanish_at` makes every call from that stage on fail with ESRCH; `fail` makes one stage raise.
    """

    pid: int
    name: str = "proc"
    ppid: int = 1
    uid: int = 501
    status: str = "sleeping"
    started_us: int = 1_760_000_000_000_000
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    user_seconds: float = 2.0
    system_seconds: float = 0.5
    threads: int = 4
    running: int = 0
    resident: int = 30 << 20
    footprint: int = 25 << 20
    disk_read: int = 1_000_000
    disk_written: int = 250_000
    fds: int = 12
    reaped_user: float = 0.0
    reaped_system: float = 0.0
    virtual: int = 400 << 30
    faults: int = 9000
    pageins: int = 40
    switches: int = 5000
    thread_states: list[int] = field(default_factory=lambda: [TH_STATE_WAITING] * 4)
    denied: bool = False
    vanish_at: str | None = None
    fail: dict[str, Exception] = field(default_factory=dict)

    def check(self, stage: str) -> None:
        if stage in self.fail:
            raise self.fail[stage]
        if self.vanish_at is not None and STAGES.index(stage) >= STAGES.index(self.vanish_at):
            raise ProcessGone(f"pid {self.pid}")
        if self.denied and stage != "kinfo":
            raise AccessDenied(f"pid {self.pid}")


class FakeTable:
    """The sysctl side: kinfo and name work for every process, cmdline needs the same uid."""

    def __init__(self, procs: list[FakeProc]) -> None:
        self.procs = {p.pid: p for p in procs}

    def _get(self, pid: int) -> FakeProc:
        proc = self.procs.get(pid)
        if proc is None:
            raise ProcessGone(f"pid {pid}")
        proc.check("kinfo")
        return proc

    def pids(self) -> list[int]:
        return sorted(self.procs)

    def kinfo(self, pid: int) -> KInfo:
        p = self._get(pid)
        return KInfo(ppid=p.ppid, uid=p.uid, status=p.status, started_us=p.started_us,
                     start_time=p.started_us / 1e6, comm=p.name[:16])

    def name(self, pid: int) -> str:
        return self._get(pid).name

    def cmdline(self, pid: int) -> tuple[str, ...]:
        p = self._get(pid)
        if p.denied:
            raise AccessDenied(f"pid {pid}")
        return () if p.status == "zombie" else p.cmdline


class FakeLibProc:
    """The libproc side, in Mach ticks at `ticks_per_second` (24 MHz: Apple silicon)."""

    def __init__(self, table: FakeTable, ticks_per_second: float = TICKS, reported: float | None = None) -> None:
        self.table = table
        self.rate = ticks_per_second
        self.reported = reported or ticks_per_second
        self.calls: list[tuple[str, int]] = []

    def _get(self, pid: int, stage: str) -> FakeProc:
        self.calls.append((stage, pid))
        proc = self.table.procs.get(pid)
        if proc is None:
            raise ProcessGone(f"pid {pid}")
        proc.check(stage)
        return proc

    def task_info(self, pid: int) -> TaskInfo:
        p = self._get(pid, "task")
        if p.status == "zombie":
            raise ProcessGone(f"pid {pid} is a zombie")
        return TaskInfo(resident_bytes=p.resident, user_ticks=round(p.user_seconds * self.rate),
                        system_ticks=round(p.system_seconds * self.rate), threads=p.threads, running_threads=p.running,
                        virtual_bytes=p.virtual, faults=p.faults, pageins=p.pageins, context_switches=p.switches)

    def rusage(self, pid: int) -> Rusage:
        p = self._get(pid, "rusage")
        return Rusage(user_ticks=round(p.user_seconds * self.rate), system_ticks=round(p.system_seconds * self.rate),
                      resident_bytes=p.resident, phys_footprint_bytes=p.footprint, diskio_bytes_read=p.disk_read,
                      diskio_bytes_written=p.disk_written, child_user_ticks=round(p.reaped_user * self.rate),
                      child_system_ticks=round(p.reaped_system * self.rate))

    def fd_count(self, pid: int) -> int:
        p = self._get(pid, "fds")
        if p.status == "zombie":
            raise ProcessGone(f"pid {pid} is a zombie")
        return p.fds

    def thread_states(self, pid: int, threads: int) -> list[int]:
        return list(self._get(pid, "threads").thread_states)

    def pid_path(self, pid: int) -> str:
        p = self.table.procs.get(pid)
        if p is None or p.exe is None:
            raise ProcessGone(f"pid {pid}")
        return p.exe

    def timebase(self) -> Timebase:
        return Timebase(self.reported)


def make_source(procs: list[FakeProc], **kwargs: object) -> tuple[DarwinProcessSource, FakeLibProc]:
    table = FakeTable(procs)
    libproc = FakeLibProc(table)
    source = DarwinProcessSource(table, libproc, BundleNamer(read=_no_plist), euid=lambda: 501,
                                 user_name=lambda uid: {0: "root", 501: "ann"}.get(uid, str(uid)), **kwargs)
    return source, libproc


def _no_plist(path: str) -> bytes:
    raise FileNotFoundError(path)


def by_pid(source: DarwinProcessSource) -> tuple[dict, object]:
    scan = source.scan()
    return {s.id.pid: s for s in scan.samples}, scan.errors


def test_darwin_sample_of_own_process_converts_ticks_to_seconds() -> None:
    source, _ = make_source([FakeProc(pid=410, user_seconds=12.25, system_seconds=3.5, running=1)])
    samples, errors = by_pid(source)
    s = samples[410]
    assert (s.cpu_user_seconds, s.cpu_system_seconds) == (pytest.approx(12.25), pytest.approx(3.5))
    assert (s.threads, s.resident_bytes, s.footprint_bytes, s.open_fds) == (4, 30 << 20, 25 << 20, 12)
    assert (s.read_bytes, s.written_bytes) == (1_000_000, 250_000)
    assert s.read_ops is None and s.write_ops is None  # no per-process syscall counts on macOS
    assert s.id == ProcessId(410, 1_760_000_000_000_000)
    assert s.start_time_seconds == pytest.approx(1_760_000_000.0)
    assert (s.state, s.ppid, s.comm) == ("R", 1, "proc")
    assert (errors.access_denied, errors.vanished) == (0, 0)
    # faults less page-ins are minor; page-ins are major; every thread's switches, no split
    assert (s.minor_faults, s.major_faults, s.context_switches, s.virtual_bytes) == (8960, 40, 5000, 400 << 30)
    assert s.voluntary_switches is None and s.swap_bytes is None and s.fd_limit is None  # not on macOS


def test_darwin_reaped_children_cpu_comes_from_rusage_child_times() -> None:
    source, _ = make_source([FakeProc(pid=30, name="make", reaped_user=90.0, reaped_system=15.5),
                             FakeProc(pid=31, denied=True)])
    samples, _ = by_pid(source)
    assert samples[30].reaped_cpu_user_seconds == pytest.approx(90.0)
    assert samples[30].reaped_cpu_system_seconds == pytest.approx(15.5)
    assert samples[31].reaped_cpu_user_seconds is None


def test_darwin_other_users_process_keeps_state_and_start_only() -> None:
    source, libproc = make_source([FakeProc(pid=88, uid=0, status="running", denied=True), FakeProc(pid=500)])
    samples, errors = by_pid(source)
    s = samples[88]
    assert s.state == "?" and s.start_time_seconds == pytest.approx(1_760_000_000.0)
    assert [s.cpu_user_seconds, s.cpu_system_seconds, s.threads, s.resident_bytes, s.open_fds, s.read_bytes,
            s.written_bytes, s.footprint_bytes, s.minor_faults, s.major_faults, s.context_switches,
            s.virtual_bytes] == [None] * 12
    assert (errors.access_denied, errors.vanished) == (1, 0)  # one process, counted once
    assert [c for c in libproc.calls if c[1] == 88] == [("task", 88)]  # no further calls once denied
    assert samples[500].cpu_user_seconds == pytest.approx(2.0)


@pytest.mark.parametrize("stage", ["kinfo", "task", "rusage", "fds"])
def test_darwin_process_vanishing_mid_read_is_skipped_and_counted(stage: str) -> None:
    source, _ = make_source([FakeProc(pid=7, vanish_at=stage), FakeProc(pid=8)])
    samples, errors = by_pid(source)
    assert sorted(samples) == [8]
    assert (errors.vanished, errors.access_denied) == (1, 0)


def test_darwin_thread_exit_during_thread_scan_keeps_the_sample() -> None:
    source, _ = make_source([FakeProc(pid=7, vanish_at="threads")])
    samples, errors = by_pid(source)
    assert samples[7].state == "S" and errors.vanished == 0


def test_darwin_zombie_has_cpu_from_rusage_and_no_threads() -> None:
    source, _ = make_source([FakeProc(pid=66, status="zombie", user_seconds=1.5, system_seconds=0.25)])
    samples, errors = by_pid(source)
    z = samples[66]
    assert z.state == "Z"
    assert (z.cpu_user_seconds, z.cpu_system_seconds) == (pytest.approx(1.5), pytest.approx(0.25))
    assert (z.threads, z.resident_bytes, z.open_fds) == (0, 0, None)
    assert z.read_bytes == 1_000_000
    assert (errors.vanished, errors.access_denied) == (0, 0)


def test_darwin_other_users_zombie() -> None:
    source, _ = make_source([FakeProc(pid=67, status="zombie", denied=True, uid=0)])
    samples, errors = by_pid(source)
    assert samples[67].state == "Z" and samples[67].cpu_user_seconds is None
    assert errors.access_denied == 1


@pytest.mark.parametrize(("proc", "state"), [
    (FakeProc(pid=1, status="stopped", running=1), "T"),
    (FakeProc(pid=1, running=2), "R"),
    (FakeProc(pid=1, thread_states=[TH_STATE_WAITING, TH_STATE_UNINTERRUPTIBLE]), "D"),
    (FakeProc(pid=1, thread_states=[TH_STATE_UNINTERRUPTIBLE, TH_STATE_RUNNING]), "R"),
    (FakeProc(pid=1, thread_states=[TH_STATE_WAITING] * 3), "S"),
    (FakeProc(pid=1, status="idle"), "S"),
])
def test_darwin_state_letters(proc: FakeProc, state: str) -> None:
    source, _ = make_source([proc])
    assert source.scan().samples[0].state == state


def test_darwin_thread_scan_can_be_switched_off() -> None:
    source, libproc = make_source([FakeProc(pid=3, thread_states=[TH_STATE_UNINTERRUPTIBLE])], thread_states=False)
    assert source.scan().samples[0].state == "S"
    assert ("threads", 3) not in libproc.calls


def test_darwin_state_letter_without_task_info_is_unknown_unless_zombie_or_stopped() -> None:
    # macOS keeps the BSD status at SRUN while a process lives: it cannot tell R, S or D apart
    assert [state_letter(s, None, None) for s in ("running", "sleeping", "stopped", "zombie", "new")] == \
        ["?", "?", "T", "Z", "?"]


@pytest.mark.parametrize("error", [OSError(5, "proc_taskinfo: short read"), AccessDenied("pid 9")])
def test_darwin_unreadable_task_info_gives_an_unknown_state(error: Exception) -> None:
    source, _ = make_source([FakeProc(pid=9, status="running", fail={"task": error})])
    [sample] = source.scan().samples
    assert sample.state == "?" and sample.threads is None


@pytest.mark.parametrize("error", [OSError(5, "PROC_PIDLISTTHREADS failed"), AccessDenied("pid 9")])
def test_darwin_unreadable_thread_states_give_an_unknown_state(error: Exception) -> None:
    source, _ = make_source([FakeProc(pid=9, fail={"threads": error}), FakeProc(pid=10, running=1,
                                                                                fail={"threads": error})])
    samples, _ = by_pid(source)
    assert samples[9].state == "?"  # no thread running: D or S, and the threads cannot say which
    assert samples[10].state == "R" and samples[9].threads == 4


@pytest.mark.parametrize("error", [OSError(12, "Cannot allocate memory"), AccessDenied("pid 7")])
def test_darwin_unreadable_process_is_skipped_not_gone(error: Exception) -> None:
    source, _ = make_source([FakeProc(pid=7, fail={"kinfo": error}), FakeProc(pid=8, vanish_at="kinfo"),
                             FakeProc(pid=9)])
    scan = source.scan()
    assert [s.id.pid for s in scan.samples] == [9]
    assert scan.skipped == frozenset({7})  # still there: the tracker keeps it; 8 exited
    assert (scan.errors.access_denied, scan.errors.vanished) == (1, 1)


def test_darwin_failed_process_listing_fails_the_pass() -> None:
    source, _ = make_source([FakeProc(pid=7)])

    def broken() -> list[int]:
        raise OSError(12, "sysctl KERN_PROC_ALL: Cannot allocate memory")

    source.table.pids = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="KERN_PROC_ALL"):
        source.scan()


def test_darwin_kernel_task_is_left_out() -> None:
    source, libproc = make_source([FakeProc(pid=0, name="kernel_task", uid=0), FakeProc(pid=1, name="launchd")])
    assert [s.id.pid for s in source.scan().samples] == [1]
    assert all(pid != 0 for _, pid in libproc.calls)


def test_darwin_start_token_and_identity_with_bundle(tmp_path: Path) -> None:
    app = tmp_path / "Applications" / "Google Chrome.app"
    helper_dir = app / "Contents/Frameworks/Google Chrome Framework.framework/Versions/1/Helpers"
    helper_exe = helper_dir / "Google Chrome Helper (GPU).app/Contents/MacOS/Google Chrome Helper (GPU)"
    helper_exe.parent.mkdir(parents=True)
    (app / "Contents" / "Info.plist").write_bytes(plistlib.dumps({"CFBundleDisplayName": "Google Chrome"},
                                                                 fmt=plistlib.FMT_BINARY))
    proc = FakeProc(pid=902, name="Google Chrome H", exe=str(helper_exe), cmdline=(str(helper_exe), "--type=gpu"))
    table = FakeTable([proc, FakeProc(pid=903, uid=0, denied=True, exe="/usr/sbin/cfprefsd", name="cfprefsd")])
    source = DarwinProcessSource(table, FakeLibProc(table), euid=lambda: 501,
                                 user_name=lambda uid: {0: "root", 501: "ann"}[uid])
    token = source.start_token(902)
    assert token == ProcessId(902, proc.started_us)
    ident = source.identity(token)
    assert ident is not None
    assert (ident.comm, ident.exe, ident.user, ident.bundle) == ("Google Chrome H", str(helper_exe), "ann",
                                                                 "Google Chrome")
    assert ident.cmdline == (str(helper_exe), "--type=gpu")
    assert ident.cgroup is None
    other = source.identity(source.start_token(903))
    assert other is not None
    assert (other.exe, other.user, other.cmdline, other.bundle) == ("/usr/sbin/cfprefsd", "root", (), None)


def test_darwin_identity_of_a_reused_or_gone_pid_is_none() -> None:
    source, _ = make_source([FakeProc(pid=50)])
    assert source.identity(ProcessId(50, 1)) is None  # same pid, another start time
    assert source.identity(ProcessId(51, 1_760_000_000_000_000)) is None
    assert source.start_token(51) is None


def test_darwin_statuses_say_what_an_unprivileged_run_misses() -> None:
    source, _ = make_source([])
    [status] = source.statuses()
    assert (status.name, status.active, status.privilege) == ("libproc", True, "user")
    assert "running as ann" in status.reason and "other users' processes" in status.reason
    root = DarwinProcessSource(FakeTable([]), FakeLibProc(FakeTable([])), euid=lambda: 0)
    assert root.statuses()[0].privilege == "root" and root.statuses()[0].reason == ""


def test_darwin_without_timebase_cpu_is_absent_and_the_source_says_why() -> None:
    table = FakeTable([FakeProc(pid=5)])

    class NoTimebase(FakeLibProc):
        def timebase(self) -> Timebase:
            raise OSError(5, "mach_timebase_info failed")

    source = DarwinProcessSource(table, NoTimebase(table), euid=lambda: 501)
    sample = source.scan().samples[0]
    assert sample.cpu_user_seconds is None and sample.resident_bytes == 30 << 20
    [status] = source.statuses()
    assert not status.active and "timebase" in status.reason


def _clocked(rate: float, reported: float) -> tuple[DarwinProcessSource, callable]:
    """A source whose own-pid CPU ticks follow a fake process_time() at `rate` ticks per second."""
    me = FakeProc(pid=4242, user_seconds=0.0, system_seconds=0.0)
    table = FakeTable([me])
    libproc = FakeLibProc(table, ticks_per_second=rate, reported=reported)
    clock = {"t": 100.0}

    def process_time() -> float:
        clock["t"] += 0.01
        me.user_seconds = clock["t"] - 100.0
        return clock["t"]

    return DarwinProcessSource(table, libproc, euid=lambda: 501), process_time


@pytest.mark.parametrize(("true_rate", "reported", "expected"), [
    (APPLE_SILICON_TICKS_PER_SECOND, NANOSECOND_TICKS_PER_SECOND, APPLE_SILICON_TICKS_PER_SECOND),  # Rosetta 1/1
    (APPLE_SILICON_TICKS_PER_SECOND, APPLE_SILICON_TICKS_PER_SECOND, APPLE_SILICON_TICKS_PER_SECOND),
    (NANOSECOND_TICKS_PER_SECOND, NANOSECOND_TICKS_PER_SECOND, NANOSECOND_TICKS_PER_SECOND),  # Intel
    (3_000_000.0, APPLE_SILICON_TICKS_PER_SECOND, APPLE_SILICON_TICKS_PER_SECOND),  # inconclusive: keep
])
def test_darwin_timebase_calibration(true_rate: float, reported: float, expected: float) -> None:
    source, process_time = _clocked(true_rate, reported)
    source.calibrate(process_time=process_time, burn_seconds=0.05, pid=4242)
    assert source.timebase is not None and source.timebase.ticks_per_second == expected


# psutil's table is the real sysctl side on a Mac; its calls and error translation run here too.

def _wait_for(predicate: callable, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def child() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "marker-arg"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_darwin_psutil_table_reads_a_live_child(child: subprocess.Popen) -> None:
    table = PsutilTable()
    kinfo = table.kinfo(child.pid)
    assert kinfo.ppid == os.getpid() and kinfo.uid == os.getuid()
    assert kinfo.start_time == psutil.Process(child.pid).create_time()
    assert abs(kinfo.start_time - time.time()) < 300
    assert kinfo.started_us == table.kinfo(child.pid).started_us > 0  # stable for the same process
    assert child.pid in table.pids()
    _wait_for(lambda: "marker-arg" in table.cmdline(child.pid))
    assert table.name(child.pid).startswith("python")


def test_darwin_psutil_table_zombie_and_gone(child: subprocess.Popen) -> None:
    table = PsutilTable()
    os.kill(child.pid, signal.SIGKILL)
    _wait_for(lambda: table.kinfo(child.pid).status == "zombie")  # killed, not yet reaped
    assert table.cmdline(child.pid) == ()
    child.wait(timeout=30)
    with pytest.raises(ProcessGone):
        table.kinfo(child.pid)
    source = DarwinProcessSource(table, FakeLibProc(FakeTable([])), euid=lambda: 501)
    assert source.start_token(child.pid) is None


def test_darwin_scan_of_this_machines_table_with_libproc_denied(child: subprocess.Popen) -> None:
    table = PsutilTable()

    class DenyAll(FakeLibProc):
        def _get(self, pid: int, stage: str) -> FakeProc:
            raise AccessDenied(f"pid {pid}")

    source = DarwinProcessSource(table, DenyAll(FakeTable([])), euid=lambda: 501)
    scan = source.scan()
    mine = [s for s in scan.samples if s.id.pid == child.pid]
    assert len(mine) == 1 and mine[0].ppid == os.getpid() and mine[0].cpu_user_seconds is None
    assert scan.errors.access_denied >= len(scan.samples) - 1  # every live process was denied


class _Impl:
    """psutil's platform-level Process on a Mac: kinfo values, with or without the `monotonic` argument."""

    def __init__(self, new_api: bool, name: str | Exception) -> None:
        self.new_api, self._name = new_api, name

    def create_time(self, **kwargs: bool) -> float:
        if kwargs and not self.new_api:
            raise TypeError("create_time() got an unexpected keyword argument 'monotonic'")
        return 1_760_000_000.123456 if kwargs.get("monotonic") else 1_760_000_007.5

    def name(self) -> str:
        if isinstance(self._name, Exception):
            raise self._name
        return self._name


class _Proc:
    def __init__(self, impl: _Impl | None) -> None:
        if impl is not None:
            self._proc = impl


def test_darwin_raw_kinfo_start_time_survives_clock_steps() -> None:
    # psutil >= 7.1: the public create_time() is shifted after a clock step, the raw one is not
    assert raw_kinfo(_Proc(_Impl(True, "Google Chrome H")), 1_760_000_007.5) == (1_760_000_000.123456,
                                                                                 "Google Chrome H")
    assert raw_kinfo(_Proc(_Impl(False, "launchd")), 1_760_000_007.5) == (1_760_000_007.5, "launchd")
    assert raw_kinfo(_Proc(_Impl(True, psutil.NoSuchProcess(5))), 1.0) == (1_760_000_000.123456, None)
    assert raw_kinfo(_Proc(None), 3.25) == (3.25, None)  # no platform object: the public value


def test_identity_has_parent_and_working_folder_for_naming() -> None:
    from atlas_exporter.apps.naming_default import default_name

    class TableWithCwd(FakeTable):
        def cwd(self, pid: int) -> str | None:
            return {910: "/Users/ann/billing"}.get(pid)

    proc = FakeProc(pid=910, ppid=77, name="Python", exe="/opt/homebrew/bin/python3.12",
                    cmdline=("python3", "main.py"))
    table = TableWithCwd([proc])
    source = DarwinProcessSource(table, FakeLibProc(table), euid=lambda: 501, user_name=lambda uid: "ann")
    ident = source.identity(ProcessId(910, proc.started_us))
    assert ident is not None
    assert (ident.ppid, ident.cwd) == (77, "/Users/ann/billing")
    assert default_name(ident) == "billing"  # main.py by a relative path: named by its folder
    plain = DarwinProcessSource(FakeTable([proc]), FakeLibProc(FakeTable([proc])), euid=lambda: 501,
                                user_name=lambda uid: "ann").identity(ProcessId(910, proc.started_us))
    assert plain is not None and plain.cwd is None  # a table without cwd: names stay as before


def test_psutil_table_reads_the_working_folder() -> None:
    table = PsutilTable(darwin=False)
    assert table.cwd(os.getpid()) == os.getcwd()
    assert table.cwd(2 ** 22 + 12345) is None  # no such process
