"""Per-socket byte bookkeeping of the Linux network source: socket records in, per-app totals out.

`SocketAccounts` turns successive sock_diag dumps and destroy messages (`TcpSocketInfo`
records) into monotonic per-app (receive, transmit) byte totals plus an unattributed pair,
for example

    accounts.totals() == {"nginx": (8000320.0, 3000171.0)}
    accounts.unattributed == [1.0, 100002.0]

Pure: no I/O, the clock is injected, and the owner of a new socket comes from an
`OwnerResolver` (`owners_linux.SystemOwners` on a live system, a table in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from atlas_exporter.collectors.network.sockdiag_linux import TCP_LISTEN, TcpSocketInfo

FORGET_AFTER_SECONDS = 120.0  # how long a closed socket's cookie is remembered (late or duplicate messages)
PENDING_MAX_SECONDS = 30.0  # how long a socket's bytes wait for its owner to be found before going unattributed


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


@runtime_checkable
class OwnerProcesses(Protocol):
    """An `OwnerResolver` that also names the owning process, so that a socket follows its renames."""

    def owner_id(self, ns: int, info: TcpSocketInfo) -> object | None:
        """The owning process found by the last `owner` call, or None."""
        ...

    def name_of(self, owner: object) -> str | None:
        """That process's current name; None once it is gone."""
        ...


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
        processes = resolver if isinstance(resolver, OwnerProcesses) else None
        self._owner_id = processes.owner_id if processes is not None else None
        self._name_of = processes.name_of if processes is not None else None
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
        target: list[float] | None
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
        retired = set(apps)
        for app in retired:
            self.apps.pop(app, None)
        self._labels = {name: label for name, label in self._labels.items() if label not in retired}
