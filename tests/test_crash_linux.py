"""The Linux crash watcher on this machine: real crashing processes, fallback folders, no privilege."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_exporter.collectors.crash.source_linux import SKIP_REASONS, LinuxCrashSource

FIXTURES = Path(__file__).parent / "fixtures" / "crash"
IS_ROOT = os.geteuid() == 0
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc and netlink")
pytestmark = [linux_only]


def marker_app(pid: int) -> str | None:
    """Stand-in for the resolver: the `atlas-crash-test-*` argument of the process, else "misc"."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in args:
        if arg.startswith(b"atlas-crash-test-"):
            return arg.decode()
    return "misc"


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


CRASHERS = {
    "segv": "import ctypes; ctypes.string_at(0)",
    "abrt": "import os; os.abort()",
    "thread-segv": "import ctypes, threading, time; threading.Thread(target=ctypes.string_at, args=(0,)).start();"
                   " time.sleep(30)",
    "kill": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    "exit3": "raise SystemExit(3)",
}


def run_crasher(kind: str, tag: str) -> int:
    """Run one short-lived process that ends the given way; returns its pid."""
    proc = subprocess.Popen([sys.executable, "-c", CRASHERS[kind], f"atlas-crash-test-{tag}"], preexec_fn=_no_core,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.pid


def ours(crashes: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Only this test's crashes: the connector sees every process on the machine."""
    return {key: n for key, n in crashes.items() if key[0].startswith("atlas-crash-test-")}


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def folders(tmp_path):
    coredump = tmp_path / "coredump"
    crash = tmp_path / "crash"
    coredump.mkdir()
    crash.mkdir()
    return coredump, crash


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="the proc connector needs root or CAP_NET_ADMIN")
def test_real_crashes_are_counted_once_with_their_reason(folders):
    coredump, crash = folders
    source = LinuxCrashSource(marker_app, coredump_dir=coredump, report_dirs=[crash], poll_interval_seconds=0.2)
    source.start()
    try:
        active = {s.name: s.active for s in source.statuses()}
        assert active["proc_connector"] and active["systemd_coredump"] and active["apport"]
        t0 = time.monotonic()
        segv_pid = run_crasher("segv", "segv")
        run_crasher("abrt", "abrt")
        run_crasher("thread-segv", "thread")
        run_crasher("kill", "kill")
        run_crasher("exit3", "exit3")
        expected = {("atlas-crash-test-segv", "SIGSEGV"): 1, ("atlas-crash-test-abrt", "SIGABRT"): 1,
                    ("atlas-crash-test-thread", "SIGSEGV"): 1}
        assert wait_for(lambda: ours(source.book.crashes()) == expected, timeout=20), source.book.crashes()
        assert time.monotonic() - t0 < 30
        # the same crash seen again by a core file name: not counted twice
        (coredump / f"core.python3.0.{'ab' * 16}.{segv_pid}.{int(time.time() * 1e6)}.zst").write_bytes(b"")
        time.sleep(1.0)
        assert ours(source.book.crashes()) == expected
        assert source.book.duplicates >= 1
        last = source.book.last_crash()["atlas-crash-test-segv"]
        assert abs(last - time.time()) < 60
    finally:
        source.stop()


@pytest.mark.slow
def test_fallback_folders_count_new_reports_only(folders, tmp_path):
    coredump, crash = folders
    boot = "9a350d932b254a8d880f502cd4a2ae66"
    (coredump / f"core.old.0.{boot}.10.1700000000000000.zst").write_bytes(b"")  # before start: not counted
    source = LinuxCrashSource(marker_app, coredump_dir=coredump, report_dirs=[crash], kmsg=tmp_path / "no-kmsg",
                              use_connector=False, cgroup_roots=[], poll_interval_seconds=0.1)
    source.start()
    try:
        statuses = {s.name: s for s in source.statuses()}
        assert not statuses["proc_connector"].active and statuses["proc_connector"].reason == "disabled"
        assert not statuses["kernel_log"].active
        now_us = int(time.time() * 1e6)
        (coredump / f"core.my\\x2eworker.1000.{boot}.4242.{now_us}.lz4").write_bytes(b"")
        (coredump / "core.unparsable").write_bytes(b"")
        shutil.copy(FIXTURES / "apport_usr_bin_crashme.0.crash", crash / "_usr_bin_crashme.0.crash")
        (crash / "_opt_tool_bin_svc.1000.crash").write_bytes(b"")  # unreadable contents look like this
        expected = {("my.worker", "other"): 1, ("crashme", "SIGSEGV"): 1, ("svc", "other"): 1}
        assert wait_for(lambda: source.book.crashes() == expected, timeout=10), source.book.crashes()
        assert source.skipped["malformed"] == 1
        families = {m.name: m for m in source.collect(None)}
        active = {s.labels["source"]: s.value for s in families["atlas_crash_source_active"].samples}
        assert active == {"proc_connector": 0.0, "systemd_coredump": 1.0, "apport": 1.0, "kernel_log": 0.0,
                          "cgroup_oom": 0.0}
        assert "atlas_app_exits_total" not in families  # no source that sees every exit: absent
    finally:
        source.stop()


def _statuses_as_nobody(conn_fd: int) -> None:
    """In a forked child: drop to nobody, detect the crash sources, write their statuses to the pipe."""
    code = 1
    signal.alarm(60)  # never outlive the test, whatever the child inherited from the fork
    try:
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        source = LinuxCrashSource(lambda pid: None, poll_interval_seconds=0.1, coredump_dir=Path("/nonexistent-dir"),
                                  report_dirs=[Path("/nonexistent-crash")])
        source.start()
        out = [[s.name, s.active, s.privilege, s.reason] for s in source.statuses()]
        source.stop()
        os.write(conn_fd, json.dumps(out).encode())
        code = 0
    finally:
        os._exit(code)


@pytest.mark.skipif(not IS_ROOT, reason="dropping to nobody needs root")
def test_unprivileged_run_says_which_sources_it_lacks():
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _statuses_as_nobody(write_fd)
    os.close(write_fd)
    try:
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    statuses = {name: (active, privilege, reason) for name, active, privilege, reason in json.loads(b"".join(chunks))}
    assert statuses["proc_connector"] == (False, "none", "the proc connector needs root or CAP_NET_ADMIN")
    assert statuses["systemd_coredump"][0] is False and "/nonexistent-dir" in statuses["systemd_coredump"][2]
    restricted = Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1"
    if restricted:
        assert statuses["kernel_log"][0] is False and "CAP_SYSLOG" in statuses["kernel_log"][2]


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="the proc connector needs root or CAP_NET_ADMIN")
def test_end_to_end_through_the_exporter():
    from atlas_exporter.config import parse_config
    from atlas_exporter.exporter.runtime import Exporter

    config = parse_config({"apps": [{"name": "crash-e2e", "cmdline": "atlas-crash-test-e2e"}]})
    exporter = Exporter(config, enabled={"process", "crash"})
    exporter.start()
    try:
        crash = next(s for s in exporter.sources if s.name == "crash")
        proc = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdin.read(); import os; os.abort()",
                                 "atlas-crash-test-e2e"], stdin=subprocess.PIPE, preexec_fn=_no_core)
        try:
            exporter.render_metrics()  # the scan names the live process
            proc.stdin.close()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGABRT
        assert wait_for(lambda: ("crash-e2e", "SIGABRT") in crash.book.crashes(), timeout=20)
        body = exporter.render_metrics()[0].decode()
        assert 'atlas_app_crashes_total{app="crash-e2e",reason="SIGABRT"} 1.0' in body
        assert 'atlas_app_last_crash_timestamp_seconds{app="crash-e2e"}' in body
        assert 'atlas_crash_source_active{source="proc_connector"} 1.0' in body
        assert 'atlas_scrape_collector_success{collector="crash"} 1.0' in body
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=body.encode(), capture_output=True,
                                   timeout=60)
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        exporter.stop()


def _fake_procfs(tmp_path: Path, cap_eff: str) -> Path:
    procfs = tmp_path / "proc"
    (procfs / "self").mkdir(parents=True)
    (procfs / "self" / "status").write_text(f"Name:\tatlas\nCapEff:\t{cap_eff}\n")
    return procfs


@pytest.mark.parametrize(("euid", "cap_eff", "privilege", "connector_reason"), [
    # the hardened systemd unit: CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_NET_ADMIN, not root
    (1000, "0000000000081004", "capabilities", "disabled"),
    (1000, "0000000000000000", "user", "the proc connector needs root or CAP_NET_ADMIN"),
    (1000, "0000000000080004", "capabilities", "the proc connector needs root or CAP_NET_ADMIN"),
])
def test_privilege_words_match_the_process_sources(folders, tmp_path, monkeypatch, euid, cap_eff, privilege,
                                                   connector_reason):
    coredump, crash = folders
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    source = LinuxCrashSource(lambda pid: None, procfs=_fake_procfs(tmp_path, cap_eff), coredump_dir=coredump,
                              report_dirs=[crash], kmsg=tmp_path / "no-kmsg",
                              use_connector=connector_reason != "disabled", poll_interval_seconds=3600)
    source.start()
    try:
        statuses = {s.name: s for s in source.statuses()}
    finally:
        source.stop()
    assert statuses["systemd_coredump"].privilege == privilege
    assert statuses["apport"].privilege == privilege
    assert not statuses["proc_connector"].active and statuses["proc_connector"].reason == connector_reason


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fork_naming_shares_the_exec_budget(tmp_path):
    from atlas_exporter.collectors.crash.connector_linux import ProcEvent

    asked: list[int] = []

    def resolver(pid: int) -> str:
        asked.append(pid)
        return "forked"

    source = LinuxCrashSource(resolver, procfs=tmp_path, names_per_second=5, monotonic=_Clock())
    for pid in range(1000, 1100):  # a fork storm from parents the source never named
        source._on_proc_event(ProcEvent(what="fork", timestamp_ns=0, pid=pid, tgid=pid, parent_pid=1, parent_tgid=1))
    assert len(asked) == 5
    # a known parent names its child without spending the budget
    source.pids.learn(7, "web")
    source._on_proc_event(ProcEvent(what="fork", timestamp_ns=0, pid=8, tgid=8, parent_pid=7, parent_tgid=7))
    assert source.pids.app(8) == "web" and len(asked) == 5


def test_deleted_reports_are_forgotten_and_size_never_skips_one(folders, tmp_path):
    coredump, crash = folders
    boot = "9a350d932b254a8d880f502cd4a2ae66"
    source = LinuxCrashSource(lambda pid: None, coredump_dir=coredump, report_dirs=[crash], kmsg=tmp_path / "no-kmsg",
                              use_connector=False, poll_interval_seconds=0.05)
    source.start()
    try:
        now_us = int(time.time() * 1e6)
        names = [f"core.tool.1000.{boot}.{pid}.{now_us + pid}.zst" for pid in range(100, 110)]
        for name in names:
            (coredump / ".#tmp").write_bytes(b"")  # systemd-coredump's temporary file, then the rename
            os.rename(coredump / ".#tmp", coredump / name)
        # an apport report far larger than the part that is read: its head still counts it
        big = crash / "_usr_bin_crashme.0.crash"
        with open(big, "wb") as handle:
            handle.write((FIXTURES / "apport_usr_bin_crashme.0.crash").read_bytes())
            handle.write(b"CoreDump: base64\n" + (b" " + b"A" * 75 + b"\n") * 30000)
        assert big.stat().st_size > 2 * 1024 * 1024
        expected = {("tool", "other"): 10, ("crashme", "SIGSEGV"): 1}
        assert wait_for(lambda: source.book.crashes() == expected, timeout=10), source.book.crashes()
        for name in names:
            (coredump / name).unlink()
        big.unlink()
        assert wait_for(lambda: not source.folders.files, timeout=10), sorted(source.folders.files)
        assert source.book.crashes() == expected  # counters hold when the reports go
        families = {m.name: m for m in source.collect(None)}
        skipped = {s.labels["reason"]: s.value for s in families["atlas_crash_reports_skipped"].samples
                   if s.name.endswith("_total")}
        assert skipped == dict.fromkeys(SKIP_REASONS, 0)
    finally:
        source.stop()
