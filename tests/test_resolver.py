"""The identity service: cleaning, the fold for exported apps only, names that follow the process."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from atlas_exporter.apps.naming import Namer
from atlas_exporter.apps.resolver import OTHER, AppResolver, clean_name
from atlas_exporter.collectors.crash.reports_linux import parse_tgid
from atlas_exporter.collectors.crash.source_linux import LinuxCrashSource
from atlas_exporter.config import parse_config
from atlas_exporter.model import ProcessId, ProcIdentity, ProcSample


class World:
    """A fake process table: identities, current comms, cgroups and kernel threads, by pid."""

    def __init__(self) -> None:
        self.idents: dict[ProcessId, ProcIdentity] = {}
        self.kernel: set[int] = set()
        self.reads = 0
        self.cgroup_reads = 0

    def add(self, pid: int, comm: str, *, started: int = 1, cgroup: str = "/", cmdline: tuple[str, ...] = ()
            ) -> ProcessId:
        token = ProcessId(pid, started)
        self.idents = {k: v for k, v in self.idents.items() if k.pid != pid}
        self.idents[token] = ProcIdentity(comm=comm, cgroup=cgroup, cmdline=cmdline or (comm,))
        return token

    def _find(self, pid: int) -> ProcessId | None:
        return next((p for p in self.idents if p.pid == pid), None)

    def identity(self, pid: ProcessId) -> ProcIdentity | None:
        self.reads += 1
        ident = self.idents.get(pid)
        return None if ident is None or pid.pid in self.kernel else ident

    def start_token(self, pid: int) -> ProcessId | None:
        return self._find(pid)

    def probe(self, pid: int) -> tuple[ProcessId, str, bool] | None:
        token = self._find(pid)
        if token is None:
            return None
        return token, self.idents[token].comm, pid in self.kernel

    def cgroup_of(self, pid: ProcessId) -> str | None:
        self.cgroup_reads += 1
        ident = self.idents.get(pid)
        return ident.cgroup if ident else None


def sample(token: ProcessId, comm: str, age: float = 3600.0) -> ProcSample:
    return ProcSample(token, 1, "S", 0.0, 0.0, 1, 0, time.time() - age, comm=comm)


def resolver(world: World, max_apps: int = 100, rules: list | None = None) -> AppResolver:
    config = parse_config({"apps": rules or []})
    return AppResolver(world, Namer(config.apps), max_apps)  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "clean"), [
    ("nginx", "nginx"),
    (b"bad\xff\xfeutf8", "bad\ufffd\ufffdutf8"),
    ("lone\udcffsurrogate", "lone\ufffdsurrogate"),
    ("tab\tand\nnewline", "tab_and_newline"),
    ("npm  start", "npm_start"),
    ("  padded  ", "padded"),
    ("bell\x07\x1b[31m", "bell_[31m"),
    ("", "unknown"),
    ("\x00\x01", "unknown"),
    ("x" * 300, "x" * 128),
    ("Zürich-дом", "Zürich-дом"),
])
def test_names_are_clean_utf8_without_spaces_or_control_characters(raw, clean) -> None:
    assert clean_name(raw) == clean
    assert clean_name(raw).encode("utf-8").decode("utf-8") == clean


def test_every_name_the_resolver_gives_is_clean() -> None:
    world = World()
    token = world.add(10, "evil\x1b]0;x\x07 name")
    res = resolver(world)
    name = res.app_for(sample(token, "evil\x1b]0;x\x07 name"))
    assert name == "evil_]0;x"  # a process title counts by its first word (naming), cleaned
    assert all(ch.isprintable() and not ch.isspace() for ch in name)
    assert res.app_of_pid(10) == name
    assert res.app_for_name(b"core\xffdump comm") == "core\ufffddump_comm"


def test_names_only_watchers_saw_take_no_slot() -> None:
    world = World()
    res = resolver(world, max_apps=3)
    for pid in range(100, 200):  # short-lived programs named by the watchers only
        world.add(pid, f"short{pid}")
        assert res.app_of_pid(pid) == f"short{pid}"
    daemon = world.add(7, "daemon")
    assert res.app_for(sample(daemon, "daemon")) == "daemon"
    assert res.folded() == (0, 3)
    assert res.export("short150") == "short150"  # a crash counted for it: now it has a series
    assert res.export("short151") == "short151"
    assert res.export("short152") == OTHER
    assert res.folded() == (1, 3)


def test_the_first_fold_is_a_warning_and_later_ones_are_not(caplog) -> None:
    res = resolver(World(), max_apps=1)
    with caplog.at_level(logging.DEBUG, logger="atlas_exporter.apps.resolver"):
        assert res.export("a") == "a"
        assert res.export("b") == OTHER
        assert res.export("c") == OTHER
        assert res.export("b") == OTHER  # sticky, counted once
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "max_apps (1)" in warnings[0].getMessage()
    assert res.folded() == (2, 1)


def test_kernel_threads_are_never_named() -> None:
    world = World()
    world.add(2, "kthreadd")
    world.kernel.add(2)
    res = resolver(world)
    assert res.app_of_pid(2) is None
    assert world.reads == 0  # not even read


def test_an_exec_renames_even_when_the_comm_stays_the_same() -> None:
    world = World()
    token = world.add(20, "python3", cmdline=("python3", "/srv/first.py"))
    res = resolver(world)
    assert res.app_of_pid(20) == "first"
    world.idents[token] = ProcIdentity(comm="python3", cgroup="/", cmdline=("python3", "/srv/second.py"))
    assert res.app_of_pid(20) == "first"  # nothing says it changed: the cache answers
    assert res.app_after_exec(20) == "second"  # the exec event
    assert res.app_for(sample(token, "python3")) == "second"


def test_a_changed_comm_renames_at_once_for_watchers_and_scans() -> None:
    world = World()
    token = world.add(21, "sh", cmdline=("sh", "-c", 'sleep 1; exec "$0"', "crasher"))
    res = resolver(world)
    assert res.app_for(sample(token, "sh")) == "sh"
    world.idents[token] = ProcIdentity(comm="crasher", cgroup="/", cmdline=("./crasher",))
    assert res.app_of_pid(21) == "crasher"  # the watcher's stat read shows the new comm
    assert res.app_for(sample(token, "crasher")) == "crasher"


def test_a_cgroup_move_renames_at_the_next_scans() -> None:
    world = World()
    clock = [1000.0]
    token = world.add(30, "firefox", cgroup="/user.slice/user-1000.slice/user@1000.service/app.slice")
    res = AppResolver(world, Namer(), 100, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert res.app_of_pid(30) == "firefox"  # named by a watcher before the launcher moved it
    world.idents[token].cgroup = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-web-42.scope"
    young = sample(token, "firefox", age=1.0)
    assert res.app_for(young) == "web"  # first scan of a watcher-named process: cgroup checked
    world.idents[token].cgroup = "/system.slice/moved.service"
    assert res.app_for(young) == "web"  # not yet: checked again 1 s after naming
    clock[0] += 1.1
    assert res.app_for(young) == "moved"


def test_cgroups_are_checked_less_and_less_often() -> None:
    world = World()
    clock = [1000.0]
    tokens = [world.add(pid, f"p{pid}") for pid in range(40, 60)]
    res = AppResolver(world, Namer(), 100, clock=lambda: clock[0])  # type: ignore[arg-type]
    for token in tokens:
        res.app_for(sample(token, f"p{token.pid}"))
    world.cgroup_reads = 0
    for _ in range(120):  # two minutes of scans every second
        clock[0] += 1.0
        for token in tokens:
            res.app_for(sample(token, f"p{token.pid}"))
    assert world.cgroup_reads <= 5 * len(tokens)  # 1, 4, 16, 60 s apart, not 120 times
    world.idents[tokens[0]].cgroup = "/system.slice/late.service"
    for _ in range(61):
        clock[0] += 1.0
        name = res.app_for(sample(tokens[0], "p40"))
    assert name == "late"  # an old process's move is seen within a minute


def test_names_from_reports_go_through_rules_cleaning_and_the_fold() -> None:
    res = resolver(World(), max_apps=2, rules=[{"name": "db", "comm": "^postgres"}])
    assert res.app_for_name("postgres") == "db"
    # comm is cut at 15 bytes; the report's executable gives the whole name
    assert res.app_for_name("backup-schedule", exe="/opt/b/backup-scheduler") == "backup-scheduler"
    assert res.app_for_name("third one") == OTHER
    assert res.app_for_name("postgres") == "db"
    assert res.folded() == (1, 2)


def test_tgid_from_status() -> None:
    status = b"Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4250\n"
    assert parse_tgid(status) == 4242
    assert parse_tgid(b"Name:\tx\n") is None


def test_a_kernel_log_line_of_a_thread_counts_for_its_process(tmp_path: Path) -> None:
    procfs = tmp_path / "proc"
    (procfs / "4250").mkdir(parents=True)
    (procfs / "4250" / "status").write_bytes(b"Name:\tworker-thr\nTgid:\t4242\nPid:\t4250\n")
    names = {4242: "server"}
    source = LinuxCrashSource(names.get, procfs=procfs, use_connector=False, clock=lambda: 5000.0,
                              monotonic=lambda: 100.0)
    source._on_kmsg("6,1234,99000000,-;worker-thr[4250]: segfault at 0 ip 00007f sp 00007ffd error 4 in x[1+2]")
    source._on_kmsg("6,1235,99000001,-;worker-thr[4250]: segfault at 0 ip 00007f sp 00007ffd error 4 in x[1+2]")
    assert source.book.crashes() == {("server", "SIGSEGV"): 1}  # the process's app, once


def test_a_gone_process_is_named_from_its_exec_never_from_its_parent() -> None:
    from atlas_exporter.collectors.crash.connector_linux import ProcEvent

    world = World()
    world.add(500, "bash", cmdline=("bash",))
    res = resolver(world)
    source = LinuxCrashSource(res, use_connector=False, clock=lambda: 5000.0, monotonic=lambda: 100.0)
    source._on_proc_event(ProcEvent("exec", 0, pid=500, tgid=500))
    source._on_proc_event(ProcEvent("fork", 0, pid=501, tgid=501, parent_pid=500, parent_tgid=500))
    world.add(501, "python3", cmdline=("python3", "/tmp/crasher.py"))
    source._on_proc_event(ProcEvent("exec", 0, pid=501, tgid=501))
    del world.idents[ProcessId(501, 1)]  # reaped before the exit event is read
    source._on_proc_event(ProcEvent("exit", 0, pid=501, tgid=501, exit_code=11))
    # a child that forks and crashes without an exec is its parent's program
    source._on_proc_event(ProcEvent("fork", 0, pid=502, tgid=502, parent_pid=500, parent_tgid=500))
    source._on_proc_event(ProcEvent("exit", 0, pid=502, tgid=502, exit_code=6))
    assert source.book.crashes() == {("crasher", "SIGSEGV"): 1, ("bash", "SIGABRT"): 1}


# ----------------------------------------------------------------------------- network attribution

class Owners:
    """Socket owners by inode: a pid per inode, and each pid's current name (it may exec)."""

    def __init__(self) -> None:
        self.pid_of: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._last: int | None = None

    def prepare(self, ns: int, sockets: list) -> None:
        pass

    def owner(self, ns: int, info) -> str | None:
        self._last = self.pid_of.get(info.inode)
        return self.names.get(self._last) if self._last is not None else None

    def settled(self, ns: int, info) -> bool:
        return True

    def owner_id(self, ns: int, info) -> object | None:
        return self._last

    def name_of(self, owner: object) -> str | None:
        return self.names.get(owner)  # type: ignore[call-overload]


def tcp(cookie: int, acked: int, received: int, inode: int):
    import socket as _socket

    from atlas_exporter.collectors.network.sockdiag_linux import TcpSocketInfo

    return TcpSocketInfo(_socket.AF_INET, 1, 40000, 80, b"\x7f\0\0\1", 0, inode, cookie, acked, received, None)


def test_a_socket_follows_its_owner_across_an_exec() -> None:
    from atlas_exporter.collectors.network.accounts import SocketAccounts

    owners = Owners()
    owners.pid_of[9001] = 77
    owners.names[77] = "sh"
    acc = SocketAccounts(owners, lambda: 100.0)
    acc.apply_dump(1, [tcp(1, 1000, 10, 9001)])
    owners.names[77] = "server"  # exec'd, the socket inherited
    acc.apply_dump(1, [tcp(1, 5000, 30, 9001)])
    assert acc.totals() == {"sh": (10.0, 1000.0), "server": (20.0, 4000.0)}
    del owners.names[77]  # the owner is gone, the socket lingers: its last name keeps it
    acc.apply_dump(1, [tcp(1, 6000, 30, 9001)])
    assert acc.totals()["server"] == (20.0, 5000.0)


def test_network_apps_take_a_slot_when_first_credited() -> None:
    from atlas_exporter.collectors.network.accounts import SocketAccounts

    res = resolver(World(), max_apps=1)
    owners = Owners()
    owners.pid_of.update({9001: 1, 9002: 2, 9003: 3})
    owners.names.update({1: "a", 2: "idle", 3: "b"})
    acc = SocketAccounts(owners, lambda: 100.0, export=res.export)
    acc.apply_dump(1, [tcp(1, 10, 0, 9001), tcp(2, 0, 0, 9002)])  # "idle" moved no byte: no slot
    acc.apply_dump(1, [tcp(1, 10, 0, 9001), tcp(2, 0, 0, 9002), tcp(3, 5, 0, 9003)])
    assert acc.totals() == {"a": (0.0, 10.0), OTHER: (0.0, 5.0)}
    assert res.folded() == (1, 1)


def test_a_cgroup_whose_processes_are_gone_still_names_its_app(tmp_path: Path) -> None:
    from atlas_exporter.collectors.network.owners_linux import CgroupApps

    world = World()
    res = resolver(world)
    root = tmp_path / "cgroup"
    scope = root / "system.slice" / "backup.service"
    scope.mkdir(parents=True)
    (scope / "cgroup.procs").write_text("")  # the short job already exited
    (root / "user.slice").mkdir()
    (root / "user.slice" / "cgroup.procs").write_text("")
    apps = CgroupApps(root, res)
    assert apps.app_of(os.stat(scope).st_ino) == "backup"
    assert apps.app_of(os.stat(root / "user.slice").st_ino) is None  # not an app's cgroup


def test_tcp_opens_counter() -> None:
    from atlas_exporter.collectors.network.namespaces_linux import parse_tcp_opens

    snmp = ("Ip: Forwarding DefaultTTL\nIp: 1 64\n"
            "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab "
            "InSegs\nTcp: 1 200 120000 -1 120 31 2 4 6 9876\n")
    assert parse_tcp_opens(snmp) == 151
    assert parse_tcp_opens("Tcp: A B\nTcp: 1 2\n") is None


def test_the_status_page_shows_the_fold() -> None:
    from atlas_exporter.exporter.status import StatusPage
    from atlas_exporter.model import Snapshot

    res = resolver(World(), max_apps=2)
    for name in ("a", "b", "c", "d"):
        res.export(name)
    page = StatusPage(lambda: Snapshot(wall_time=0.0, monotonic=1.0), list, folded=res.folded).render()
    assert 'max_apps 2: 2 app names folded into "other"' in page


def test_a_gone_thread_waits_for_its_exit_event_to_find_its_process(tmp_path: Path) -> None:
    from atlas_exporter.collectors.crash.connector_linux import ProcEvent

    now = [100.0]
    source = LinuxCrashSource({4242: "server"}.get, procfs=tmp_path, use_connector=False, clock=lambda: 5000.0,
                              monotonic=lambda: now[0])
    source._connector = object()  # type: ignore[assignment]  # events are fed by hand below
    # the thread (born before the exporter started) and its process are gone when the line is read
    source._on_kmsg("6,1234,99000000,-;worker-thr[4250]: segfault at 0 ip 00007f sp 00007ffd error 4 in x[1+2]")
    assert source.book.crashes() == {}
    source._on_proc_event(ProcEvent("exit", 99_000_000_000, pid=4250, tgid=4242, exit_code=11))
    source._on_proc_event(ProcEvent("exit", 99_000_000_000, pid=4242, tgid=4242, exit_code=11))
    source._count_waiting_kmsg()
    assert source.book.crashes() == {("server", "SIGSEGV"): 1}
    # a line no event ever maps is counted under its own comm once it has waited long enough
    source._on_kmsg("6,1240,99000100,-;lonely[7777]: segfault at 0 ip 00007f sp 00007ffd error 4 in x[1+2]")
    source._count_waiting_kmsg()
    assert ("lonely", "SIGSEGV") not in source.book.crashes()
    now[0] += 5
    source._count_waiting_kmsg()
    assert source.book.crashes()[("lonely", "SIGSEGV")] == 1
    source._connector = None


def test_over_the_naming_budget_an_exec_is_captured_and_named_only_if_it_crashes() -> None:
    from atlas_exporter.collectors.crash.connector_linux import ProcEvent

    world = World()
    res = resolver(world)
    source = LinuxCrashSource(res, use_connector=False, clock=lambda: 5000.0, monotonic=lambda: 100.0,
                              names_per_second=1.0)
    named_before = world.reads
    for pid in range(600, 606):  # an exec storm: one name a second, five captures
        world.add(pid, "python3", cmdline=("python3", f"/srv/job{pid}.py"))
        source._on_proc_event(ProcEvent("exec", 0, pid=pid, tgid=pid))
    assert world.reads - named_before == 6  # one named, five captured: identities read, not named
    for pid in range(600, 606):
        del world.idents[ProcessId(pid, 1)]  # all reaped before their exits are read
        source._on_proc_event(ProcEvent("exit", 0, pid=pid, tgid=pid, exit_code=11 if pid == 603 else 0))
    assert source.book.crashes() == {("job603", "SIGSEGV"): 1}
    assert source.pids.captured(601) is None  # nothing kept after the exits
