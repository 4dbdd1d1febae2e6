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

from atlas_exporter.sources.crash_linux import LinuxCrashSource

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
                              use_connector=False, poll_interval_seconds=0.1)
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
        assert active == {"proc_connector": 0.0, "systemd_coredump": 1.0, "apport": 1.0, "kernel_log": 0.0}
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
