"""Every death classified: exits by outcome, OOM kills from the kernel log and from cgroups.

Pure parts first (kernel log lines, mount tables, counter files, dedup), then real deaths
on this machine: processes exiting 0 and 3 (directly and through `sh -c`), a process killed
by a signal, and a process killed by the OOM killer in a memory-limited cgroup of its own
(v1 or v2, whichever the host has; the test removes its cgroup).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas_exporter.apps.crashes import CrashBook, CrashEvent, decode_wait_status, exit_outcome
from atlas_exporter.collectors.crash import reports_linux as rl
from atlas_exporter.collectors.crash import source_linux as cl
from atlas_exporter.collectors.crash.oom_linux import CgroupOomWatcher, MemoryRoot, parse_memory_mounts, parse_oom_kill
from conftest import parse_exposition, wait_for

IS_ROOT = os.geteuid() == 0
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux proc connector and cgroups")


# ----------------------------------------------------------------------------- pure parts


def test_kernel_oom_lines_are_oom_kills_of_that_pid() -> None:
    killed = rl.parse_kmsg_record(
        "3,812,5123456789,-;Out of memory: Killed process 4242 (python3) total-vm:1290000kB, anon-rss:262000kB, "
        "file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:600kB oom_score_adj:0")
    assert killed is not None and (killed.pid, killed.comm, killed.reason) == (4242, "python3", "oom_kill")
    memcg = rl.parse_kmsg_record("3,813,5123456790,-;Memory cgroup out of memory: Killed process 77 (my (odd) app) "
                                 "total-vm:10kB")
    assert memcg is not None and (memcg.pid, memcg.comm) == (77, "my (odd) app")
    line = rl.parse_kmsg_record(
        "6,811,5123456788,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
        "oom_memcg=/atlas,task_memcg=/atlas,task=a,b,pid=4242,uid=0")
    assert line is not None and (line.pid, line.comm, line.reason) == (4242, "a,b", "oom_kill")
    assert rl.parse_kmsg_record("6,1,1,-;Out of memory: Killed process x (y)") is None


def test_exit_outcomes() -> None:
    assert exit_outcome(decode_wait_status(0)) == "success"
    assert exit_outcome(decode_wait_status(3 << 8)) == "error"
    assert exit_outcome(decode_wait_status(9)) == "signal"
    assert exit_outcome(decode_wait_status(11 | 0x80)) == "signal"
    assert exit_outcome(decode_wait_status(0x137F)) is None  # stopped, not an exit


def test_mounts_and_counter_files() -> None:
    mounts = ("cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n"
              "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
              "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n")
    assert parse_memory_mounts(mounts) == [MemoryRoot(Path("/sys/fs/cgroup/unified"), 2),
                                           MemoryRoot(Path("/sys/fs/cgroup/memory"), 1)]
    assert parse_oom_kill("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n") == 2
    assert parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n") == 5
    assert parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n") is None  # v1 before Linux 4.13


def test_one_oom_kill_seen_by_the_kernel_log_and_a_cgroup_counts_once() -> None:
    book = CrashBook(window_seconds=30)
    assert book.record_crash(CrashEvent("cgroup_oom", 100.0, "oom_kill", "db"))
    assert not book.record_crash(CrashEvent("kernel_log", 101.0, "oom_kill", "db", pid=9))
    assert book.record_crash(CrashEvent("kernel_log", 102.0, "SIGSEGV", "web", pid=10))
    # an OOM kill (no pid) right after a crash of the same app is another death, not the same one
    assert book.record_crash(CrashEvent("cgroup_oom", 103.0, "oom_kill", "web"))
    assert book.crashes() == {("db", "oom_kill"): 1, ("web", "SIGSEGV"): 1, ("web", "oom_kill"): 1}


def test_cgroup_watcher_attributes_rises_to_the_cgroups_app(tmp_path: Path) -> None:
    root = tmp_path / "memory"
    apps = {100: "db", 200: "db", 300: "web", 400: "shell"}

    def cgroup(name: str, kills: int, pids: list[int]) -> Path:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")
        (folder / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        return folder

    root.mkdir()
    (root / "memory.oom_control").write_text("oom_kill 50\n")  # the root cgroup: never an app's
    db = cgroup("db.service", 1, [100, 200])
    cgroup("mixed.scope", 0, [300, 400])
    now = [0.0]
    watcher = CgroupOomWatcher(apps.get, roots=[MemoryRoot(root, 1)], clock=lambda: now[0])
    assert watcher.poll() == []  # the baseline: the kill before the start does not count
    (db / "memory.oom_control").write_text("oom_kill 3\n")
    (db / "cgroup.procs").write_text("")  # its processes died: the app learned before still owns it
    cgroup("mixed.scope", 1, [300, 400])
    (root / "memory.oom_control").write_text("oom_kill 51\n")
    now[0] = 1.0
    assert watcher.poll() == [("db", 2)]
    assert watcher.unattributed == 1  # the shared cgroup's kill is left to the kernel log
    cgroup("batch.scope", 1, [300])  # created after the start: its kills count from zero
    now[0] = 2.0
    assert watcher.poll() == [("web", 1)]


# ----------------------------------------------------------------------------- real deaths


@pytest.fixture
def exporter() -> Iterator[object]:
    from atlas_exporter.config import parse_config
    from atlas_exporter.exporter.runtime import Exporter

    config = parse_config({"apps": [{"name": "{1}", "cmdline": r"(atlas-death-[0-9a-f]{8}-[a-z0-9]+)"}],
                           "snapshot_max_age_seconds": 0})
    exp = Exporter(config, enabled={"process", "crash"})
    exp.start()
    crash = next(s for s in exp.sources if s.name == "crash")
    crash.poll_interval_seconds = 0.2
    yield exp
    exp.stop()


def _metrics(exp: object) -> dict[str, float]:
    return parse_exposition(exp.render_metrics()[0].decode())  # type: ignore[attr-defined]


@linux_only
@pytest.mark.skipif(not IS_ROOT, reason="the proc connector needs root or CAP_NET_ADMIN")
def test_exits_are_counted_by_outcome(exporter: object) -> None:
    tag = f"atlas-death-{uuid.uuid4().hex[:8]}"
    code = "import sys; sys.stdin.read(); sys.exit(int(sys.argv[1]))"
    runs = [
        ([sys.executable, "-c", code, "0", f"{tag}-ok"], 0),
        ([sys.executable, "-c", code, "3", f"{tag}-fail"], 3),
        (["sh", "-c", f"exec {sys.executable} -c '{code}' 3 {tag}-shfail"], 3),
        (["sh", "-c", f"{sys.executable} -c '{code}' 0 {tag}-shok; exit 0"], 0),
        ([sys.executable, "-c", "import os, sys; sys.stdin.read(); os.kill(os.getpid(), 15)", f"{tag}-killed"], -15),
    ]
    procs = [(subprocess.Popen(argv, stdin=subprocess.PIPE), expected) for argv, expected in runs]
    try:  # scraped while alive: each app has its series before it exits
        def named() -> bool:
            m = _metrics(exporter)
            return all(f'atlas_app_processes{{app="{tag}-{name}"}}' in m
                       for name in ("ok", "fail", "shfail", "shok", "killed"))

        wait_for(named, message="every process named")
    finally:
        for proc, _ in procs:
            assert proc.stdin is not None
            proc.stdin.close()
    for proc, expected in procs:
        assert proc.wait(timeout=60) == expected
    # never scanned: a short command that succeeds takes no series of its own; one that fails does
    assert subprocess.run([sys.executable, "-c", "pass", f"{tag}-quick"]).returncode == 0
    assert subprocess.run([sys.executable, "-c", "raise SystemExit(2)", f"{tag}-quickfail"]).returncode == 2

    # the shell of -shok forks the child and exits 0 itself: its command line names the same app
    expected_exits = {f"{tag}-ok": ("success", 1), f"{tag}-fail": ("error", 1), f"{tag}-shfail": ("error", 1),
                      f"{tag}-shok": ("success", 2), f"{tag}-killed": ("signal", 1),
                      f"{tag}-quickfail": ("error", 1)}

    def counted() -> dict[str, float] | None:
        m = _metrics(exporter)
        for app, (outcome, count) in expected_exits.items():
            if m.get(f'atlas_app_exits_total{{app="{app}",outcome="{outcome}"}}') != count:
                return None
        return m

    try:
        m = wait_for(counted, timeout=30, message="every exit counted")
    except AssertionError:
        seen = {k: v for k, v in _metrics(exporter).items() if k.startswith("atlas_app_exits_total") and tag in k}
        raise AssertionError(f"exits seen: {seen}") from None
    for app, (outcome, _) in expected_exits.items():
        others = [o for o in ("success", "error", "signal") if o != outcome]
        assert all(m[f'atlas_app_exits_total{{app="{app}",outcome="{o}"}}'] == 0 for o in others), app
    assert not any(f'app="{tag}-quick"' in key for key in m)  # counted under "other"
    assert m['atlas_app_exits_total{app="other",outcome="success"}'] >= 1
    assert not any(key.startswith("atlas_app_crashes_total") and tag in key for key in m)  # exits, not crashes


def _memory_cgroup(name: str) -> tuple[Path, int]:
    """Make a memory-limited cgroup: (folder, version); skip when this host has no writable one."""
    roots = parse_memory_mounts(Path("/proc/self/mounts").read_text())
    for root in roots:
        if root.version == 1:
            folder = root.path / name
            folder.mkdir()
            (folder / "memory.limit_in_bytes").write_text(str(48 << 20))
            try:
                (folder / "memory.swappiness").write_text("0")
            except OSError:
                pass
            return folder, 1
    for root in roots:
        if "memory" in (root.path / "cgroup.subtree_control").read_text().split():
            folder = root.path / name
            folder.mkdir()
            (folder / "memory.max").write_text(str(48 << 20))
            (folder / "memory.swap.max").write_text("0") if (folder / "memory.swap.max").exists() else None
            return folder, 2
    pytest.skip("no writable memory cgroup hierarchy on this host")


def _remove_cgroup(folder: Path) -> None:
    for _ in range(100):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            for pid in (folder / "cgroup.procs").read_text().split():  # our own leftovers only
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
    raise AssertionError(f"could not remove {folder}")


@linux_only
@pytest.mark.skipif(not IS_ROOT, reason="making a cgroup and reading the kernel log need root")
def test_oom_kill_in_a_memory_limited_cgroup_counts_once(exporter: object) -> None:
    app = f"atlas-death-{uuid.uuid4().hex[:8]}-oom"
    folder, _version = _memory_cgroup(app)
    # the same kill through the cgroup counter alone (no kernel log, no proc connector)
    cgroup_only = cl.LinuxCrashSource(exporter.resolver.app_of_pid, kmsg=Path("/nonexistent-kmsg"),  # type: ignore
                                      use_connector=False, coredump_dir=Path("/nonexistent"), report_dirs=[],
                                      poll_interval_seconds=0.2)
    cgroup_only.start()
    proc = None
    try:
        hog = "import sys; sys.stdin.readline(); b = bytearray(256 << 20); print(len(b))"
        proc = subprocess.Popen(["sh", "-c", f'echo $$ > {folder}/cgroup.procs && exec "$0" -c "$1" "$2"',
                                 sys.executable, hog, app], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        wait_for(lambda: f'atlas_app_processes{{app="{app}"}}' in _metrics(exporter), message="the hog named")
        crash = next(s for s in exporter.sources if s.name == "crash")  # type: ignore[attr-defined]
        for source in (crash, cgroup_only):
            wait_for(lambda s=source: any(c.owner == app for c in s._oom._cgroups.values()), timeout=20,
                     message="the cgroup's app learned")
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == -9  # SIGKILL from the OOM killer

        def counted() -> dict[str, float] | None:
            m = _metrics(exporter)
            key = f'atlas_app_crashes_total{{app="{app}",reason="oom_kill"}}'
            signal_exit = m.get(f'atlas_app_exits_total{{app="{app}",outcome="signal"}}')
            return m if m.get(key) == 1 and signal_exit == 1 else None

        m = wait_for(counted, timeout=30, message="the OOM kill counted")
        time.sleep(1.0)  # give a second report of the same death time to arrive: it must not count
        m = _metrics(exporter)
        crashes = {k: v for k, v in m.items() if k.startswith("atlas_app_crashes_total") and app in k}
        assert crashes == {f'atlas_app_crashes_total{{app="{app}",reason="oom_kill"}}': 1}
        assert wait_for(lambda: cgroup_only.book.crashes() == {(app, "oom_kill"): 1}, timeout=10)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cgroup_only.stop()
        _remove_cgroup(folder)
    assert not folder.exists()


def test_cgroup_v2_local_counter_is_read_and_preferred(tmp_path: Path) -> None:
    root = tmp_path / "unified"
    service = root / "system.slice" / "db.service"
    service.mkdir(parents=True)
    (root / "system.slice" / "memory.events").write_text("oom_kill 0\n")  # hierarchical parent: no procs
    (root / "system.slice" / "cgroup.procs").write_text("")
    (service / "cgroup.procs").write_text("100\n")
    (service / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 9\noom_kill 9\n")  # hierarchical
    (service / "memory.events.local").write_text("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n")
    named = {"db.service": "db"}
    watcher = CgroupOomWatcher({100: "db"}.get, roots=[MemoryRoot(root, 2)],
                               app_of_cgroup=lambda path: named.get(path.rsplit("/", 1)[-1]))
    assert watcher.poll() == []
    (service / "memory.events.local").write_text("oom_kill 2\n")
    (root / "system.slice" / "memory.events").write_text("oom_kill 1\n")  # the same kill, one level up
    assert watcher.poll() == [("db", 1)]
    # a cgroup made and killed between two polls, never seen with a process: named from its path
    fresh = root / "system.slice" / "db.service" / "worker"
    fresh.mkdir()
    (fresh / "memory.events.local").write_text("oom_kill 1\n")
    (fresh / "cgroup.procs").write_text("")
    named["worker"] = "db"
    assert watcher.poll() == [("db", 1)]
