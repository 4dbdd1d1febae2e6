"""`max_apps` slots: only exported apps take one, one fold for every source, and the cap holds for
the whole exposition (process, crash, exit and hang series) under churn."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_resolver import World, resolver

from atlas_exporter.apps.crashes import CrashBook, CrashEvent, TaskObservation
from atlas_exporter.apps.resolver import PidNaming
from atlas_exporter.collectors.crash.connector_linux import ProcEvent
from atlas_exporter.collectors.crash.source_linux import LinuxCrashSource
from atlas_exporter.collectors.hang.source_linux import BlockedScan, LinuxHangSource
from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from atlas_exporter.model import ProcSample
from conftest import parse_exposition, wait_for

IS_LINUX = sys.platform.startswith("linux")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TAG = uuid.uuid4().hex[:6]


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# ----------------------------------------------------------------------------- unit


def test_pid_naming_has_no_cgroup_names_and_does_not_raise() -> None:
    assert PidNaming(lambda pid: "x").app_of_cgroup("/system.slice/nginx.service") is None


def test_the_crash_book_keeps_the_resolvers_labels_and_drops_retired_apps() -> None:
    book = CrashBook(window_seconds=30)
    for i in range(600):  # no fold of its own: the resolver's is the only one
        book.record_crash(CrashEvent(source="x", time=1000.0 + 100 * i, reason="SIGSEGV", app=f"a{i}", pid=i))
    book.record_exit("a1", "error")
    book.record_hang("a2")
    assert len(book.crashes()) == 600 and ("other", "SIGSEGV") not in book.crashes()
    book.retire(["a1", "a2"])
    assert ("a1", "SIGSEGV") not in book.crashes() and book.exits() == {} and book.hangs() == {}
    assert len(book.crashes()) == 598


def test_crashes_and_cpu_of_one_app_share_one_label() -> None:
    """The resolver gives back retired apps' slots; a crash of a later app keeps its own name."""
    world = World()
    res = resolver(world, max_apps=2)
    source = LinuxCrashSource(res, procfs=Path("/nonexistent"), use_connector=False)
    for i in range(3):  # three apps come and go: each crashes, is retired, gives back its slot
        token = world.add(100 + i, f"app{i}")
        assert res.app_for(ProcSample(token, 1, "S", 0.0, 0.0, 1, 0, time.time(), comm=f"app{i}")) == f"app{i}"
        source._record(CrashEvent(source="kmsg", time=1000.0 + 100 * i, reason="SIGSEGV", app=f"app{i}", pid=100 + i))
        res.release([f"app{i}"])
        source.retire([f"app{i}"])
    token = world.add(200, "late")
    assert res.app_for(ProcSample(token, 1, "S", 0.0, 0.0, 1, 0, time.time(), comm="late")) == "late"
    source._record(CrashEvent(source="kmsg", time=2000.0, reason="SIGSEGV", app="late", pid=200))
    assert source.book.crashes() == {("late", "SIGSEGV"): 1}


def test_naming_a_comm_at_exit_takes_no_slot(tmp_path: Path) -> None:
    """A process never named (over the exec naming budget) is named from its comm without a slot."""
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "comm").write_text("never-named\n")
    res = resolver(World(), max_apps=5)
    source = LinuxCrashSource(res, procfs=tmp_path, use_connector=False)
    assert source.names.app_at_exit(4242, failed=True) == "never-named"
    assert res.fold.admitted() == 0
    # a successful exit of it is `other`, taking no slot; a failed one takes one, as a crash does
    source._on_proc_event(ProcEvent("exit", 0, pid=4242, tgid=4242, exit_code=0))
    assert res.fold.admitted() == 0
    source._on_proc_event(ProcEvent("exit", 0, pid=4242, tgid=4242, exit_code=1 << 8))
    assert res.fold.admitted() == 1
    assert source.book.exits() == {("other", "success"): 1, ("never-named", "error"): 1}


def test_a_zombie_the_scan_never_saw_alive_is_not_named() -> None:
    world = World()
    res = resolver(world)
    token = world.add(300, "prometheus-proc", cmdline=())
    zombie = ProcSample(token, 1, "Z", 0.0, 0.0, 1, 0, time.time(), comm="prometheus-proc")
    assert res.app_for(zombie) is None and res.fold.admitted() == 0
    # seen alive first: its zombie keeps its app
    alive = world.add(301, "daemon")
    assert res.app_for(ProcSample(alive, 1, "S", 0.0, 0.0, 1, 0, time.time(), comm="daemon")) == "daemon"
    assert res.app_for(ProcSample(alive, 1, "Z", 0.0, 0.0, 1, 0, time.time(), comm="daemon")) == "daemon"


def test_a_process_watched_in_d_takes_a_slot_only_once_hung() -> None:
    """Gone between the scan and the naming: named from its comm, but no slot before it is hung."""
    res = resolver(World(), max_apps=5)
    now = [0.0]
    process = (777, 5)
    scan = BlockedScan(blocked=[TaskObservation(process=process, task=process, switches=3)],
                       comms={process: "backup-job"}, tasks=1, errors=0)
    source = LinuxHangSource(res, procfs=Path("/nonexistent"), threshold_seconds=30, clock=lambda: now[0],
                             scan=lambda procfs: scan)
    source.check()
    assert res.fold.admitted() == 0
    now[0] = 31.0
    assert source.check().started == (process,)
    assert res.fold.admitted() == 1 and source.book.hangs() == {"backup-job": 1}


# ----------------------------------------------------------------------------- real processes


@pytest.mark.skipif(not (IS_LINUX and IS_ROOT), reason="crash events need root: the proc connector")
def test_app_labels_stay_under_the_cap_while_distinct_programs_crash(tmp_path: Path) -> None:
    """Distinct programs, each scanned alive, crash and are retired one after another: the number of
    distinct `app` values in the whole exposition never exceeds max_apps + 1 (`other`)."""
    max_apps = 4
    config = parse_config({
        "max_apps": max_apps,
        "retention_seconds": 2.0,
        "snapshot_max_age_seconds": 0,
        "apps": [
            {"name": "crashy-{1}", "cmdline": f"atlas-slots-{TAG}-(\\d+)"},
            {"name": "host", "comm": ".*"},  # the rest of this shared machine is one app
        ],
    })
    exporter = Exporter(config, enabled={"process", "crash"})
    exporter.start()
    seen: set[str] = set()
    worst = 0
    last = [""]

    def apps() -> set[str]:
        nonlocal worst
        last[0] = exporter.render_metrics()[0].decode()
        values = parse_exposition(last[0])
        labels = set()
        for key in values:
            if 'app="' in key:
                labels.add(key.split('app="', 1)[1].split('"', 1)[0])
        worst = max(worst, len(labels))
        seen.update(labels)
        return labels

    program = "import ctypes, sys, time; time.sleep(1.0); ctypes.string_at(0)"
    python = shutil.which("python3") or sys.executable
    try:
        for i in range(6):
            name = f"crashy-{i}"
            proc = subprocess.Popen(["sh", "-c", f'exec {python} -c "{program}" "$0"', f"atlas-slots-{TAG}-{i}"],
                                    cwd="/", preexec_fn=_no_core, stderr=subprocess.DEVNULL)
            wait_for(lambda: name in apps(), timeout=30, message=f"{name} scanned alive")  # noqa: B023
            wait_for(lambda: apps() and proc.poll() is not None, timeout=60,  # noqa: B023
                     message=f"{name} to crash")  # scanned all its life
            assert proc.returncode != 0
            # under its own name, as its CPU: the slot it had while it ran is the one its crash takes
            wait_for(lambda: apps() and f'atlas_app_crashes_total{{app="{name}",reason="SIGSEGV"}}'  # noqa: B023
                     in parse_exposition(last[0]), timeout=30, message=f"{name}'s crash counted under its name")
            time.sleep(2.5)  # past retention: the scan retires it
            apps()
            assert len(apps()) <= max_apps + 1, apps()
    finally:
        apps()
        exporter.stop()
    assert worst <= max_apps + 1, (worst, seen)
    assert any(s.startswith("crashy-") for s in seen)


ZOMBIE_MAKER = """\
import os, sys, time
child = os.fork()
if child == 0:
    os.execv(sys.argv[1], [sys.argv[1]])
print(child, flush=True)
time.sleep(120)  # never reaps it
"""


@pytest.mark.skipif(not (IS_LINUX and IS_ROOT), reason="runs the exporter in this process as root")
def test_a_real_zombie_first_seen_dead_gets_no_app(tmp_path: Path) -> None:
    """A program whose first scan finds it a zombie (exe and cmdline gone) is not exported under its
    15-character comm; its parent, seen alive, is."""
    program = tmp_path / f"atlas-zombie-program-{TAG}"  # a comm cut to 15 characters: atlas-zombie-pr
    shutil.copy("/bin/true", program)
    maker = subprocess.Popen([sys.executable, "-c", ZOMBIE_MAKER, str(program)], stdout=subprocess.PIPE, text=True)
    try:
        assert maker.stdout is not None
        child = int(maker.stdout.readline())
        wait_for(lambda: Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                 timeout=30, message="the child to be a zombie")
        exporter = Exporter(parse_config({"snapshot_max_age_seconds": 0}), enabled={"process"})
        exporter.start()
        try:
            for _ in range(3):
                text = exporter.render_metrics()[0].decode()
                assert 'app="atlas-zombie-pr' not in text
                time.sleep(0.2)
            assert Path(f"/proc/{child}/stat").exists()  # still a zombie at the last scan
        finally:
            exporter.stop()
    finally:
        maker.kill()
        maker.wait(timeout=20)
        if maker.stdout is not None:
            maker.stdout.close()


EXIT_MAKER = """\
import os, sys, time
for program in sys.argv[1:]:
    if os.fork() == 0:
        os.execv(program, [program])
time.sleep(3)  # the exits are read while the children are zombies, then reaped
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


@pytest.mark.skipif(not (IS_LINUX and IS_ROOT), reason="exit events need root: the proc connector")
def test_real_exits_of_never_named_programs_take_a_slot_only_when_they_fail(tmp_path: Path) -> None:
    """Over the exec naming budget nothing is named at exec: a program that exits 0 is `other` and takes
    no slot; one that exits 1 is named from its comm and takes one, as a crash would."""
    from atlas_exporter.apps.naming import Namer
    from atlas_exporter.apps.resolver import AppResolver
    from atlas_exporter.platform import build_process_source

    ok, fail = tmp_path / f"ok{TAG}", tmp_path / f"no{TAG}"
    shutil.copy("/bin/true", ok)
    shutil.copy("/bin/false", fail)
    res = AppResolver(build_process_source(Path("/proc")), Namer(parse_config({}).apps), 100)
    source = LinuxCrashSource(res, report_dirs=(), names_per_second=0.001)  # no name, no capture at exec
    source.start()
    try:
        assert any(s.name == "proc_connector" and s.active for s in source.statuses())
        maker = subprocess.Popen([sys.executable, "-c", EXIT_MAKER, str(ok), str(fail)])
        wait_for(lambda: source.book.exits().get((f"no{TAG}", "error")) == 1, timeout=30,
                 message="the failed exit under its comm")
        assert maker.wait(timeout=60) == 0
    finally:
        source.stop()
    assert not res.fold.is_admitted(f"ok{TAG}") and res.fold.is_admitted(f"no{TAG}")
    assert (f"ok{TAG}", "success") not in source.book.exits()
    assert source.book.exits().get(("other", "success"), 0) >= 1


def test_a_duplicate_crash_takes_no_slot() -> None:
    """The same crash seen by a second source under another name (a report's file name) is not counted
    and takes no slot: only a counted crash exports its app."""
    res = resolver(World(), max_apps=5)
    source = LinuxCrashSource(res, procfs=Path("/nonexistent"), use_connector=False)
    source._record(CrashEvent(source="proc_connector", time=1000.0, reason="SIGSEGV", app="worker", pid=42))
    source._record(CrashEvent(source="kmsg", time=1001.0, reason="SIGSEGV", app="worker-thread", pid=42))
    assert source.book.crashes() == {("worker", "SIGSEGV"): 1}
    assert res.fold.is_admitted("worker") and not res.fold.is_admitted("worker-thread")
