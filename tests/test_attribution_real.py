"""Every number on the right app, with real processes started the way people start them.

Exec chains (`sh -c 'exec ...'`, `env`, `nohup`, `setsid`), a crash a few seconds after start, a
thread that crashes, a cgroup move after exec, and a host where many short-lived programs ran
before a new daemon started. Each test runs the exporter as root (in this process) and, where the
host lets an unprivileged user measure it, as `nobody` (a separate exporter process).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from atlas_exporter.collectors.network.owners_linux import find_cgroup2_root
from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import NOBODY, free_port, parse_exposition, wait_for

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc"), pytest.mark.slow]

IS_ROOT = os.geteuid() == 0
TAG = f"{os.getpid()}"
PEER = Path(__file__).parent / "fixtures" / "network" / "peer.py"
PYTHON = shutil.which("python3") or sys.executable  # often a pyenv shim: one more exec chain
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PYTHON  # what nobody can run
SETPRIV = shutil.which("setpriv")


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder `nobody` can read (test scripts live there)."""
    path = Path(tempfile.mkdtemp(prefix="atlas-attr-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Scraper:
    """An exporter to scrape: in this process (root) or a separate process (nobody)."""

    def __init__(self, scrape: Callable[[], str], exporter: Exporter | None = None) -> None:
        self._scrape = scrape
        self.exporter = exporter

    def text(self) -> str:
        return self._scrape()

    def values(self) -> dict[str, float]:
        return parse_exposition(self._scrape())


@contextmanager
def exporter_as(user: str, config: dict, nobody_python: tuple[list[str], dict[str, str]] | None,
                folder: Path, enabled: set[str] | None = None) -> Iterator[Scraper]:
    if user == "root":
        if not IS_ROOT:
            pytest.skip("needs root")
        exporter = Exporter(parse_config(config), enabled=enabled)
        exporter.start()
        try:
            yield Scraper(lambda: exporter.render_metrics()[0].decode(), exporter)
        finally:
            exporter.stop()
        return
    assert nobody_python is not None
    prefix, env = nobody_python
    cfg = folder / "atlas.yml"
    cfg.write_text(yaml.safe_dump(config))
    os.chmod(cfg, 0o644)
    port = free_port()
    args = [*prefix, "-m", "atlas_exporter", "--web.listen-address", f"127.0.0.1:{port}", "--config.file", str(cfg)]
    for name in ("process", "network", "crash", "hang"):
        if enabled is not None and name not in enabled:
            args.append(f"--no-collector.{name}")
    proc = subprocess.Popen(args, cwd="/", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read().decode()

    try:
        wait_for(lambda: proc.poll() is None and scrape(), timeout=60, message="the nobody exporter to serve")
        yield Scraper(scrape)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err


def python_for(user: str) -> str:
    return PYTHON if user == "root" else SYSTEM_PYTHON


def as_user(user: str) -> list[str]:
    """The argv prefix that runs a test program as `user`."""
    if user == "root":
        return []
    assert SETPRIV, "setpriv (util-linux) is required"
    return [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def users(request_nobody: bool = True) -> list[str]:
    return ["root", "nobody"] if request_nobody else ["root"]


@pytest.fixture
def nobody_or_none(request: pytest.FixtureRequest) -> tuple[list[str], dict[str, str]] | None:
    if request.node.callspec.params.get("user") == "nobody":
        return request.getfixturevalue("nobody_python")
    return None


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=20)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    group = Procs()
    try:
        yield group
    finally:
        group.close()


# ----------------------------------------------------------------------------- crashes

CRASHER = """\
import ctypes, sys, time
time.sleep(float(sys.argv[1]))
ctypes.string_at(0)
"""


@pytest.mark.skipif(not IS_ROOT, reason="crash events need root here: the proc connector, /dev/kmsg")
def test_exec_chain_crashes_count_under_the_program(shared_dir: Path) -> None:
    """`sh -c 'exec ...'`, `env` and a crash 3 s after start: each is a crash of the program, not of the shell."""
    app = f"atlas_crashy_{TAG}"
    script = shared_dir / f"{app}.py"
    script.write_text(CRASHER)
    runs = [
        ["sh", "-c", f"exec {PYTHON} {script} 0"],
        ["env", "ATLAS_TEST=1", PYTHON, str(script), "0"],
        ["sh", "-c", f"exec {PYTHON} {script} 3"],
        ["sh", "-c", f"exec env {PYTHON} {script} 0.5"],
    ]
    with exporter_as("root", {}, None, shared_dir, enabled={"process", "crash"}) as scraper:
        assert scraper.exporter is not None
        crash = next(s for s in scraper.exporter.sources if s.name == "crash")
        wait_for(lambda: crash.names.last_rescan > float("-inf"), timeout=30,
                 message="the crash watcher to learn the processes already running")
        before = crash.book.crashes()
        for argv in runs:
            proc = subprocess.Popen(argv, preexec_fn=_no_core, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert proc.wait(timeout=60) == -signal.SIGSEGV
        try:
            wait_for(lambda: crash.book.crashes().get((app, "SIGSEGV"), 0) >= len(runs), timeout=30,
                     message=f"{len(runs)} crashes of {app}")
        except AssertionError as err:
            raise AssertionError(f"{err}; crashes counted: {crash.book.crashes()}") from None
        time.sleep(1.5)  # a kernel-log copy of the same crashes must not add to them
        after = crash.book.crashes()
        assert after[(app, "SIGSEGV")] == len(runs)
        for shell in ("sh", "env", "dash", "bash"):
            assert after.get((shell, "SIGSEGV"), 0) == before.get((shell, "SIGSEGV"), 0), after
        assert scraper.values()[f'atlas_app_crashes_total{{app="{app}",reason="SIGSEGV"}}'] == len(runs)


THREAD_CRASHER = """\
import ctypes, sys, threading, time
libc = ctypes.CDLL(None)
def crash():
    libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME: the thread's own comm
    sys.stdin.readline()
    ctypes.string_at(0)
threading.Thread(target=crash).start()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not IS_ROOT, reason="crash events need root here: the proc connector, /dev/kmsg")
def test_a_crashing_thread_is_one_crash_of_its_process(shared_dir: Path, procs: Procs) -> None:
    """The thread exists before the exporter starts, so only /proc/<tid>/status can map it."""
    app = f"atlas_thrcrash_{TAG}"
    thread_name = f"thr{TAG}"[:15]
    script = shared_dir / f"{app}.py"
    script.write_text(THREAD_CRASHER)
    proc = procs.start([PYTHON, str(script), thread_name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       text=True, preexec_fn=_no_core)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    with exporter_as("root", {}, None, shared_dir, enabled={"process", "crash"}) as scraper:
        assert scraper.exporter is not None
        crash = next(s for s in scraper.exporter.sources if s.name == "crash")
        active = {s.name: s.active for s in crash.statuses()}
        assert active["proc_connector"] and active["kernel_log"]
        wait_for(lambda: crash.names.last_rescan > float("-inf"), timeout=30,
                 message="the crash watcher to learn the processes already running")
        scraper.values()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == -signal.SIGSEGV
        try:
            wait_for(lambda: crash.book.crashes().get((app, "SIGSEGV"), 0) >= 1, timeout=30, message="the crash")
        except AssertionError as err:
            raise AssertionError(f"{err}; crashes counted: {crash.book.crashes()}") from None
        time.sleep(3)  # the kernel-log line (tid, thread comm) arrives too
        crashes = crash.book.crashes()
        assert crashes[(app, "SIGSEGV")] == 1
        assert not any(name == thread_name for name, _ in crashes), crashes


# ----------------------------------------------------------------------------- network

@pytest.mark.parametrize("user", ["root", "nobody"])
def test_nohup_server_and_setsid_client_get_their_own_tcp_bytes(user: str, nobody_or_none, shared_dir: Path,
                                                                procs: Procs) -> None:
    server_app, client_app = f"atlasnet_srv_{TAG}", f"atlasnet_cli_{TAG}"
    for name in (server_app, client_app):
        shutil.copy(PEER, shared_dir / f"{name}.py")
        os.chmod(shared_dir / f"{name}.py", 0o644)
    size, first = 8_000_000, 1000
    prefix = as_user(user)
    # every collector: the crash watcher names processes at fork and exec too, before their sockets exist
    with exporter_as(user, {}, nobody_or_none, shared_dir) as scraper:
        python = python_for(user)
        # a wrapper that does some setup, then execs the program: the wrapper lives long enough to be named
        server = procs.start([*prefix, "nohup", "sh", "-c",
                              f'sleep 0.5; exec {python} {shared_dir / f"{server_app}.py"} recv s{TAG} 2'],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        client = procs.start([*prefix, "setsid", "env", "sh", "-c",
                              f'sleep 0.5; exec {python} {shared_dir / f"{client_app}.py"} send c{TAG} 2 {port} '
                              f'{first} {size}'],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "sent"
        tx_key = f'atlas_app_network_transmit_bytes_total{{app="{client_app}"}}'
        rx_key = f'atlas_app_network_receive_bytes_total{{app="{server_app}"}}'
        wait_for(lambda: scraper.values().get(tx_key, 0) >= first, timeout=30,
                 message="the client's connection attributed to the client")
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
        want = first + size

        def settled() -> dict[str, float] | None:
            values = scraper.values()
            ok = abs(values.get(tx_key, 0) - want) <= 0.01 * want and abs(values.get(rx_key, 0) - want) <= 0.01 * want
            return values if ok else None

        values = wait_for(settled, timeout=40, message=f"{want} bytes on each end")
        for launcher in ("nohup", "setsid", "env", "sh", "python3"):
            assert values.get(f'atlas_app_network_transmit_bytes_total{{app="{launcher}"}}', 0) < size / 2
            assert values.get(f'atlas_app_network_receive_bytes_total{{app="{launcher}"}}', 0) < size / 2


# ----------------------------------------------------------------------------- cgroup moves

@pytest.mark.parametrize("user", ["root", "nobody"])
def test_a_cgroup_move_after_exec_renames_the_process(user: str, nobody_or_none, shared_dir: Path,
                                                      procs: Procs) -> None:
    """Named from one scope, then moved (as a launcher does) into another: the next scans rename it."""
    if not IS_ROOT:
        pytest.skip("moving a process to another cgroup needs root")
    root = find_cgroup2_root()
    assert root is not None, "no cgroup2 mount"
    first, second = f"atlas-from-{TAG}-{user}", f"atlas-move-{TAG}-{user}"
    folders = [root / f"{first}.scope", root / f"{second}.scope"]
    for folder in folders:
        folder.mkdir()
    try:
        with exporter_as(user, {}, nobody_or_none, shared_dir, enabled={"process"}) as scraper:
            # the real interpreter, not a shim: no later exec may rename it (only its cgroup moves)
            proc = procs.start(["sh", "-c", f"exec {SYSTEM_PYTHON} -c 'import time; time.sleep(120)' {second}"])
            wait_for(lambda: second.encode() in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), timeout=20,
                     message="the exec")
            (folders[0] / "cgroup.procs").write_text(str(proc.pid))
            first_key = f'atlas_app_processes{{app="{first}"}}'
            key = f'atlas_app_processes{{app="{second}"}}'
            wait_for(lambda: scraper.values().get(first_key) == 1, timeout=30, message=f"the process named {first}")
            (folders[1] / "cgroup.procs").write_text(str(proc.pid))
            values = wait_for(lambda: (v := scraper.values()).get(key) == 1 and v, timeout=30,
                              message=f"the process renamed {second} after its move")
            assert values.get(first_key, 0) == 0
            proc.kill()
            proc.wait(timeout=20)
    finally:
        deadline = time.monotonic() + 20
        for folder in folders:
            while True:
                try:
                    folder.rmdir()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)


# ----------------------------------------------------------------------------- fold slots

@pytest.mark.parametrize("user", ["root", "nobody"])
def test_short_lived_programs_leave_slots_for_a_new_daemon(user: str, nobody_or_none, shared_dir: Path,
                                                          procs: Procs) -> None:
    """100 distinct short-lived programs, then a new daemon: it has its own name with max_apps 25."""
    config = {
        "max_apps": 25,
        "apps": [
            {"name": "short-{1}", "cmdline": f"atlas-short-{TAG}-(\\d+)"},
            {"name": f"daemon-{TAG}", "cmdline": f"atlas-daemon-{TAG}"},
            {"name": "host", "comm": ".*"},  # everything else on this shared machine is one app
        ],
    }
    with exporter_as(user, config, nobody_or_none, shared_dir) as scraper:
        first = scraper.values()
        assert first['atlas_app_names_folded_total'] == 0
        program = "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); time.sleep(0.3)"
        for batch in range(10):
            group = [subprocess.Popen([*as_user(user), "sh", "-c", f'exec {python_for(user)} -c "{program}" "$0"',
                                       f"atlas-short-{TAG}-{batch * 10 + i}"], cwd="/")
                     for i in range(10)]
            for proc in group:
                assert proc.wait(timeout=60) == 0
        if scraper.exporter is not None:  # root: the exec events named every one of them, slots untaken
            named = {e.name for e in list(scraper.exporter.resolver._watched.values())
                     if e.name.startswith("short-")}
            assert len(named) >= 90, named
        daemon = procs.start([*as_user(user), "sh", "-c", f"exec {python_for(user)} -c 'import time; time.sleep(120)' "
                              f"atlas-daemon-{TAG}"], cwd="/")
        key = f'atlas_app_processes{{app="daemon-{TAG}"}}'
        values = wait_for(lambda: (v := scraper.values()).get(key) == 1 and v, timeout=30,
                          message="the daemon under its own name")
        assert values["atlas_app_names_folded_total"] == 0
        assert not any(k.startswith("atlas_app_processes{") and "short-" in k for k in values)
        daemon.kill()


FIRST = """\
import os, socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.sendall(b"a" * int(sys.argv[2]))
print("sent", flush=True)
sys.stdin.readline()
os.set_inheritable(sock.fileno(), True)
python = os.path.realpath(sys.executable)  # python3 -> python3.11: the comm changes, as with most execs
os.execv(python, [python, sys.argv[4], str(sock.fileno()), sys.argv[3]])
"""
SECOND = """\
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
sock.sendall(b"b" * int(sys.argv[2]))
sock.close()
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_a_socket_follows_its_owner_across_an_exec(user: str, nobody_or_none, shared_dir: Path,
                                                   procs: Procs) -> None:
    """A connection opened by a wrapper that then execs the real program: later bytes go to the program."""
    first_app, second_app, server_app = f"atlas_wrap_{TAG}", f"atlas_prog_{TAG}", f"atlas_sink_{TAG}"
    (shared_dir / f"{first_app}.py").write_text(FIRST)
    (shared_dir / f"{second_app}.py").write_text(SECOND)
    shutil.copy(PEER, shared_dir / f"{server_app}.py")
    for path in shared_dir.glob("*.py"):
        os.chmod(path, 0o644)
    python, prefix = python_for(user), as_user(user)
    before, after = 2_000_000, 6_000_000
    # every collector: as root the proc connector's exec event renames the process at once; as nobody
    # the next scan does, from its changed comm
    with exporter_as(user, {}, nobody_or_none, shared_dir) as scraper:
        server = procs.start([*prefix, python, str(shared_dir / f"{server_app}.py"), "recv", f"k{TAG}", "2"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        client = procs.start([*prefix, python, str(shared_dir / f"{first_app}.py"), port, str(before), str(after),
                              str(shared_dir / f"{second_app}.py")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "sent"
        first_key = f'atlas_app_network_transmit_bytes_total{{app="{first_app}"}}'
        second_key = f'atlas_app_network_transmit_bytes_total{{app="{second_app}"}}'
        wait_for(lambda: abs(scraper.values().get(first_key, 0) - before) <= 0.01 * before, timeout=30,
                 message="the wrapper's bytes")
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "ready"  # exec'd: the same pid, the same socket
        wait_for(lambda: f'atlas_app_processes{{app="{second_app}"}}' in scraper.values(), timeout=30,
                 message="the program seen by a scan")
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"

        def settled() -> dict[str, float] | None:
            values = scraper.values()
            return values if abs(values.get(second_key, 0) - after) <= 0.01 * after else None

        values = wait_for(settled, timeout=40, message=f"{after} bytes credited to {second_app}")
        assert abs(values[first_key] - before) <= 0.01 * before


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_crash_reports_are_named_by_the_resolver(user: str, nobody_or_none, shared_dir: Path) -> None:
    """A report whose process is gone: named by the same rules, cleaned and folded like a live process."""
    reports = shared_dir / "crash"
    reports.mkdir()
    os.chmod(reports, 0o755)
    config = {"apps": [{"name": f"billing-{TAG}", "exe": f"/opt/billing-{TAG}/"}],
              "crash": {"report_dirs": [str(reports)]}}
    when = time.strftime("%a %b %d %H:%M:%S %Y")
    with exporter_as(user, config, nobody_or_none, shared_dir, enabled={"process", "crash"}) as scraper:
        wait_for(lambda: scraper.values().get('atlas_crash_source_active{source="apport"}') == 1, timeout=30,
                 message="the apport source")
        for name, exe in ((f"_opt_billing-{TAG}_bin_worker.0.crash", f"/opt/billing-{TAG}/bin/worker"),
                          (f"_opt_tools_atlas_rep_{TAG}.0.crash", f"/opt/tools/atlas rep\x1b[1m{TAG}")):
            path = reports / name
            path.write_text(f"ProblemType: Crash\nDate: {when}\nExecutablePath: {exe}\nSignal: 11\n"
                            f"ProcStatus:\n Name:\tworker\n Pid:\t{4_000_000 + len(name)}\n")
            os.chmod(path, 0o644)
        rule_key = f'atlas_app_crashes_total{{app="billing-{TAG}",reason="SIGSEGV"}}'
        clean_key = f'atlas_app_crashes_total{{app="atlas_rep_[1m{TAG}",reason="SIGSEGV"}}'
        values = wait_for(lambda: (v := scraper.values()).get(rule_key) == 1 and clean_key in v and v, timeout=30,
                          message=f"both reports counted ({[k for k in scraper.values() if 'crashes_total' in k]})")
        assert values[clean_key] == 1
