"""Pure bookkeeping of the Linux network source: scrape-sequence tables, fake /proc and cgroup trees."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_exporter.collectors.network.accounts import SocketAccounts
from atlas_exporter.collectors.network.namespaces_linux import change_key, parse_sockstat_tcp, parse_tcp_in_segs
from atlas_exporter.collectors.network.owners_linux import CgroupApps, SocketInodeMap, parse_cgroup2_mount
from atlas_exporter.collectors.network.sockdiag_linux import TCP_LISTEN, TcpSocketInfo

NS = 4026531840


def sock(cookie: int, acked: int | None = 0, received: int | None = 0, *, inode: int | None = None,
         state: int = 1, sport: int = 40000, cgroup_id: int | None = None) -> TcpSocketInfo:
    return TcpSocketInfo(socket.AF_INET, state, sport, 80, b"\x7f\0\0\1", 0,
                         cookie + 1000 if inode is None else inode, cookie, acked, received, cgroup_id)


class FakeOwners:
    """Owners by inode from a table; records what was asked."""

    def __init__(self, table: dict[int, str]) -> None:
        self.table = table
        self.prepared: list[list[int]] = []
        self.asked: list[int] = []
        self.searching: set[int] = set()  # inodes a later lookup may still find

    def prepare(self, ns: int, sockets: list[TcpSocketInfo]) -> None:
        self.prepared.append([s.cookie for s in sockets])

    def owner(self, ns: int, info: TcpSocketInfo) -> str | None:
        self.asked.append(info.cookie)
        return self.table.get(info.inode)

    def settled(self, ns: int, info: TcpSocketInfo) -> bool:
        return info.inode not in self.searching


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def accounts(table: dict[int, str] | None = None) -> tuple[SocketAccounts, FakeOwners, Clock]:
    owners = FakeOwners(table if table is not None else {1001: "web", 1002: "db", 1003: "web"})
    clock = Clock()
    return SocketAccounts(owners, clock), owners, clock


def test_sequence_of_dumps_gives_monotonic_totals() -> None:
    acc, owners, _ = accounts()
    steps = [
        # (dump, expected totals)
        ([sock(1, 100, 10), sock(2, 0, 5)], {"web": (10, 100), "db": (5, 0)}),
        ([sock(1, 300, 10), sock(2, 50, 5), sock(3, 7, 7)], {"web": (17, 307), "db": (5, 50)}),
        ([sock(2, 60, 5), sock(3, 9, 8)], {"web": (18, 309), "db": (5, 60)}),  # socket 1 is gone: web holds
        ([sock(2, 40, 5)], {"web": (18, 309), "db": (5, 60)}),  # a counter that goes back is clamped
    ]
    for dump, want in steps:
        acc.apply_dump(NS, dump)
        assert acc.totals() == want
    assert acc.unattributed == [0.0, 0.0]
    assert owners.asked == [1, 2, 3]  # every socket is bound once, at first sight
    assert acc.sockets_seen == 3


def test_destroy_credits_only_bytes_after_the_last_dump() -> None:
    acc, _, _ = accounts()
    acc.apply_dump(NS, [sock(1, 1000, 0)])
    acc.apply_destroyed(NS, [sock(1, 5000, 1, inode=0)])
    assert acc.totals() == {"web": (1, 5000)}
    acc.apply_dump(NS, [sock(1, 1000, 0)])  # a dump read before the destroy was applied: ignored
    acc.apply_destroyed(NS, [sock(1, 5000, 1, inode=0)])  # a duplicate message: ignored
    assert acc.totals() == {"web": (1, 5000)}
    assert acc.live_count() == 0


def test_socket_that_left_the_dump_still_gets_its_destroy_delta() -> None:
    acc, _, _ = accounts()
    acc.apply_dump(NS, [sock(2, 10, 10)])
    acc.apply_dump(NS, [])  # vanished (e.g. it went to TIME_WAIT) before its destroy message was read
    acc.apply_destroyed(NS, [sock(2, 25, 11, inode=0)])
    assert acc.totals() == {"db": (11, 25)}
    assert acc.destroyed_unknown == 0


def test_gone_sockets_are_forgotten_after_a_while() -> None:
    acc, _, clock = accounts()
    acc.apply_dump(NS, [sock(2, 10, 10)])
    acc.apply_dump(NS, [])
    clock.now += 1000
    acc.apply_dump(NS, [])
    acc.apply_destroyed(NS, [sock(2, 25, 11, inode=0)])  # too late to know it: all of it is unattributed
    assert acc.totals() == {"db": (10, 10)}
    assert acc.unattributed == [11.0, 25.0]


def test_never_sampled_socket_is_unattributed_or_goes_to_its_listener() -> None:
    acc, _, _ = accounts()
    acc.apply_dump(NS, [sock(10, inode=1001, state=TCP_LISTEN, sport=8080)])
    acc.apply_destroyed(NS, [sock(11, 3, 700, inode=0, sport=8080),  # server side of a short connection
                             sock(12, 700, 3, inode=0, sport=51000)])  # client side: nobody knows whose
    assert acc.totals() == {"web": (700, 3)}
    assert acc.unattributed == [3.0, 700.0]
    assert acc.destroyed_unknown == 2


def test_orphaned_socket_seen_first_in_a_dump_goes_to_its_listener() -> None:
    acc, _, _ = accounts()
    acc.apply_dump(NS, [sock(10, inode=1002, state=TCP_LISTEN, sport=5432), sock(20, 50, 60, inode=0, sport=5432)])
    assert acc.totals() == {"db": (60, 50)}


def test_port_shared_by_two_apps_is_ambiguous() -> None:
    acc, _, _ = accounts()
    acc.apply_dump(NS, [sock(10, inode=1001, state=TCP_LISTEN, sport=443),
                        sock(11, inode=1002, state=TCP_LISTEN, sport=443)])
    acc.apply_destroyed(NS, [sock(12, 5, 5, inode=0, sport=443)])
    assert acc.totals() == {}
    assert acc.unattributed == [5.0, 5.0]


def test_unresolved_socket_is_retried_and_earlier_bytes_stay_unattributed() -> None:
    acc, owners, _ = accounts({})
    acc.apply_dump(NS, [sock(5, 100, 0, inode=1005)])
    assert acc.unattributed == [0.0, 100.0]
    owners.table[1005] = "late"
    acc.apply_dump(NS, [sock(5, 150, 0, inode=1005)])
    assert acc.totals() == {"late": (0, 50)}
    assert acc.unattributed == [0.0, 100.0]
    assert owners.prepared == [[5], [5]]
    acc.apply_dump(NS, [sock(5, 160, 0, inode=1005)])
    assert owners.prepared == [[5], [5]]  # resolved: no more lookups


def test_bytes_of_a_socket_whose_owner_may_still_be_found_wait_for_it() -> None:
    acc, owners, clock = accounts({})
    owners.searching = {1005, 1006, 1007}
    acc.apply_dump(NS, [sock(5, 100, 1, inode=1005), sock(6, 10, 0, inode=1006), sock(7, 3, 3, inode=1007)])
    assert acc.totals() == {} and acc.unattributed == [0.0, 0.0]
    owners.table[1005] = "late"
    clock.now += 1
    acc.apply_dump(NS, [sock(5, 150, 1, inode=1005), sock(6, 20, 0, inode=1006), sock(7, 3, 3, inode=1007)])
    assert acc.totals() == {"late": (1, 150)}  # every byte since the socket opened
    owners.searching.discard(1006)  # a full walk did not find it: unattributed from its first byte
    acc.apply_dump(NS, [sock(5, 150, 1, inode=1005), sock(6, 25, 0, inode=1006), sock(7, 3, 3, inode=1007)])
    assert acc.unattributed == [0.0, 25.0]
    acc.apply_destroyed(NS, [sock(7, 4, 9, inode=0)])  # closed while still pending
    assert acc.unattributed == [9.0, 29.0]


def test_pending_socket_gives_up_after_a_while_and_when_gone() -> None:
    acc, owners, clock = accounts({})
    owners.searching = {1005, 1006}
    acc.apply_dump(NS, [sock(5, 100, 0, inode=1005), sock(6, 7, 0, inode=1006)])
    clock.now += 31
    acc.apply_dump(NS, [sock(5, 120, 0, inode=1005)])  # socket 6 vanished with no destroy message
    assert acc.unattributed == [0.0, 120.0]
    clock.now += 1000
    acc.apply_dump(NS, [sock(5, 120, 0, inode=1005)])
    assert acc.unattributed == [0.0, 127.0]  # forgotten: its last counters are not lost


def test_sockets_without_tcp_info_are_not_counted() -> None:
    acc, owners, _ = accounts()
    acc.apply_dump(NS, [sock(1, None, None)])
    assert acc.totals() == {} and acc.sockets_seen == 0 and owners.prepared == []


def test_namespaces_are_separate_and_can_be_forgotten() -> None:
    acc, _, _ = accounts()
    acc.apply_dump(NS, [sock(1, 10, 0)])
    acc.apply_dump(NS + 1, [sock(1, 20, 0)])  # same cookie, other namespace: another socket
    assert acc.totals() == {"web": (0, 30)}
    acc.apply_dump(NS, [])
    assert acc.live_count() == 1
    acc.forget_namespace(NS + 1)
    assert acc.live_count() == 0
    assert acc.totals() == {"web": (0, 30)}  # totals never go down


def test_reconciliation_sum_of_apps_and_unattributed_is_every_byte() -> None:
    acc, _, _ = accounts({1001: "a"})
    acc.apply_dump(NS, [sock(1, 10, 1), sock(2, 20, 2)])
    acc.apply_destroyed(NS, [sock(1, 15, 1, inode=0), sock(9, 30, 3, inode=0)])
    acc.apply_dump(NS, [sock(2, 25, 2)])
    apps_tx = sum(v[1] for v in acc.totals().values())
    assert apps_tx + acc.unattributed[1] == 15 + 25 + 30
    apps_rx = sum(v[0] for v in acc.totals().values())
    assert apps_rx + acc.unattributed[0] == 1 + 2 + 3


SNMP = """Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 12345
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs
Tcp: 1 200 120000 -1 14 2 0 0 0 967 635
Udp: InDatagrams NoPorts
Udp: 5 0
"""


def test_parse_tcp_in_segs() -> None:
    assert parse_tcp_in_segs(SNMP) == 967
    assert parse_tcp_in_segs("Ip: a\nIp: 1\n") is None
    assert parse_tcp_in_segs("Tcp: InSegs\nTcp: x\n") is None


def test_parse_sockstat() -> None:
    text = "sockets: used 15\nTCP: inuse 1 orphan 0 tw 463 alloc 7 mem 307\nUDP: inuse 0 mem 0\n"
    assert parse_sockstat_tcp(text) == (1, 7)
    assert parse_sockstat_tcp("TCP6: inuse 3\n") == (3,)
    assert parse_sockstat_tcp("UDP: inuse 0\n") is None


def test_change_key_moves_with_segments_and_sockets() -> None:
    sockstat = "TCP: inuse 1 orphan 0 tw 4 alloc 7 mem 3\n"
    base = change_key(SNMP, sockstat, "TCP6: inuse 2\n")
    assert base == (967, (1, 7), (2,))
    assert change_key(SNMP.replace(" 967 ", " 968 "), sockstat, "TCP6: inuse 2\n") != base
    assert change_key(SNMP, sockstat.replace("inuse 1", "inuse 2"), "TCP6: inuse 2\n") != base
    assert change_key(SNMP, sockstat.replace("tw 4", "tw 9"), "TCP6: inuse 2\n") == base  # TIME_WAIT: no bytes
    assert change_key("", sockstat, "") is None


def test_parse_cgroup2_mount() -> None:
    hybrid = ("35 24 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
              "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert parse_cgroup2_mount(hybrid) == Path("/sys/fs/cgroup/unified")
    assert parse_cgroup2_mount("35 24 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n") is None
    assert parse_cgroup2_mount("garbage\n\n") is None


def fake_proc(tmp_path: Path, fds: dict[int, list[str]]) -> Path:
    for pid, targets in fds.items():
        folder = tmp_path / str(pid) / "fd"
        folder.mkdir(parents=True, exist_ok=True)
        for existing in folder.iterdir():
            existing.unlink()
        for number, target in enumerate(targets):
            os.symlink(target, folder / str(number))
    return tmp_path


def test_inode_map_finds_owners_lowest_pid_and_remembers_misses(tmp_path: Path) -> None:
    procfs = fake_proc(tmp_path, {10: ["/dev/null", "socket:[500]", "socket:[501]"],
                                  7: ["socket:[501]", "pipe:[9]"], 12: ["socket:[bad]"]})
    (tmp_path / "self").mkdir()
    clock = Clock()
    inodes = SocketInodeMap(procfs, full_walk_interval=10.0, clock=clock)
    inodes.refresh([500, 501, 999])
    assert (inodes.lookup(500), inodes.lookup(501), inodes.lookup(999)) == (10, 7, None)
    walks = inodes.full_walks
    inodes.refresh([999, 500])  # 999 was not found by a full walk: not searched again
    assert inodes.full_walks == walks
    fake_proc(tmp_path, {12: ["socket:[777]"]})  # the fd count may look unchanged: only a full walk finds it
    clock.now += 1
    inodes.refresh([777])
    if inodes.lookup(777) is None:
        assert inodes.full_walks == walks  # full walks are rate-limited
        clock.now += 10
        inodes.refresh([777])
    assert inodes.lookup(777) == 12
    inodes.retain({777})
    assert inodes.lookup(500) is None and inodes.size() == 1


def test_inode_map_without_permission_counts_denials(tmp_path: Path) -> None:
    """An fd folder the exporter may not read is counted as denied (as nobody when run as root)."""
    base = Path(tempfile.mkdtemp(prefix="atlas-inodes-"))
    try:
        base.chmod(0o755)
        procfs = fake_proc(base, {10: ["socket:[1]"]})
        (procfs / "10").chmod(0o755)
        (procfs / "10" / "fd").chmod(0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child drops to nobody if it is root, checks, and reports through the pipe
            try:
                os.close(read)
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                inodes = SocketInodeMap(procfs)
                inodes.refresh([1])
                ok = inodes.lookup(1) is None and inodes.denied >= 1
                os.write(write, b"ok" if ok else f"lookup={inodes.lookup(1)} denied={inodes.denied}".encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            result = pipe.read().decode()
        os.waitpid(pid, 0)
        assert result == "ok"
    finally:
        (base / "10" / "fd").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_cgroup_apps_only_when_one_app_owns_the_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "system.slice" / "nginx.service").mkdir(parents=True)
    (root / "user.slice").mkdir()
    (root / "system.slice" / "nginx.service" / "cgroup.procs").write_text("100\n101\n")
    (root / "user.slice" / "cgroup.procs").write_text("200\n201\n")
    names = {100: "nginx", 101: "nginx", 200: "firefox", 201: "bash"}
    clock = Clock()
    cgroups = CgroupApps(root, names.get, clock)
    nginx_id = os.stat(root / "system.slice" / "nginx.service").st_ino
    user_id = os.stat(root / "user.slice").st_ino
    assert cgroups.app_of(nginx_id) == "nginx"
    assert cgroups.app_of(user_id) is None  # two apps share it
    assert cgroups.app_of(os.stat(root).st_ino) is None  # the root never names an app
    assert cgroups.app_of(123456789) is None
    new = root / "system.slice" / "redis.service"
    new.mkdir()
    (new / "cgroup.procs").write_text("300\n")
    names[300] = "redis"
    assert cgroups.app_of(new.stat().st_ino) is None  # tree walked recently: an unknown id waits
    clock.now += 60
    assert cgroups.app_of(new.stat().st_ino) == "redis"


def test_cgroup_answers_of_removed_cgroups_are_dropped(tmp_path: Path) -> None:
    """Transient cgroups (session scopes, pods) come and go: their cached answers do not pile up."""
    root = tmp_path / "cg"
    root.mkdir()
    names: dict[int, str] = {}
    clock = Clock()
    cgroups = CgroupApps(root, names.get, clock)
    for n in range(40):
        scope = root / f"session-{n}.scope"
        scope.mkdir()
        (scope / "cgroup.procs").write_text(f"{1000 + n}\n")
        names[1000 + n] = f"app{n}"
    for n in range(40):
        assert cgroups.app_of((root / f"session-{n}.scope").stat().st_ino) == f"app{n}"
    assert cgroups.size() == 40
    new = root / "session-99.scope"  # made before the others go, so it cannot take one of their inodes
    new.mkdir()
    (new / "cgroup.procs").write_text("300\n")
    names[300] = "redis"
    for n in range(40):
        scope = root / f"session-{n}.scope"
        (scope / "cgroup.procs").unlink()
        scope.rmdir()
    clock.now += 60
    assert cgroups.app_of(new.stat().st_ino) == "redis"  # an unknown id: the tree is walked again
    assert cgroups.size() == 1


def test_retire_drops_totals_and_a_returning_app_starts_from_zero() -> None:
    acc, _, _ = accounts()
    acc.apply_dump(NS, [sock(1, 100, 10), sock(2, 0, 5)])
    acc.retire(["web", "never-seen"])
    assert acc.totals() == {"db": (5, 0)}
    assert acc.unattributed == [0.0, 0.0]
    acc.apply_dump(NS, [sock(1, 150, 10), sock(2, 0, 5), sock(3, 7, 1)])
    assert acc.totals() == {"web": (1, 57), "db": (5, 0)}  # socket 1's growth and new socket 3


events = st.lists(
    st.tuples(st.sampled_from(["dump", "destroy"]),
              st.lists(st.tuples(st.integers(1, 6), st.integers(0, 1000), st.integers(0, 1000)), max_size=6)),
    max_size=25)


@settings(max_examples=150, deadline=None)
@given(events)
def test_totals_are_monotonic_and_reconcile(sequence) -> None:
    """Whatever the order of dumps and destroy messages, totals never drop, and apps plus unattributed
    hold exactly the highest counter value seen for every socket that was counted."""
    acc, _, _ = accounts({1001: "a", 1002: "b"})
    highest: dict[int, list[int]] = {}
    destroyed: set[int] = set()
    previous = (0.0, 0.0)
    for kind, items in sequence:
        socks = {}
        for cookie, tx, rx in items:
            base = highest.get(cookie, [0, 0])
            socks[cookie] = sock(cookie, base[0] + tx, base[1] + rx)  # counters only grow in the kernel
        if kind == "dump":
            acc.apply_dump(NS, list(socks.values()))
        else:
            acc.apply_destroyed(NS, [info._replace(inode=0) for info in socks.values()])
        for cookie, info in socks.items():
            if cookie in destroyed:
                continue  # a destroyed socket never comes back; later records of it are ignored
            highest[cookie] = [info.bytes_acked, info.bytes_received]
            if kind == "destroy":
                destroyed.add(cookie)
        total_rx = sum(v[0] for v in acc.totals().values()) + acc.unattributed[0]
        total_tx = sum(v[1] for v in acc.totals().values()) + acc.unattributed[1]
        assert total_rx >= previous[0] and total_tx >= previous[1]
        previous = (total_rx, total_tx)
        assert total_tx == sum(h[0] for h in highest.values())
        assert total_rx == sum(h[1] for h in highest.values())


def test_factory_and_statuses_before_start_and_without_root() -> None:
    from atlas_exporter.collectors.network.source_linux import LinuxNetworkSource, make_network_source
    from atlas_exporter.config import Config, NetworkOptions

    config = Config(network=NetworkOptions(sample_interval_seconds=2.5, all_namespaces=True))
    source = make_network_source(config, Path("/proc"), lambda pid: None)
    assert isinstance(source, LinuxNetworkSource) and source.name == "network"
    assert source._interval == 2.5
    assert list(source.collect(None)) == []  # type: ignore[arg-type]  # never started: nothing measured
    user = LinuxNetworkSource(lambda pid: None, all_namespaces=True, euid=1000)
    statuses = {s.name: s for s in user.statuses()}
    assert not statuses["network.sock_diag"].active and "not started" in statuses["network.sock_diag"].reason
    assert "needs root" in statuses["network.sock_diag"].reason
    assert statuses["network.sock_diag"].privilege == "user"
    assert not statuses["network.namespaces"].active and "root" in statuses["network.namespaces"].reason


def test_needing_owner_lists_new_and_unattributed_sockets_only() -> None:
    acc, owners, _ = accounts({1001: "web"})
    first = [sock(1, 5, 5), sock(2, 5, 5), sock(3, None, None)]
    assert [i.cookie for i in acc.needing_owner(NS, first)] == [1, 2]
    acc.apply_dump(NS, first, prepare=False)
    assert owners.prepared == []
    later = [sock(1, 6, 6), sock(2, 6, 6), sock(4, 1, 1), sock(5, 1, 1, inode=0)]
    assert [i.cookie for i in acc.needing_owner(NS, later)] == [2, 4, 5]  # 2 is unattributed, 4 and 5 are new
