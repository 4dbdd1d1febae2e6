"""Network namespaces on Linux: which ones processes are in, their netlink sockets and TCP counters.

`namespaces_of_processes` returns namespace inode -> a pid in it, from `/proc/<pid>/ns/net`;
`NetNamespace` holds one namespace's sock_diag sockets and its `snmp` / `sockstat` files, kept
open. The pure parsers read those files' text (`/proc/net/snmp`, `/proc/net/sockstat{,6}`):

    parse_tcp_opens(snmp) == 151                       # Tcp: ActiveOpens 120 + PassiveOpens 31
    change_key(snmp, sockstat, sockstat6) == (9876, (5, 8), (2,))  # InSegs; TCP inuse, alloc; TCP6 inuse
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from atlas_exporter.collectors.network.sockdiag_linux import DestroySubscription, SockDiagSocket


def namespaces_of_processes(procfs: Path) -> dict[int, int]:
    """Network namespace inode -> the first listed pid in it, for every process `procfs` shows."""
    found: dict[int, int] = {}
    for name in os.listdir(procfs):
        if not name.isdigit():
            continue
        try:
            ino = os.stat(f"{procfs}/{name}/ns/net").st_ino
        except OSError:
            continue
        found.setdefault(ino, int(name))
    return found


class NetNamespace:
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

