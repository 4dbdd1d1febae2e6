"""Per-app TCP bytes on Linux: sock_diag samples, destroy notifications, socket owners.

Emits, per app and for what could not be attributed to any app (so the totals reconcile):

    atlas_app_network_receive_bytes_total{app="nginx"} 8.00032e+06
    atlas_app_network_transmit_bytes_total{app="nginx"} 3.000171e+06
    atlas_network_unattributed_receive_bytes_total 1.0
    atlas_network_unattributed_transmit_bytes_total 100002.0
    atlas_network_destroy_events_lost_total 0.0

Transmit is `tcpi_bytes_acked` (payload the peer acknowledged, no retransmissions), receive is
`tcpi_bytes_received`, both from `struct tcp_info`. A background sampler dumps every TCP socket
each `network.sample_interval_seconds` (skipped when the namespace's TCP InSegs counter and TCP
socket counts did not move, so an idle machine costs three small file reads); a second loop
reads the sock_diag destroy groups, whose messages carry each closing socket's final counters.
Sockets are tracked by cookie; each new socket is given an owner through its inode
(`/proc/<pid>/fd`), else its cgroup id (when every process of that cgroup belongs to one app, or
the cgroup is a systemd service, scope or container whose processes are already gone), else, for
orphaned or never-sampled server sockets, the app of the listener on its local port. A socket
owned by a process follows that process's current name (an exec renames it; `apps/resolver.py`
is the one source of names), and an app takes a `max_apps` slot when it is first credited bytes.
UDP (and QUIC) has no per-socket byte counters in the kernel, so it is not counted at all: these
are TCP bytes.

`accounts.SocketAccounts` is the pure bookkeeping (socket records in, monotonic per-app totals
out); `owners_linux` finds a socket's owner (inode map, cgroup map); `namespaces_linux` finds
network namespaces and reads their TCP counters; `LinuxNetworkSource` is the `Source` that ties
them to the netlink sockets of `sockdiag_linux`, with two `BackgroundLoop`s: the sampler and the
destroy listener.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client.metrics_core import Metric

from atlas_exporter.apps.resolver import AppNaming, as_naming
from atlas_exporter.collectors.network.accounts import SocketAccounts
from atlas_exporter.collectors.network.metrics import DESTROY_EVENTS_LOST, byte_families
from atlas_exporter.collectors.network.namespaces_linux import NetNamespace, namespaces_of_processes
from atlas_exporter.collectors.network.owners_linux import (
    CgroupApps,
    SocketInodeMap,
    SystemOwners,
    find_cgroup2_root,
)
from atlas_exporter.collectors.network.sockdiag_linux import DestroySubscription, SockDiagSocket, in_netns
from atlas_exporter.config import Config
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.model import AppOfPid, Snapshot, Source, SourceStatus

log = logging.getLogger(__name__)

NAMESPACE_RESCAN_SECONDS = 15.0
NEW_SOCKET_CHECK_SECONDS = 0.05  # between samples, how often the TCP open counters are read (one pread)
EXTRA_DUMP_SHARE = 0.05  # the extra dumps for new connections use at most this share of the sampler's time


class LinuxNetworkSource:
    """The "network" `Source` on Linux. `start()` opens the netlink sockets and starts its two `loops`."""

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
        self._owners = SystemOwners(self.inodes, cgroups, naming)  # used by the sampler loop only
        self.accounts = SocketAccounts(self._owners, clock, export=naming.export)
        self._lock = threading.Lock()
        self._sample_lock = threading.Lock()
        self.sampler = BackgroundLoop("atlas-network-sampler", self._sampler_step,
                                      interval=min(NEW_SOCKET_CHECK_SECONDS, sample_interval), log=log)
        # not essential: without it the sampler still counts, only the final bytes of closed sockets are missed
        self.listener = BackgroundLoop("atlas-network-destroy", self._listen_once, interval=0.0, log=log,
                                       essential=False)
        self.loops: Sequence[BackgroundLoop] = (self.sampler, self.listener)
        self._namespaces: dict[int, NetNamespace] = {}
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
        self._next_sample = float("-inf")
        self._next_extra = float("-inf")
        self.samples = 0
        self.dumps = 0
        self.read_failures = 0  # dumps and reads of destroy events that failed
        self.malformed = 0

    @property
    def errors(self) -> int:
        """Failed reads, plus steps of the sampler or the listener that raised."""
        return self.read_failures + sum(loop.errors for loop in self.loops)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._namespaces:  # started already
                return
        try:
            self._home_ns = os.stat(self._procfs / "self" / "ns" / "net").st_ino
        except OSError:
            self._home_ns = 0
        try:
            home = NetNamespace(self._home_ns, str(self._procfs / "self" / "net"), SockDiagSocket, None)
        except OSError as err:
            self._diag_error = f"cannot open NETLINK_SOCK_DIAG: {err.strerror or err}"
            log.warning("network: %s", self._diag_error)
            return
        home.destroy = self._open_destroy(DestroySubscription)
        with self._lock:
            self._namespaces[self._home_ns] = home
            self._opened = True
        self.sample()
        self._next_sample = time.monotonic() + self._interval
        for loop in self.loops:
            loop.start()

    def stop(self) -> None:
        for loop in self.loops:  # both at once, then wait for each
            loop.stopping.set()
        for loop in self.loops:
            loop.stop()
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

    def _sampler_step(self) -> None:
        """One tick of the sampler loop: a sample once the interval has passed, else a check for new connections."""
        now = time.monotonic()
        if now >= self._next_sample:
            self._next_sample = now + self._interval
            self.sample()
        elif now >= self._next_extra:
            self.sample(new_connections_only=True)

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
                    self.read_failures += 1
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
        found = namespaces_of_processes(self._procfs)
        with self._lock:
            known = set(self._namespaces)
        for ino, pid in found.items():
            if ino in known:
                continue
            ns_path = f"{self._procfs}/{pid}/ns/net"
            try:
                space = NetNamespace(ino, f"{self._procfs}/{pid}/net",
                                     functools.partial(in_netns, ns_path, SockDiagSocket), None)
            except OSError as err:
                self._netns_error = f"cannot enter network namespace of pid {pid}: {err.strerror or err}"
                continue
            space.destroy = self._open_destroy(functools.partial(in_netns, ns_path, DestroySubscription))
            with self._lock:
                self._namespaces[ino] = space
        for ino in known - found.keys() - {self._home_ns}:
            with self._lock:
                gone = self._namespaces.pop(ino, None)
                if gone is None:
                    continue
                try:
                    if gone.destroy is not None:  # the last destroy messages of the vanished namespace
                        sockets, overflows = gone.destroy.read()
                        self.lost_events += overflows
                        self.accounts.apply_destroyed(ino, sockets)
                except OSError as err:
                    self.read_failures += 1
                    log.warning("network: reading the last destroy events of namespace %d failed: %s",
                                ino, err.strerror or err)
                finally:
                    gone.close()
                    self.accounts.forget_namespace(ino)
                    self._publish()

    def _listen_once(self) -> None:
        """One step of the listener loop: wait up to 0.5 s for destroy messages in any namespace, apply them."""
        with self._lock:
            subs = {s.destroy.fileno(): s for s in self._namespaces.values() if s.destroy is not None}
        if not subs:
            self.listener.wait(0.5)
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

    def _drain(self, space: NetNamespace) -> None:
        if space.destroy is None:
            return
        with self._lock:
            if self._namespaces.get(space.ns) is not space:
                return
            try:
                sockets, overflows = space.destroy.read()
            except OSError as err:
                self.read_failures += 1
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
        yield from byte_families(self.app_totals(), self.unattributed())
        if self.destroy_active():
            yield DESTROY_EVENTS_LOST.value(self.lost_events)

    def destroy_active(self) -> bool:
        """True while some namespace has a destroy subscription and the listener loop reads them."""
        if self.listener.dead:
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
        destroy_reason = self._destroy_error or ("" if destroy else "not started")
        if self.listener.dead:
            destroy_reason = self.listener.dead_reason()
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
