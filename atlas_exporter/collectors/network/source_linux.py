"""Per-app TCP bytes on Linux: sock_diag samples, destroy notifications, socket owners.

Emits, per app and for what could not be attributed to any app (so the totals reconcile):

    atlas_app_network_receive_bytes_total{app="nginx"} 8.00032e+06
    atlas_app_network_transmit_bytes_total{app="nginx"} 3.000171e+06
    atlas_network_unattributed_receive_bytes_total 1.0
    atlas_network_unattributed_transmit_bytes_total 100002.0

Transmit is `tcpi_bytes_acked` (payload the peer acknowledged, no retransmissions), receive is
`tcpi_bytes_received`, both from `struct tcp_info`. A background sampler dumps every TCP socket
each `network.sample_interval_seconds` (skipped when the namespace's TCP InSegs counter and TCP
socket counts did not move, so an idle machine costs three small file reads); a second thread
reads the sock_diag destroy groups, whose messages carry each closing socket's final counters.
Sockets are tracked by cookie; each new socket is given an owner through its inode
(`/proc/<pid>/fd`), else its cgroup id (when every process of that cgroup belongs to one app, or
the cgroup is a systemd service, scope or container whose processes are already gone), else, for
orphaned or never-sampled server sockets, the app of the listener on its local port. A socket
owned by a process follows that process's current name (an exec renames it; `apps/resolver.py`
is the one source of names), and an app takes a `max_apps` slot when it is first credited bytes.
UDP (and QUIC) has no per-socket byte counters in the kernel, so it is not counted at all: these
are TCP bytes.

`SocketAccounts` is the pure bookkeeping (socket records in, monotonic per-app totals out);
`SocketInodeMap` and `CgroupApps` read `/proc` and the cgroup2 tree; `LinuxNetworkSource` is the
`Source` that ties them to the netlink sockets of `sockdiag_linux`.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from atlas_exporter.apps.naming import unit_of_cgroup
from atlas_exporter.apps.resolver import AppNaming, as_naming
from atlas_exporter.collectors.network.metrics import byte_families
from atlas_exporter.collectors.network.sockdiag_linux import (
    TCP_LISTEN,
    DestroySubscription,
    SockDiagSocket,
    TcpSocketInfo,
    in_netns,
)
from atlas_exporter.config import Config
from atlas_exporter.model import AppOfPid, Snapshot, Source, SourceStatus

log = logging.getLogger(__name__)

FORGET_AFTER_SECONDS = 120.0  # how long a closed socket's cookie is remembered (late or duplicate messages)
PENDING_MAX_SECONDS = 30.0  # how long a socket's bytes wait for its owner to be found before going unattributed
NAMESPACE_RESCAN_SECONDS = 15.0
YOUNG_PROCESS_SECONDS = 2.0
CGROUP_CACHE_SECONDS = 30.0
CGROUP_WALK_SECONDS = 1.0  # an unknown cgroup id walks the cgroup tree at most this often
NEW_SOCKET_CHECK_SECONDS = 0.05  # between samples, how often the TCP open counters are read (one pread)
EXTRA_DUMP_SHARE = 0.05  # the extra dumps for new connections use at most this share of the sampler's time


class _Sock:
    """Mutable per-socket state, keyed by (netns, cookie).

    `seen_*` are the highest counters observed, `acked` / `received` what has been credited so far.
    A pending socket (owner not known yet, but a later lookup may find it) is observed, not credited.
    """

    __slots__ = ("app", "owner", "pending", "acked", "received", "seen_acked", "seen_received", "inode", "born",
                 "since")

    def __init__(self, app: str | None, inode: int, now: float) -> None:
        self.app = app
        self.owner: object | None = None  # the owning process, when known: its name is followed
        self.pending = False
        self.acked = self.received = self.seen_acked = self.seen_received = 0
        self.inode = inode
        self.born = now  # first seen
        self.since = now  # when it vanished from the dump or was destroyed


class OwnerResolver(Protocol):
    """Names the app of a socket seen for the first time (or not yet attributed)."""

    def prepare(self, ns: int, sockets: list[TcpSocketInfo]) -> None:
        """Called once per dump with the sockets that need an owner (batch the expensive lookups)."""
        ...

    def owner(self, ns: int, info: TcpSocketInfo) -> str | None: ...

    def settled(self, ns: int, info: TcpSocketInfo) -> bool:
        """True when no later lookup can name the owner of a socket `owner` found none for."""
        ...

    # Optional: `owner_id(ns, info) -> object | None` (the owning process found by the last `owner`
    # call) and `name_of(owner) -> str | None` (that process's current name, None once it is gone).


class SocketAccounts:
    """Turns successive socket dumps and destroy messages into monotonic per-app byte totals.

    Pure: no I/O, the clock is injected. A socket's bytes are credited from 0 the first time it is
    seen, so connections opened after the exporter started are counted in full. While its owner
    may still be found (the resolver is not `settled`), a new socket's bytes wait, for at most
    `PENDING_MAX_SECONDS`; then, or when it closes, or when no owner can be found, they go to the
    unattributed totals. Not thread-safe; the caller locks.
    """

    def __init__(self, resolver: OwnerResolver, clock: Callable[[], float] = time.monotonic,
                 export: Callable[[str], str] = str) -> None:
        self._resolver = resolver
        self._clock = clock
        self._export = export  # the label an app's totals get when first credited (the max_apps fold)
        self._labels: dict[str, str] = {}
        self._owner_id = getattr(resolver, "owner_id", None)
        self._name_of = getattr(resolver, "name_of", None)
        self._live: dict[int, dict[int, _Sock]] = {}
        self._gone: dict[int, dict[int, _Sock]] = {}  # vanished from the dump without a destroy message
        self._destroyed: dict[int, dict[int, float]] = {}  # cookie -> when its destroy message came
        self._listeners: dict[tuple[int, int], str | None] = {}  # (ns, port) -> app, None when ambiguous
        self.apps: dict[str, list[float]] = {}  # app -> [receive, transmit]
        self.unattributed = [0.0, 0.0]
        self.sockets_seen = 0
        self.destroyed_unknown = 0
        self._pruned = float("-inf")

    def _credit(self, st: _Sock, acked: int | None, received: int | None) -> None:
        if acked is not None and acked > st.seen_acked:
            st.seen_acked = acked
        if received is not None and received > st.seen_received:
            st.seen_received = received
        if not st.pending:
            self._flush(st)

    def _follow(self, st: _Sock) -> None:
        """Rename a socket after its owner's current name (an exec since it was bound)."""
        if st.owner is not None and self._name_of is not None:
            name = self._name_of(st.owner)
            if name is not None:
                st.app = name
            else:
                st.owner = None  # the owner is gone: its last name stays

    def _flush(self, st: _Sock) -> None:
        d_tx = st.seen_acked - st.acked
        d_rx = st.seen_received - st.received
        if not (d_tx or d_rx):
            return
        st.acked, st.received = st.seen_acked, st.seen_received
        if st.app is None:
            target = self.unattributed
        else:
            label = self._labels.get(st.app)
            if label is None:
                label = self._labels[st.app] = self._export(st.app)
            target = self.apps.get(label)
            if target is None:
                target = self.apps[label] = [0.0, 0.0]
        target[0] += d_rx
        target[1] += d_tx

    def _fallback(self, ns: int, info: TcpSocketInfo) -> str | None:
        if info.inode == 0 and info.state != TCP_LISTEN:
            return self._listeners.get((ns, info.sport))
        return None

    def needing_owner(self, ns: int, sockets: list[TcpSocketInfo]) -> list[TcpSocketInfo]:
        """The sockets of a dump whose owner is still to be looked up (new, or not attributed yet)."""
        live = self._live.get(ns, {})
        destroyed = self._destroyed.get(ns, {})
        return [i for i in sockets
                if (i.bytes_acked is not None or i.bytes_received is not None) and i.cookie not in destroyed
                and ((st := live.get(i.cookie)) is None or (st.app is None and i.inode))]

    def apply_dump(self, ns: int, sockets: list[TcpSocketInfo], *, prepare: bool = True) -> None:
        """One complete dump of namespace `ns`.

        With `prepare=False` the caller has already run the resolver's `prepare` on
        `needing_owner(...)` (outside its lock: that is where the fd walks happen).
        """
        now = self._clock()
        live = self._live.setdefault(ns, {})
        gone = self._gone.setdefault(ns, {})
        destroyed = self._destroyed.setdefault(ns, {})
        seen: set[int] = set()
        # fast path: known sockets whose owner is settled only have their counters compared
        slow: list[TcpSocketInfo] = []
        for info in sockets:
            st = live.get(info.cookie)
            if st is None or info.state == TCP_LISTEN or (st.app is None and (info.inode or st.pending)):
                if info.bytes_acked is not None or info.bytes_received is not None:
                    slow.append(info)
                continue
            seen.add(info.cookie)
            acked, received = info.bytes_acked, info.bytes_received
            if (acked is not None and acked > st.seen_acked) or (received is not None and received > st.seen_received):
                if st.owner is not None:
                    self._follow(st)
                self._credit(st, acked, received)
        if prepare:
            need = [i for i in slow if i.cookie not in destroyed
                    and ((st := live.get(i.cookie)) is None or (st.app is None and i.inode))]
            if need:
                self._resolver.prepare(ns, need)
        # listeners first, so that an orphaned socket of this same dump can be matched to its port
        listeners: dict[tuple[int, int], str | None] = {}
        for info in slow:
            if info.state == TCP_LISTEN:
                st = self._track(ns, info, live, gone, destroyed, seen, now)
                if st is not None and st.app is not None:
                    key = (ns, info.sport)
                    listeners[key] = st.app if listeners.get(key, st.app) == st.app else None
        self._listeners = {k: v for k, v in self._listeners.items() if k[0] != ns}
        self._listeners.update(listeners)
        for info in slow:
            if info.state != TCP_LISTEN:
                self._track(ns, info, live, gone, destroyed, seen, now)
        for cookie in [c for c in live if c not in seen]:
            st = live.pop(cookie)
            st.since = now
            gone[cookie] = st
        self._prune(now)

    def _track(self, ns: int, info: TcpSocketInfo, live: dict[int, _Sock], gone: dict[int, _Sock],
               destroyed: dict[int, float], seen: set[int], now: float) -> _Sock | None:
        if info.bytes_acked is None and info.bytes_received is None:
            return None
        cookie = info.cookie
        if cookie in destroyed:
            return None
        seen.add(cookie)
        st = live.get(cookie)
        if st is None:
            st = gone.pop(cookie, None)
            if st is None:
                st = _Sock(None, info.inode, now)
                self.sockets_seen += 1
                st.app = self._resolver.owner(ns, info)
                if st.app is not None and self._owner_id is not None:
                    st.owner = self._owner_id(ns, info)
                st.app = st.app or self._fallback(ns, info)
                st.pending = st.app is None and not self._resolver.settled(ns, info)
            live[cookie] = st
        elif st.app is None and (info.inode or st.pending):
            st.app = self._resolver.owner(ns, info)
            if st.app is not None and self._owner_id is not None:
                st.owner = self._owner_id(ns, info)
            st.app = st.app or (self._fallback(ns, info) if st.pending else None)
            if st.app is not None or (st.pending and (now - st.born >= PENDING_MAX_SECONDS
                                                      or self._resolver.settled(ns, info))):
                st.pending = False  # credited from its first byte, to the app or unattributed
        self._credit(st, info.bytes_acked, info.bytes_received)
        return st

    def apply_destroyed(self, ns: int, sockets: Iterable[TcpSocketInfo]) -> None:
        """Destroy notifications of namespace `ns`: credit each socket's final counters."""
        now = self._clock()
        live = self._live.setdefault(ns, {})
        gone = self._gone.setdefault(ns, {})
        destroyed = self._destroyed.setdefault(ns, {})
        for info in sockets:
            cookie = info.cookie
            if cookie in destroyed:
                continue
            destroyed[cookie] = now
            st = live.pop(cookie, None) or gone.pop(cookie, None)
            if st is None:
                st = _Sock(self._fallback(ns, info), 0, now)
                self.sockets_seen += 1
                self.destroyed_unknown += 1
            elif st.pending:
                st.pending = False
                st.app = self._fallback(ns, info)
            elif st.owner is not None:
                self._follow(st)  # its last bytes go to its owner's name now
            self._credit(st, info.bytes_acked, info.bytes_received)

    def forget_namespace(self, ns: int) -> None:
        for table in (self._live, self._gone, self._destroyed):
            table.pop(ns, None)
        self._listeners = {k: v for k, v in self._listeners.items() if k[0] != ns}

    def live_inodes(self) -> set[int]:
        return {st.inode for live in self._live.values() for st in live.values() if st.inode}

    def live_count(self) -> int:
        return sum(len(live) for live in self._live.values())

    def _prune(self, now: float) -> None:
        if now - self._pruned < FORGET_AFTER_SECONDS / 10:
            return
        self._pruned = now
        limit = now - FORGET_AFTER_SECONDS
        for gone in self._gone.values():
            for cookie in [c for c, st in gone.items() if st.since < limit]:
                st = gone.pop(cookie)
                if st.pending:  # closed without a destroy message, owner never found
                    st.pending = False
                    self._flush(st)
        for destroyed in self._destroyed.values():
            for cookie in [c for c, t in destroyed.items() if t < limit]:
                del destroyed[cookie]

    def totals(self) -> dict[str, tuple[float, float]]:
        return {app: (v[0], v[1]) for app, v in self.apps.items()}

    def retire(self, apps: Iterable[str]) -> None:
        """Drop the totals of apps that are no longer exported.

        Sockets still bound to such an app keep their binding; bytes they move later start a new
        total from 0 (a counter reset for Prometheus).
        """
        for app in apps:
            self.apps.pop(app, None)
        retired = set(apps)
        self._labels = {name: label for name, label in self._labels.items() if label not in retired}


class SocketInodeMap:
    """Socket inode -> pid, from the `socket:[inode]` links in `/proc/<pid>/fd`, cached.

    `refresh(wanted)` first reads only the fd folders of processes that are new or whose fd count
    (`st_size` of the folder, Linux 6.2+) changed, and walks every process only when an inode is
    still missing, at most once per `full_walk_interval` seconds. Inodes a full walk could not find
    (processes of other users without root, processes that already exited, sockets held only by the
    kernel) are remembered and not searched for again. A socket open in several processes belongs
    to the lowest pid.
    """

    def __init__(self, procfs: Path = Path("/proc"), *, full_walk_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._procfs = str(procfs)
        self._full_walk_interval = full_walk_interval
        self._clock = clock
        self._last_full_walk = float("-inf")
        self._pid_of: dict[int, int] = {}
        self._fd_counts: dict[int, int] = {}
        self._first_seen: dict[int, float] = {}
        self._unresolvable: set[int] = set()
        self._listed: set[int] = set()  # the pids of the last listing
        self.partial_walks = 0
        self.full_walks = 0
        self.denied = 0

    def lookup(self, inode: int) -> int | None:
        return self._pid_of.get(inode)

    def refresh(self, wanted: Iterable[int], *, new_processes_only: bool = False) -> None:
        """Find the pids of the `wanted` inodes (see the class docstring).

        `new_processes_only` reads only the fd folders of processes that appeared since the last
        refresh or are still young: what the quick dumps for new connections can afford.
        """
        missing = {i for i in wanted if i and i not in self._pid_of and i not in self._unresolvable}
        if not missing:
            return
        pids = self._pids()
        if new_processes_only:
            now = self._clock()
            listed, first = self._listed, not self._listed
            for pid in pids:
                if pid not in listed:
                    self._first_seen.setdefault(pid, float("-inf") if first else now)
                if now - self._first_seen.get(pid, float("-inf")) < YOUNG_PROCESS_SECONDS:
                    self._read_fds(pid, missing)
            self._listed = set(pids)
            return
        now = self._clock()
        counts: dict[int, int] = {}
        first_seen: dict[int, float] = {}
        changed: list[int] = []
        for pid in pids:
            try:
                size = os.stat(f"{self._procfs}/{pid}/fd").st_size
            except OSError:
                continue
            counts[pid] = size
            born = first_seen[pid] = self._first_seen.get(pid, now)
            # young processes are read every time: while starting they reuse fd numbers, so their
            # fd count can stay the same across the creation of a socket
            if size == 0 or self._fd_counts.get(pid) != size or now - born < YOUNG_PROCESS_SECONDS:
                changed.append(pid)
        self._fd_counts = counts
        self._first_seen = first_seen
        self._listed = set(pids)
        self.partial_walks += 1
        for pid in changed:
            self._read_fds(pid, missing)
        if missing - self._pid_of.keys() and self._clock() - self._last_full_walk >= self._full_walk_interval:
            self._last_full_walk = self._clock()
            self.full_walks += 1
            changed_set = set(changed)
            for pid in pids:
                if pid not in changed_set:
                    self._read_fds(pid, missing)
            self._unresolvable |= missing - self._pid_of.keys()

    def is_unresolvable(self, inode: int) -> bool:
        return inode in self._unresolvable

    def retain(self, live: set[int]) -> None:
        """Forget inodes that are no longer live sockets."""
        self._pid_of = {i: p for i, p in self._pid_of.items() if i in live}
        self._unresolvable &= live

    def size(self) -> int:
        return len(self._pid_of) + len(self._unresolvable)

    def _pids(self) -> list[int]:
        try:
            return [int(name) for name in os.listdir(self._procfs) if name.isdigit()]
        except OSError:
            return []

    def _read_fds(self, pid: int, missing: set[int]) -> None:
        base = f"{self._procfs}/{pid}/fd"
        try:
            names = os.listdir(base)
        except PermissionError:
            self.denied += 1
            return
        except OSError:
            return
        pid_of = self._pid_of
        for name in names:
            try:
                target = os.readlink(f"{base}/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                try:
                    inode = int(target[8:-1])
                except ValueError:
                    continue
                old = pid_of.get(inode)
                if old is None or pid < old:
                    pid_of[inode] = pid


def find_cgroup2_root(procfs: Path = Path("/proc")) -> Path | None:
    """The cgroup v2 mount point, from `<procfs>/self/mountinfo`; None when there is none."""
    try:
        text = (procfs / "self" / "mountinfo").read_text()
    except OSError:
        return None
    return parse_cgroup2_mount(text)


def parse_cgroup2_mount(mountinfo: str) -> Path | None:
    """The first mount point whose filesystem type is cgroup2 in a mountinfo text."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and right.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(fields[4].replace("\\040", " "))
    return None


class CgroupApps:
    """cgroup v2 id -> app, when every process of that cgroup belongs to the same app.

    The id a socket carries is the inode of its cgroup folder. Ids are resolved by walking the
    cgroup2 tree (at most once per `CGROUP_CACHE_SECONDS` for an unknown id); answers are cached as
    long, and each walk drops the answers of cgroups that no longer exist or that expired, so
    transient cgroups (session scopes, pods) do not pile up. The root cgroup never identifies an app.
    """

    def __init__(self, root: Path | None, naming: AppNaming | AppOfPid,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._root = root
        self._naming = as_naming(naming)
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._walked = float("-inf")
        self._answers: dict[int, tuple[str | None, float]] = {}
        self._root_id = None
        if root is not None:
            try:
                self._root_id = os.stat(root).st_ino
            except OSError:
                self._root = None

    def app_of(self, cgroup_id: int) -> str | None:
        if self._root is None or cgroup_id in (0, 1, self._root_id):
            return None
        now = self._clock()
        cached = self._answers.get(cgroup_id)
        if cached is not None and now - cached[1] < CGROUP_CACHE_SECONDS:
            return cached[0]
        path = self._paths.get(cgroup_id)
        if path is None and now - self._walked >= CGROUP_WALK_SECONDS:
            self._walk(now)
            self._walked = now
            path = self._paths.get(cgroup_id)
        app = self._single_app(path) if path is not None else None
        self._answers[cgroup_id] = (app, now)
        return app

    def _walk(self, now: float) -> None:
        paths: dict[int, str] = {}
        for folder, _dirs, _files in os.walk(str(self._root)):
            try:
                paths[os.stat(folder).st_ino] = folder
            except OSError:
                continue
        self._paths = paths
        self._answers = {cgroup_id: answer for cgroup_id, answer in self._answers.items()
                         if cgroup_id in paths and now - answer[1] < CGROUP_CACHE_SECONDS}

    def size(self) -> int:
        """How many answers are cached."""
        return len(self._answers)

    def _single_app(self, path: str) -> str | None:
        try:
            with open(f"{path}/cgroup.procs") as handle:
                pids = [int(line) for line in handle if line.strip().isdigit()]
        except OSError:
            return None
        apps = {self._naming.app_of_pid(pid) for pid in pids}
        apps.discard(None)
        if len(apps) == 1:
            return apps.pop()
        if not apps and self._root is not None:
            # every process of the cgroup is gone (a short job): a service, scope or container
            # cgroup still says which app it was
            relative = "/" + os.path.relpath(path, self._root)
            name_of_cgroup = getattr(self._naming, "app_of_cgroup", None)
            if name_of_cgroup is not None and unit_of_cgroup(relative):
                return name_of_cgroup(relative)
        return None


class _Owners:
    """The `OwnerResolver` of a live system: inode map first, then cgroup id."""

    def __init__(self, inodes: SocketInodeMap, cgroups: CgroupApps | None, naming: AppNaming) -> None:
        self._inodes = inodes
        self._cgroups = cgroups
        self._naming = naming
        self._token_of = getattr(naming, "token_of", None)
        self._app_of_id = getattr(naming, "app_of_id", None)
        self._last_pid: int | None = None

    def prepare(self, ns: int, sockets: list[TcpSocketInfo], *, quick: bool = False) -> None:
        """Runs outside the accounts' lock: the fd walks, and the lookups `owner` will repeat.

        Naming a pid (the resolver reads its identity once) and answering a cgroup id (a walk
        of the cgroup tree, then `cgroup.procs`) are slow; done here, their answers are cached
        and `owner`, called under the lock, only looks them up.
        """
        self._inodes.refresh((info.inode for info in sockets), new_processes_only=quick)
        for info in sockets:
            pid = self._inodes.lookup(info.inode) if info.inode else None
            if pid is not None:
                try:
                    if self._naming.app_of_pid(pid) is not None:
                        continue
                except Exception:  # a naming failure is the owner lookup's to report, not this warm-up's
                    log.debug("naming pid %d failed", pid, exc_info=True)
            if self._cgroups is not None and info.cgroup_id:
                self._cgroups.app_of(info.cgroup_id)

    def owner(self, ns: int, info: TcpSocketInfo) -> str | None:
        self._last_pid = None
        if info.inode:
            pid = self._inodes.lookup(info.inode)
            if pid is not None:
                app = self._naming.app_of_pid(pid)
                if app is not None:
                    self._last_pid = pid
                    return app
        if self._cgroups is not None and info.cgroup_id:
            return self._cgroups.app_of(info.cgroup_id)
        return None

    def owner_id(self, ns: int, info: TcpSocketInfo) -> object | None:
        """The process `owner` just found for `info` (its identity, to follow its name), or None."""
        pid = self._last_pid
        if pid is None:
            return None
        if self._token_of is not None and self._app_of_id is not None:
            return self._token_of(pid)
        return pid

    def name_of(self, owner: object) -> str | None:
        """The current name of a socket's owning process; None when it is gone."""
        if isinstance(owner, int):
            return self._naming.app_of_pid(owner)
        assert self._app_of_id is not None
        return self._app_of_id(owner)

    def settled(self, ns: int, info: TcpSocketInfo) -> bool:
        return info.inode == 0 or self._inodes.is_unresolvable(info.inode)


class _Namespace:
    """The netlink sockets of one network namespace."""

    def __init__(self, ns: int, net_dir: str, open_diag: Callable[[], SockDiagSocket],
                 destroy: DestroySubscription | None) -> None:
        self.ns = ns
        self.net_dir = net_dir  # /proc/<pid>/net of a process in this namespace
        self.open_diag = open_diag
        self.diag = open_diag()
        self.destroy = destroy
        self.last_key: tuple[object, ...] | None = None
        self.opens: int | None = None  # TCP ActiveOpens + PassiveOpens at the last change_key()
        self.dumped_opens: int | None = None  # ... at the last dump
        self._key_fds: list[int] | None = None

    def change_key(self) -> tuple[object, ...] | None:
        """The namespace's change key, from snmp and sockstat files kept open (pread costs ~8 us each)."""
        try:
            if self._key_fds is None:
                self._key_fds = []
                for name in ("snmp", "sockstat", "sockstat6"):  # sockstat6 is missing without IPv6
                    if name == "sockstat6" and not os.path.exists(f"{self.net_dir}/{name}"):
                        continue
                    self._key_fds.append(os.open(f"{self.net_dir}/{name}", os.O_RDONLY | os.O_CLOEXEC))
            texts = [os.pread(fd, 16384, 0).decode("ascii", "replace") for fd in self._key_fds]
        except OSError:
            self._close_key_fds()
            self.opens = None
            return None
        self.opens = parse_tcp_opens(texts[0])
        return change_key(texts[0], texts[1], texts[2] if len(texts) > 2 else "")

    def opens_now(self) -> int | None:
        """TCP connections ever opened in this namespace, from `snmp` alone (one pread)."""
        if self._key_fds is None:
            self.change_key()
        try:
            return parse_tcp_opens(os.pread(self._key_fds[0], 16384, 0).decode("ascii", "replace")) \
                if self._key_fds else None
        except OSError:
            return None

    def _close_key_fds(self) -> None:
        for fd in self._key_fds or ():
            os.close(fd)
        self._key_fds = None

    def reopen(self) -> None:
        """A fresh dump socket after a failed dump (the old one may hold the rest of that dump)."""
        self.diag.close()
        self.diag = self.open_diag()
        self.last_key = None

    def close(self) -> None:
        self._close_key_fds()
        self.diag.close()
        if self.destroy is not None:
            self.destroy.close()


def _tcp_counter_sum(snmp: str, names: tuple[str, ...]) -> int | None:
    """The sum of the named counters of the `Tcp:` lines of `/proc/net/snmp`; None when any is absent."""
    header: list[str] | None = None
    for line in snmp.splitlines():
        if not line.startswith("Tcp:"):
            continue
        fields = line.split()[1:]
        if header is None:
            header = fields
            continue
        try:
            return sum(int(fields[header.index(name)]) for name in names)
        except (ValueError, IndexError):
            return None
    return None


def parse_tcp_in_segs(snmp: str) -> int | None:
    """`InSegs` of the `Tcp:` lines of `/proc/net/snmp` (IPv4 and IPv6 share it); None when absent."""
    return _tcp_counter_sum(snmp, ("InSegs",))


def parse_tcp_opens(snmp: str) -> int | None:
    """`ActiveOpens` + `PassiveOpens` of `/proc/net/snmp`: TCP connections ever opened in the namespace."""
    return _tcp_counter_sum(snmp, ("ActiveOpens", "PassiveOpens"))


def parse_sockstat_tcp(sockstat: str) -> tuple[int, ...] | None:
    """The numbers of the `TCP:` / `TCP6:` lines of `/proc/net/sockstat{,6}` (sockets in use, allocated)."""
    for line in sockstat.splitlines():
        if line.startswith(("TCP:", "TCP6:")):
            fields = line.split()[1:]
            try:
                return tuple(int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)
                             if fields[i] in ("inuse", "alloc"))
            except ValueError:
                return None
    return None


def change_key(snmp: str, sockstat: str, sockstat6: str) -> tuple[object, ...] | None:
    """What tells whether any TCP socket of a namespace can have changed: InSegs plus socket counts.

    No byte counter moves without an incoming segment (data or ACK), and a new listener changes the
    socket counts. None when the texts lack the fields (then every sample dumps).
    """
    in_segs = parse_tcp_in_segs(snmp)
    v4 = parse_sockstat_tcp(sockstat)
    if in_segs is None or v4 is None:
        return None
    return in_segs, v4, parse_sockstat_tcp(sockstat6)


# The metric table: name, help, how to read the value from the totals.
APP_METRICS: tuple[tuple[str, str, int], ...] = (
    ("atlas_app_network_receive_bytes_total",
     "TCP payload bytes received by the application's sockets (tcpi_bytes_received; UDP is not counted).", 0),
    ("atlas_app_network_transmit_bytes_total",
     "TCP payload bytes sent by the application's sockets and acknowledged by the peer (tcpi_bytes_acked; "
     "UDP is not counted).", 1),
)
UNATTRIBUTED_METRICS: tuple[tuple[str, str, int], ...] = (
    ("atlas_network_unattributed_receive_bytes_total",
     "TCP payload bytes received by sockets that could not be attributed to any application.", 0),
    ("atlas_network_unattributed_transmit_bytes_total",
     "TCP payload bytes sent by sockets that could not be attributed to any application.", 1),
)
LOST_METRIC = ("atlas_network_destroy_events_lost_total",
               "Times the kernel dropped socket destroy notifications because the exporter read them too "
               "slowly; the final bytes of those sockets may be missing.")


class LinuxNetworkSource:
    """The "network" `Source` on Linux. `start()` opens the netlink sockets and starts two threads."""

    name = "network"

    def __init__(self, naming: AppNaming | AppOfPid, *, procfs: Path = Path("/proc"), sample_interval: float = 1.0,
                 all_namespaces: bool = False, cgroup_root: Path | None = None,
                 clock: Callable[[], float] = time.monotonic, euid: int | None = None) -> None:
        self._procfs = procfs
        self._interval = sample_interval
        self._euid = os.geteuid() if euid is None else euid
        self._all_namespaces = all_namespaces and self._euid == 0
        self._wanted_namespaces = all_namespaces
        self.inodes = SocketInodeMap(procfs, clock=clock)
        naming = as_naming(naming)
        cgroups = CgroupApps(cgroup_root, naming, clock) if cgroup_root is not None else None
        self._owners = _Owners(self.inodes, cgroups, naming)  # used by the sampler thread only
        self.accounts = SocketAccounts(self._owners, clock, export=naming.export)
        self._lock = threading.Lock()
        self._sample_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener_thread: threading.Thread | None = None
        self._namespaces: dict[int, _Namespace] = {}
        self._home_ns = 0
        self._diag_error = ""
        self._opened = False  # the home namespace's dump socket opened once: the totals are meaningful
        self._destroy_error = ""
        self._netns_error = ""
        self._namespaces_scanned = float("-inf")
        self._clock = clock
        # what scrapes read, replaced (never changed) under the lock after each change of the
        # accounts: a scrape never waits for the sampler or the listener
        self._published: tuple[dict[str, tuple[float, float]], tuple[float, float]] = ({}, (0.0, 0.0))
        self._retired: list[str] = []  # apps to drop, applied by the sampler under its lock
        self.lost_events = 0
        self.extra_dumps = 0
        self._next_extra = float("-inf")
        self.samples = 0
        self.dumps = 0
        self.errors = 0
        self.malformed = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        try:
            self._home_ns = os.stat(self._procfs / "self" / "ns" / "net").st_ino
        except OSError:
            self._home_ns = 0
        try:
            home = _Namespace(self._home_ns, str(self._procfs / "self" / "net"), SockDiagSocket, None)
        except OSError as err:
            self._diag_error = f"cannot open NETLINK_SOCK_DIAG: {err.strerror or err}"
            log.warning("network: %s", self._diag_error)
            return
        home.destroy = self._open_destroy(DestroySubscription)
        with self._lock:
            self._namespaces[self._home_ns] = home
            self._opened = True
        self.sample()
        sampler = threading.Thread(target=self._sampler, name="atlas-network-sampler", daemon=True)
        listener = threading.Thread(target=self._listener, name="atlas-network-destroy", daemon=True)
        for thread in (sampler, listener):
            thread.start()
            self._threads.append(thread)
        self._listener_thread = listener  # only once started: a thread not yet started is not alive

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self._listener_thread = None
        with self._lock:
            for space in self._namespaces.values():
                space.close()
            self._namespaces.clear()

    def _open_destroy(self, factory: Callable[[], DestroySubscription]) -> DestroySubscription | None:
        try:
            return factory()
        except OSError as err:
            self._destroy_error = f"cannot subscribe to sock_diag destroy events: {err.strerror or err}"
            log.warning("network: %s", self._destroy_error)
            return None

    # --- sampling --------------------------------------------------------------------------------

    def _sampler(self) -> None:
        check = min(NEW_SOCKET_CHECK_SECONDS, self._interval)
        next_sample = time.monotonic() + self._interval
        while not self._stop.wait(check):
            try:
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + self._interval
                    self.sample()
                elif now >= self._next_extra:
                    self.sample(new_connections_only=True)
            except Exception:  # a thread boundary: log with context and keep sampling
                self.errors += 1
                log.exception("network: sampling failed")

    def sample(self, *, new_connections_only: bool = False) -> None:
        """Dump every namespace whose TCP InSegs moved since its last dump and apply the results.

        With `new_connections_only` (the sampler's checks between samples), only namespaces where
        a TCP connection was opened since their last dump are dumped, so that short-lived
        connections are seen alive (inode, cgroup id) before they close. These extra dumps take
        at most `EXTRA_DUMP_SHARE` of the sampler's time: after one that took d seconds, the next
        waits d / EXTRA_DUMP_SHARE.
        """
        with self._sample_lock:
            if not new_connections_only:
                self.samples += 1
            if self._all_namespaces and self._clock() - self._namespaces_scanned >= NAMESPACE_RESCAN_SECONDS:
                self._namespaces_scanned = self._clock()
                self._scan_namespaces()
            with self._lock:
                spaces = list(self._namespaces.values())
            started = time.perf_counter()
            for space in spaces:
                if new_connections_only:
                    opens = space.opens_now()
                    if opens is None or opens == space.dumped_opens:
                        continue
                key = space.change_key()
                if not new_connections_only and key is not None and key == space.last_key:
                    continue
                space.dumped_opens = space.opens
                if new_connections_only:
                    self.extra_dumps += 1
                try:
                    sockets = space.diag.dump_tcp()
                except OSError as err:
                    self.errors += 1
                    message = f"sock_diag dump failed: {err.strerror or err}"
                    if space.ns == self._home_ns:
                        self._diag_error = message
                    else:
                        self._netns_error = f"network namespace {space.ns}: {message}"
                    log.warning("network: %s", message)
                    try:
                        space.reopen()
                    except OSError:
                        pass  # the next sample tries again
                    continue
                if space.ns == self._home_ns:
                    self._diag_error = ""
                self.dumps += 1
                space.last_key = key
                with self._lock:
                    need = self.accounts.needing_owner(space.ns, sockets)
                if need:  # the fd walks and owner lookups run outside the lock (`owner` then hits caches)
                    self._owners.prepare(space.ns, need, quick=new_connections_only)
                with self._lock:
                    self._apply_retired()
                    self.accounts.apply_dump(space.ns, sockets, prepare=False)
                    self._publish()
                    self.malformed = sum(s.diag.malformed + (s.destroy.malformed if s.destroy else 0)
                                         for s in self._namespaces.values())
                    if self.inodes.size() > 2 * self.accounts.live_count() + 1024:
                        self.inodes.retain(self.accounts.live_inodes())
            if new_connections_only:
                self._next_extra = time.monotonic() + (time.perf_counter() - started) / EXTRA_DUMP_SHARE

    def _scan_namespaces(self) -> None:
        """Open sockets in every network namespace some process is in; close vanished ones (root)."""
        found: dict[int, int] = {}
        for name in os.listdir(self._procfs):
            if not name.isdigit():
                continue
            try:
                ino = os.stat(f"{self._procfs}/{name}/ns/net").st_ino
            except OSError:
                continue
            found.setdefault(ino, int(name))
        with self._lock:
            known = set(self._namespaces)
        for ino, pid in found.items():
            if ino in known:
                continue
            ns_path = f"{self._procfs}/{pid}/ns/net"
            try:
                space = _Namespace(ino, f"{self._procfs}/{pid}/net",
                                   lambda path=ns_path: in_netns(path, SockDiagSocket), None)
            except OSError as err:
                self._netns_error = f"cannot enter network namespace of pid {pid}: {err.strerror or err}"
                continue
            space.destroy = self._open_destroy(lambda path=ns_path: in_netns(path, DestroySubscription))
            with self._lock:
                self._namespaces[ino] = space
        for ino in known - found.keys() - {self._home_ns}:
            with self._lock:
                space = self._namespaces.pop(ino, None)
                if space is None:
                    continue
                try:
                    if space.destroy is not None:  # the last destroy messages of the vanished namespace
                        sockets, overflows = space.destroy.read()
                        self.lost_events += overflows
                        self.accounts.apply_destroyed(ino, sockets)
                except OSError as err:
                    self.errors += 1
                    log.warning("network: reading the last destroy events of namespace %d failed: %s",
                                ino, err.strerror or err)
                finally:
                    space.close()
                    self.accounts.forget_namespace(ino)
                    self._publish()

    def _listener(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen_once()
            except Exception:  # a thread boundary: log with context and keep listening
                self.errors += 1
                log.exception("network: handling destroy events failed")
                self._stop.wait(0.1)  # a fault that repeats at once must not spin

    def _listen_once(self) -> None:
        """Wait up to 0.5 s for destroy messages in any namespace and apply those that came."""
        with self._lock:
            subs = {s.destroy.fileno(): s for s in self._namespaces.values() if s.destroy is not None}
        if not subs:
            self._stop.wait(0.5)
            return
        poller = select.poll()
        for fd in subs:
            poller.register(fd, select.POLLIN)
        try:
            ready = poller.poll(500)
        except OSError:
            return
        for fd, _event in ready:
            self._drain(subs[fd])

    def _listener_stopped(self) -> bool:
        """True when the destroy listener was started and has ended without being stopped."""
        thread = self._listener_thread
        return thread is not None and not thread.is_alive() and not self._stop.is_set()

    def _drain(self, space: _Namespace) -> None:
        if space.destroy is None:
            return
        with self._lock:
            if self._namespaces.get(space.ns) is not space:
                return
            try:
                sockets, overflows = space.destroy.read()
            except OSError as err:
                self.errors += 1
                self._destroy_error = f"reading destroy events failed: {err.strerror or err}"
                return
            self.lost_events += overflows
            if sockets:
                self.accounts.apply_destroyed(space.ns, sockets)
                self._publish()

    # --- reporting -------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Replace what scrapes read (called with the lock held)."""
        self._published = (self.accounts.totals(), (self.accounts.unattributed[0], self.accounts.unattributed[1]))

    def _apply_retired(self) -> None:
        """Drop the totals of retired apps (called with the lock held)."""
        if self._retired:
            retired, self._retired = self._retired, []
            self.accounts.retire(retired)

    def app_totals(self) -> dict[str, tuple[float, float]]:
        """app -> (receive_bytes_total, transmit_bytes_total), as of the last sample or destroy event."""
        return self._published[0]

    def unattributed(self) -> tuple[float, float]:
        """(receive_bytes_total, transmit_bytes_total) of sockets no app could be found for."""
        return self._published[1]

    def retire(self, apps: Iterable[str]) -> None:
        """Drop the totals of apps the tracker retired (no processes for `retention_seconds`).

        An app that comes back later starts again from 0, which Prometheus treats as a counter reset.
        Called from a scrape: the accounts drop them at the next sample; scrapes stop seeing them now.
        """
        gone = set(apps)
        if not gone:
            return
        self._retired.extend(gone)
        totals, unattributed = self._published
        self._published = ({app: v for app, v in totals.items() if app not in gone}, unattributed)

    def collect(self, snapshot: Snapshot) -> Iterator[Metric]:
        if not self._opened:  # sock_diag never worked: nothing was measured, so no series
            return
        sampler = self._threads[0] if self._threads else None
        if sampler is not None and not sampler.is_alive() and not self._stop.is_set():
            raise RuntimeError("the network sampler thread has ended: byte totals are no longer updated")
        totals = self.app_totals()
        unattributed = self.unattributed()
        yield from byte_families(APP_METRICS, UNATTRIBUTED_METRICS, totals, unattributed)
        if self.destroy_active():
            yield CounterMetricFamily(LOST_METRIC[0], LOST_METRIC[1], value=self.lost_events)

    def destroy_active(self) -> bool:
        """True while some namespace has a destroy subscription and the listener thread reads it."""
        if self._listener_stopped():
            return False
        return any(s.destroy is not None for s in list(self._namespaces.values()))  # a copy: no lock needed

    def statuses(self) -> list[SourceStatus]:
        privilege = "root" if self._euid == 0 else "user"
        count = len(self._namespaces)  # read without the lock: a scrape never waits for the sampler
        opened = bool(count)
        notes = [self._diag_error or ("" if opened else "not started")]
        if self._euid != 0:
            notes.append("sockets of other users' processes are attributed only through their cgroup or listener "
                         "(reading /proc/<pid>/fd of other users needs root)")
        if self.malformed:
            notes.append(f"{self.malformed} malformed netlink messages skipped")
        diag_reason = "; ".join(n for n in notes if n)
        out = [SourceStatus("network.sock_diag", opened and not self._diag_error, privilege, diag_reason)]
        destroy = self.destroy_active()
        if self._listener_stopped():
            destroy_reason = ("the destroy event listener thread ended; the last bytes of closing sockets "
                              "are missed")
        else:
            destroy_reason = self._destroy_error or ("" if destroy else "not started")
        out.append(SourceStatus("network.destroy_events", destroy, privilege if destroy else "none", destroy_reason))
        if self._wanted_namespaces:
            if self._all_namespaces:
                reason = self._netns_error or f"{count} network namespaces"
                out.append(SourceStatus("network.namespaces", opened, "root", reason))
            else:
                out.append(SourceStatus("network.namespaces", False, "none",
                                        "other network namespaces need root (setns); only the exporter's own "
                                        "namespace is seen"))
        return out


def make_network_source(config: Config, procfs: Path, naming: AppNaming) -> Source | None:
    """The Linux network source for this configuration (not started)."""
    return LinuxNetworkSource(
        naming,
        procfs=procfs,
        sample_interval=config.network.sample_interval_seconds,
        all_namespaces=config.network.all_namespaces,
        cgroup_root=find_cgroup2_root(procfs),
    )
