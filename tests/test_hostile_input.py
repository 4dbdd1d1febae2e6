"""What a local user controls cannot break /metrics or forge crashes of another app.

Non-UTF-8 names from every source (a real process's comm, argv0 and exe, a crash report file
name, a systemd-coredump file name, a kernel log line) end up as valid UTF-8 that
`promtool check metrics` accepts; kernel log lines that can be read two ways or whose pid now
has another comm are not counted; crash report files count only when owned by root or by the
user their process ran as.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from atlas_exporter.collectors.crash import reports_linux as rl
from atlas_exporter.collectors.crash.source_linux import LinuxCrashSource
from atlas_exporter.exporter.exposition import TextRenderer
from conftest import REPO, free_port, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc, /dev/kmsg")
IS_ROOT = os.geteuid() == 0
BOOT = "9a350d932b254a8d880f502cd4a2ae66"

CRASHER_C = r"""
#include <stdlib.h>
#include <unistd.h>
/* crasher SECONDS: live that long, then fault on a null pointer */
int main(int argc, char **argv) {
    sleep(atoi(argv[1]));
    *(volatile int *)0 = 1;
    return 0;
}
"""


def _lint(promtool: str, body: bytes) -> None:
    lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode(errors="replace")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def crasher(tmp_path: Path) -> Path:
    """A C program named with bytes that are not UTF-8 (its comm, argv0 and exe follow)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the crasher")
    (tmp_path / "crasher.c").write_text(CRASHER_C)
    binary = os.path.join(os.fsencode(tmp_path), b"\xff\xfeatlas-" + str(os.getpid()).encode())
    subprocess.run([b"gcc", b"-O0", b"-o", binary, os.fsencode(tmp_path / "crasher.c")], check=True, timeout=120)
    return Path(os.fsdecode(binary))


@pytest.mark.slow
def test_non_utf8_names_from_every_source_pass_promtool(tmp_path: Path, crasher: Path, promtool: str) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    config = tmp_path / "config.yml"
    config.write_text(f"crash:\n  report_dirs: [{reports}]\nsnapshot_max_age_seconds: 0\n")
    port = free_port()
    with open(tmp_path / "exporter.log", "wb") as log:  # the child keeps its own copy of the fd
        exporter = subprocess.Popen([sys.executable, "-m", "atlas_exporter", "--web.listen-address",
                                     f"127.0.0.1:{port}", "--config.file", str(config)],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    victim = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: exporter.poll() is None and _get(base + "/metrics")[0] == 200, timeout=60,
                 message="the exporter to serve")
        # a live process whose comm, argv0 and exe are not UTF-8, started through a shell
        victim = subprocess.Popen([b"sh", b"-c", b"exec '" + os.fsencode(crasher) + b"' 4"])
        time.sleep(1.5)
        status, body = _get(base + "/metrics")
        assert status == 200, body[-500:]
        _lint(promtool, body)
        assert "\ufffd\ufffdatlas-".encode() in body  # named, with replacement characters
        # a report file whose name is not UTF-8, dropped into a watched folder
        (Path(os.fsdecode(os.fsencode(reports) + b"/\xff\xfe.0.crash"))).write_bytes(
            b"ProblemType: Crash\nExecutablePath: /opt/\xff\xfe/tool\nSignal: 6\n")
        assert victim.wait(timeout=30) != 0  # it faulted: the proc connector (and kernel log) see it

        def crashes() -> bytes:
            code, text = _get(base + "/metrics")
            assert code == 200, text[-500:]
            return b"\n".join(line for line in text.splitlines() if line.startswith(b"atlas_app_crashes_total"))

        wait_for(lambda: b'reason="SIGABRT"' in crashes() and b'reason="SIGSEGV"' in crashes(), timeout=30,
                 message="both crashes to be counted")
        for _ in range(3):  # every later scrape too
            status, body = _get(base + "/metrics")
            assert status == 200
            _lint(promtool, body)
        assert b'atlas_app_crashes_total{app="\xef\xbf\xbd\xef\xbf\xbd",reason="SIGABRT"} 1.0' in body \
            or b'atlas_app_crashes_total{app="tool",reason="SIGABRT"} 1.0' in body, crashes()
    finally:
        if victim is not None and victim.poll() is None:
            victim.kill()
            victim.wait()
        exporter.terminate()
        exporter.wait(timeout=30)
    assert b"Traceback" not in (tmp_path / "exporter.log").read_bytes()


def test_non_utf8_kernel_line_and_coredump_name_pass_promtool(tmp_path: Path, promtool: str) -> None:
    coredump = tmp_path / "coredump"
    reports = tmp_path / "reports"
    coredump.mkdir()
    reports.mkdir()
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"")
    source = LinuxCrashSource(lambda pid: None, coredump_dir=coredump, report_dirs=[reports], kmsg=kmsg,
                              use_connector=False, poll_interval_seconds=0.05)
    source.start()
    try:
        usec = int(time.time() * 1e6)
        # systemd-coredump escapes the comm's bytes as \xNN; a raw byte that is not UTF-8 too
        (coredump / f"core.\\xff\\xfeesc.0.{BOOT}.4242.{usec}.zst").write_bytes(b"")
        Path(os.fsdecode(os.fsencode(coredump) + b"/core.\xfe\xffraw.0." + BOOT.encode() + b".4343."
                         + str(usec).encode() + b".zst")).write_bytes(b"")
        # the kernel prints a comm's bytes >= 0x7f escaped: the record as /dev/kmsg gives it
        source._on_kmsg(r"6,900,1000000,-;\xff\xfek[999999]: segfault at 0 ip 0000562713fed185 sp 00007fff164ee090"
                        r" error 6 in x[1185,562713fed000+1000]")
        wait_for(lambda: sum(source.book.crashes().values()) == 3, timeout=20,
                 message=f"three crashes, got {source.book.crashes()}")
        apps = {app for app, _reason in source.book.crashes()}
        assert apps == {"\ufffd\ufffdesc", "\ufffd\ufffdraw", "\ufffd\ufffdk"}
        body = TextRenderer().render(source.collect(None))
        _lint(promtool, body)
    finally:
        source.stop()


# --- kernel log spoofing


def test_a_program_named_like_a_kernel_line_is_not_read_as_pid_1() -> None:
    # `traps:` lines used to be read from the left: a program named "a[1] b" became pid 1
    record = "6,1,5000000,-;traps: a[1] b[4242] trap int3 ip:55dabb47e231 sp:7fffa087c3f0 error:0 in a[1231,5+1000]"
    crash = rl.parse_kmsg_record(record)
    assert crash is not None and (crash.comm, crash.pid, crash.reason) == ("a[1] b", 4242, "SIGTRAP")
    segv = rl.parse_kmsg_record("6,2,5000000,-;a[1]: b[4243]: segfault at 0 ip 1 sp 2 error 4 in a[1+2]")
    assert segv is not None and (segv.comm, segv.pid) == ("a[1]: b", 4243)
    # a mapping name (any file name) that holds a second crash header: two readings, not counted
    with pytest.raises(rl.AmbiguousLine):
        rl.parse_kmsg_record("6,3,5000000,-;x[4244]: segfault at 0 ip 1 sp 2 error 4 in "
                             "lib[1]: segfault at 0 ip 1 sp 2 error 4 so[1+2]")
    with pytest.raises(rl.AmbiguousLine):
        rl.parse_kmsg_record("6,4,5000000,-;traps: y[4245] trap int3 ip:1 sp:2 error:0 in "
                             "z[1] trap int3 ip:1 sp:2 error:0 z[1+2]")
    # the same names where they cannot complete a second header: one reading, counted
    lib = rl.parse_kmsg_record("6,3,5000000,-;x[4244]: segfault at 0 ip 1 sp 2 error 4 in "
                               "lib[1]: segfault at 0 ip 1 sp 2 error 4.so[1+2]")
    assert lib is not None and (lib.comm, lib.pid) == ("x", 4244)
    # written into /dev/kmsg by a process (facility user, not kernel): never a crash line
    assert rl.parse_kmsg_record("12,5,5000000,-;x[4246]: segfault at 0 ip 1 sp 2 error 4") is None


@pytest.mark.slow
def test_kernel_lines_count_only_when_the_pid_still_has_that_comm(tmp_path: Path) -> None:
    """A real process named `a[1] b` and a line naming it, one naming pid 1, and a spoofed comm."""
    sleeper = tmp_path / "a[1] b"
    shutil.copy("/bin/sleep", sleeper)
    proc = subprocess.Popen(["sh", "-c", f"exec '{sleeper}' 60"])
    try:
        wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "a[1] b", timeout=10,
                 message="the process to exec")
        apps = {proc.pid: "victim-app", 1: "init-app"}
        source = LinuxCrashSource(apps.get, coredump_dir=tmp_path / "none", report_dirs=[],
                                  kmsg=tmp_path / "none", use_connector=False)
        source.pids.learn(proc.pid, "victim-app")
        source.pids.learn(1, "init-app")
        tail = "trap int3 ip:55dabb47e231 sp:7fffa087c3f0 error:0 in sleep[1231,5+1000]"
        source._on_kmsg(f"6,1,1000000,-;traps: a[1] b[{proc.pid}] {tail}")
        source._on_kmsg(f"6,2,1000000,-;traps: evil[1] {tail}")  # pid 1 is alive with another comm
        source._on_kmsg(f"6,3,1000000,-;x[{proc.pid}]: segfault at 0 ip 1 sp 2 error 4 in x[1+2] "
                        f"y[1]: segfault at 0 ip 1 sp 2 error 4")
        assert source.book.crashes() == {("victim-app", "SIGTRAP"): 1}
        assert source.skipped["comm_mismatch"] == 1 and source.skipped["ambiguous"] == 1
    finally:
        proc.kill()
        proc.wait()


# --- crash report file ownership


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="files owned by another user are made with chown")
def test_report_files_count_only_when_owned_by_root_or_the_crashed_user(tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="atlas-report-owners-", dir="/tmp"))  # a folder nobody can reach
    shared.chmod(0o755)
    coredump = shared / "coredump"
    reports = shared / "reports"
    for folder in (coredump, reports):
        folder.mkdir()
        folder.chmod(0o1777)  # world-writable and sticky, like /var/crash
    source = LinuxCrashSource(lambda pid: None, coredump_dir=coredump, report_dirs=[reports],
                              kmsg=tmp_path / "none", use_connector=False, poll_interval_seconds=0.05)
    source.start()
    nobody = 65534
    usec = int(time.time() * 1e6)

    def drop(path: Path, text: bytes, owner: int) -> None:
        """Write as `owner` would: a real unprivileged process writes the file, then renames it into place."""
        temporary = path.parent / f".#{path.name}.tmp"
        subprocess.run(["setpriv", f"--reuid={owner}", f"--regid={owner}", "--clear-groups", "sh", "-c",
                        f"cat > '{temporary}' && mv '{temporary}' '{path}'"], input=text, check=True, timeout=30)

    try:
        # nobody claims a crash of root's sshd (name and content), and of user 1000's editor: refused
        drop(reports / "_usr_sbin_sshd.0.crash", b"ProblemType: Crash\nExecutablePath: /usr/sbin/sshd\n", nobody)
        drop(reports / "_usr_bin_editor.1000.crash", b"ProblemType: Crash\nExecutablePath: /usr/bin/editor\n",
             nobody)
        # ... and a report named for its own uid whose content says another user's process crashed
        drop(reports / "_usr_bin_mail.65534.crash",
             b"ProblemType: Crash\nExecutablePath: /usr/bin/mail\nProcStatus:\n Pid: 77\n Uid: 0 0 0 0\n", nobody)
        drop(coredump / f"core.sshd.0.{BOOT}.4000.{usec}.zst", b"", nobody)
        # its own crash, in its own name: counted (it could crash any program as itself anyway)
        drop(reports / "_usr_bin_tool.65534.crash", b"ProblemType: Crash\nExecutablePath: /usr/bin/tool\n"
             b"Signal: 11\n", nobody)
        # root-owned reports (what apport and systemd-coredump write): counted
        (reports / "_usr_bin_daemon.1000.crash").write_bytes(b"ProblemType: Crash\nExecutablePath: /usr/bin/daemon\n")
        (coredump / f"core.worker.1000.{BOOT}.4001.{usec}.zst").write_bytes(b"")
        # a FIFO named like a report: neither counted nor able to stall the watcher
        os.mkfifo(reports / "_usr_bin_fifo.0.crash")
        wait_for(lambda: sum(source.book.crashes().values()) == 3 and source.skipped["untrusted_owner"] == 4,
                 timeout=20, message=f"3 counted, 4 refused: {source.book.crashes()} {source.skipped}")
        assert source.book.crashes() == {("tool", "SIGSEGV"): 1, ("daemon", "other"): 1, ("worker", "other"): 1}
        assert source.skipped["unreadable"] == 1  # the FIFO
        time.sleep(0.3)
        assert source.loops[0].running
    finally:
        source.stop()
        shutil.rmtree(shared, ignore_errors=True)
