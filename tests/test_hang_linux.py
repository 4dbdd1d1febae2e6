"""Linux hang detection: a fake /proc tree, a real vfork parent in D, and an I/O-heavy writer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_exporter.collectors.hang.source_linux import (
    BlockedScan,
    LinuxHangSource,
    make_hang_source,
    scan_blocked_tasks,
)
from atlas_exporter.model import AppView, Snapshot

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

VFORK_C = r"""
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int secs = argc > 1 ? atoi(argv[1]) : 10;
    pid_t child = vfork();           /* the parent waits in D until the child execs or exits */
    if (child == 0) { sleep(secs); _exit(0); }
    return child < 0;
}
"""


def _stat(pid: int, comm: str, state: str, ppid: int, flags: int, start: int, threads: int = 2) -> str:
    rest = ["0"] * 40
    rest[0], rest[1], rest[6], rest[17], rest[19] = state, str(ppid), str(flags), str(threads), str(start)
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


def _task(root: Path, pid: int, tid: int, stat: str, switches: tuple[int, int] | None = (3, 1)) -> None:
    folder = root / str(pid) / "task" / str(tid)
    folder.mkdir(parents=True)
    (folder / "stat").write_text(stat)
    if tid == pid:
        (root / str(pid) / "stat").write_text(stat)
    if switches is not None:
        (folder / "status").write_text(f"Name:\tx\nvoluntary_ctxt_switches:\t{switches[0]}\n"
                                       f"nonvoluntary_ctxt_switches:\t{switches[1]}\n")


def test_scan_fake_tree_sees_worker_threads_and_skips_kernel_threads(tmp_path):
    # a process whose leader sleeps while a worker thread is in D
    _task(tmp_path, 100, 100, _stat(100, "db server", "S", 1, 0x400000, 500))
    _task(tmp_path, 100, 101, _stat(101, "db worker", "D", 1, 0x400040, 510), (7, 2))
    # kernel threads in D: PF_KTHREAD is set on each
    _task(tmp_path, 50, 50, _stat(50, "kworker/u4:1", "D", 2, 0x04208060, 5))
    _task(tmp_path, 51, 51, _stat(51, "jbd2/vda-8", "D", 2, 0x00208040, 6))
    # inside a pid namespace, pid 2 and its children are ordinary processes
    _task(tmp_path, 2, 2, _stat(2, "sh", "D", 1, 0x400100, 20, threads=1), (1, 1))
    _task(tmp_path, 60, 60, _stat(60, "worker", "D", 2, 0x400100, 30, threads=1), (2, 2))
    # a task that vanished between listing and reading (no status), and a running one
    _task(tmp_path, 200, 200, _stat(200, "gone", "D", 1, 0, 700), None)
    _task(tmp_path, 300, 300, _stat(300, "busy", "R", 1, 0, 800))
    # a single-threaded process in D: its own stat is read, its task folder is not listed
    _task(tmp_path, 400, 400, _stat(400, "tar", "D", 1, 0, 900, threads=1), (5, 5))
    (tmp_path / "400" / "task" / "400" / "stat").write_text("unreadable if it were read")
    (tmp_path / "self").mkdir()
    result = scan_blocked_tasks(tmp_path)
    assert sorted((o.process, o.task, o.switches) for o in result.blocked) == [
        ((2, 20), (2, 20), 2), ((60, 30), (60, 30), 4), ((100, 500), (101, 510), 9), ((400, 900), (400, 900), 10)]
    assert result.comms == {(2, 20): "sh", (60, 30): "worker", (100, 500): "db server", (400, 900): "tar"}
    assert result.tasks == 7  # kernel threads are not read past their process stat


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _started(source: LinuxHangSource) -> LinuxHangSource:
    """Start the source (its watcher makes one pass at the fake clock's time) and stop the thread."""
    source.start()
    source.stop()
    assert source.statuses()[0].active
    return source


def test_source_counts_episodes_and_exports_zero_for_known_apps(tmp_path):
    _task(tmp_path, 100, 100, _stat(100, "backup", "D", 1, 0, 500))
    (tmp_path / "self" / "task").mkdir(parents=True)
    clock = FakeClock()
    source = _started(LinuxHangSource(lambda pid: {100: "backup"}.get(pid), procfs=tmp_path, threshold_seconds=30,
                                      check_interval_seconds=5, clock=clock))
    for clock.now in (0.0, 10.0, 29.0):
        assert not source.check().hung
    clock.now = 31.0
    assert source.check().started == ((100, 500),)
    clock.now = 40.0
    source.check()
    snapshot = Snapshot(wall_time=0.0, monotonic=0.0, apps={"web": AppView(name="web")})
    fams = {m.name: {s.labels["app"]: s.value for s in m.samples if s.name.endswith(("_total", "processes"))}
            for m in source.collect(snapshot)}
    assert fams == {"atlas_app_hung_processes": {"backup": 1, "web": 0}, "atlas_app_hangs": {"backup": 1, "web": 0}}
    # progress: the status file shows new switches; the gauge drops, the counter stays
    (tmp_path / "100/task/100/status").write_text("voluntary_ctxt_switches:\t9\nnonvoluntary_ctxt_switches:\t1\n")
    clock.now = 45.0
    assert source.check().ended == ((100, 500),)
    fams = {m.name: {s.labels["app"]: s.value for s in m.samples if s.name.endswith(("_total", "processes"))}
            for m in source.collect(Snapshot(wall_time=0.0, monotonic=0.0))}
    assert fams == {"atlas_app_hung_processes": {}, "atlas_app_hangs": {"backup": 1}}


def test_inactive_source_emits_nothing(tmp_path):
    _task(tmp_path, 100, 100, _stat(100, "backup", "D", 1, 0, 500))
    source = LinuxHangSource(lambda pid: "backup", procfs=tmp_path, threshold_seconds=30, clock=FakeClock())
    source.start()  # no <procfs>/self/task: the task scan is unavailable
    try:
        status = source.statuses()[0]
        assert (status.active, status.privilege) == (False, "none")
        assert "no task folders" in status.reason
        snapshot = Snapshot(wall_time=0.0, monotonic=0.0, apps={"backup": AppView(name="backup")})
        assert list(source.collect(snapshot)) == []
    finally:
        source.stop()


@pytest.mark.parametrize(("euid", "cap_eff", "privilege"), [
    (1000, "0000000000081004", "capabilities"),  # the systemd unit: CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, ...
    (1000, "0000000000000000", "user"),
    (0, "000001ffffffffff", "root"),
])
def test_privilege_words_match_the_process_sources(tmp_path, monkeypatch, euid, cap_eff, privilege):
    (tmp_path / "self" / "task").mkdir(parents=True)
    (tmp_path / "self" / "status").write_text(f"Name:\tatlas\nCapEff:\t{cap_eff}\n")
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    source = _started(LinuxHangSource(lambda pid: None, procfs=tmp_path, clock=FakeClock()))
    assert source.statuses()[0].privilege == privilege


def test_factory_reads_hang_options():
    from atlas_exporter.config import parse_config

    source = make_hang_source(parse_config({"hang": {"threshold_seconds": 12, "check_interval_seconds": 3}}),
                              Path("/proc"), lambda pid: None)
    assert source.threshold_seconds == 12 and source.check_interval_seconds == 3 and source.name == "hang"


class RecordingScan:
    """`scan_blocked_tasks` that remembers which processes its last pass saw in D."""

    def __init__(self) -> None:
        self.blocked_pids: set[int] = set()

    def __call__(self, procfs: Path) -> BlockedScan:
        result = scan_blocked_tasks(procfs)
        self.blocked_pids = {obs.process[0] for obs in result.blocked}
        return result


@pytest.fixture(scope="module")
def vfork_binary(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the vfork test program")
    folder = tmp_path_factory.mktemp("vfork")
    (folder / "vfork_d.c").write_text(VFORK_C)
    subprocess.run(["gcc", "-O2", "-o", str(folder / "vfork_d"), str(folder / "vfork_d.c")], check=True, timeout=120)
    return folder / "vfork_d"


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_vfork_parent_is_hung_after_the_threshold_not_before(vfork_binary):
    threshold = 2.0
    scan = RecordingScan()
    source = LinuxHangSource(lambda pid: "vfork-test" if pid == parent.pid else "misc",
                             threshold_seconds=threshold, check_interval_seconds=0.2, scan=scan)
    parent = subprocess.Popen([str(vfork_binary), "60"])
    children: list[int] = []
    try:
        first_seen = hung_at = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and hung_at is None:
            update = source.check()
            now = time.monotonic()
            if first_seen is None and parent.pid in scan.blocked_pids:
                first_seen = now
            if any(pid == parent.pid for pid, _ in update.hung):
                hung_at = now
                assert first_seen is not None and hung_at - first_seen >= threshold - 0.05
            time.sleep(0.2)
        assert first_seen is not None, "the vfork parent was never seen in D"
        assert hung_at is not None, "the vfork parent was never reported hung"
        assert hung_at - first_seen < threshold + 10
        assert source.book.hangs().get("vfork-test") == 1
        source.check()
        assert source.book.hangs().get("vfork-test") == 1  # one episode counts once
        # let the child go: the parent resumes and the episode ends
        children = _children(parent.pid)
        assert children, "the vfork child is not visible"
        for child in children:
            os.kill(child, signal.SIGKILL)
        parent.wait(timeout=30)
        update = source.check()
        assert not any(pid == parent.pid for pid, _ in update.hung)
    finally:
        for child in children or _children(parent.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if parent.poll() is None:
            parent.kill()
        parent.wait(timeout=30)


@pytest.mark.slow
def test_io_heavy_writer_is_never_hung(tmp_path):
    scan = RecordingScan()
    source = LinuxHangSource(lambda pid: "dd" if pid == writer.pid else "misc", threshold_seconds=1.0,
                             check_interval_seconds=0.1, scan=scan)
    out = tmp_path / "dd.out"
    writer = subprocess.Popen(["dd", "if=/dev/zero", f"of={out}", "bs=64k", "count=100000", "oflag=direct,dsync"],
                              stderr=subprocess.DEVNULL)
    try:
        seen_in_d = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and writer.poll() is None:
            update = source.check()
            seen_in_d += writer.pid in scan.blocked_pids
            assert not any(pid == writer.pid for pid, _ in update.hung)
            time.sleep(0.1)
        print(f"dd seen in D at {seen_in_d} checks")
        assert "dd" not in source.book.hangs()
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait(timeout=30)


@pytest.mark.slow
def test_end_to_end_through_the_exporter(vfork_binary):
    from atlas_exporter.config import parse_config
    from atlas_exporter.exporter.runtime import Exporter

    config = parse_config({"hang": {"threshold_seconds": 2, "check_interval_seconds": 0.25},
                           "apps": [{"name": "vfork-e2e", "comm": "^vfork_d$"}]})
    exporter = Exporter(config, enabled={"process", "hang"})
    parent = subprocess.Popen([str(vfork_binary), "60"])
    exporter.start()
    try:
        hung_line = 'atlas_app_hung_processes{app="vfork-e2e"} 1.0'
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline and hung_line not in body:
            body = exporter.render_metrics()[0].decode()
            time.sleep(0.25)
        assert hung_line in body
        assert 'atlas_app_hangs_total{app="vfork-e2e"} 1.0' in body
        assert 'atlas_scrape_collector_success{collector="hang"} 1.0' in body
        assert 'atlas_source_active{privilege="root",source="hang_task_scan"} 1.0' in body or os.geteuid() != 0
        for child in _children(parent.pid):
            os.kill(child, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and hung_line in body:
            time.sleep(0.25)
            body = exporter.render_metrics()[0].decode()
        assert hung_line not in body
    finally:
        exporter.stop()
        for child in _children(parent.pid):
            os.kill(child, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
        parent.wait(timeout=30)
