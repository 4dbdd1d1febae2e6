"""NETLINK_SOCK_DIAG for TCP, stdlib only: dump requests, destroy notifications, pure parsers.

Returns `TcpSocketInfo` records, one per TCP socket of the caller's network namespace:

    TcpSocketInfo(family=2, state=1, sport=8765, dport=43968, uid=0, inode=9879, cookie=4014,
                  bytes_acked=8000320, bytes_received=3000170, cgroup_id=1)

`bytes_acked` / `bytes_received` come from the `struct tcp_info` of `INET_DIAG_INFO` (Linux 4.1+)
and are None when the kernel sent no or a too short tcp_info. The parsers
(`parse_netlink_buffer`, `parse_inet_diag_msg`) take bytes and never touch the OS; the socket
classes (`SockDiagSocket`, `DestroySubscription`) do the I/O. `in_netns` opens either one inside
another network namespace (root: setns on a helper thread; the socket stays bound to that namespace).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
INET_DIAG_INFO = 2
INET_DIAG_CGROUP_ID = 21
# Multicast groups of sock_diag destroy notifications (Linux 4.2+), as bind() bits (1 << (group - 1)).
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
TCP_DESTROY_GROUPS = (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1))
CLONE_NEWNET = 0x40000000

TCP_LISTEN = 10
TCP_TIME_WAIT = 6
# Every TCP state except TIME_WAIT (no tcp_info, inode 0) and NEW_SYN_RECV (request socks).
DUMP_STATES = 0xFFF & ~(1 << TCP_TIME_WAIT)

_NLH = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQ = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, ext, pad, states, sockid
_NLH_HEAD = struct.Struct("=IH")  # nlmsghdr: len, type
# inet_diag_msg: family, state, (timer, retrans), sockid {sport, dport (network byte order), src[16],
# (dst[16], if), cookie[0], cookie[1] (host order, low word first)}, (expires, rqueue, wqueue), uid, inode
_MSG = struct.Struct("=BB2x" "2H" "16s" "20x" "II" "12x" "II")
_SWAP_PORTS = sys.byteorder == "little"  # the ports were read in host order
_RTA = struct.Struct("=HH")  # rtattr: len, type
_U64 = struct.Struct("=Q")
_TCPI_BYTES = struct.Struct("=QQ")  # tcpi_bytes_acked, tcpi_bytes_received
_I32 = struct.Struct("=i")
MSG_SIZE = 72  # sizeof(struct inet_diag_msg)
TCPI_BYTES_ACKED = 120  # offsets in struct tcp_info
TCPI_BYTES_RECEIVED = 128
RECV_BUFFER = 65536


class TcpSocketInfo(NamedTuple):
    """One TCP socket as sock_diag reports it (a NamedTuple: cheap to build thousands per second)."""

    family: int  # socket.AF_INET or AF_INET6
    state: int  # TCP state number (1 = ESTABLISHED, 10 = LISTEN, 7 = CLOSE)
    sport: int
    dport: int
    src: bytes  # local address, 4 or 16 raw bytes
    uid: int
    inode: int  # 0 for orphaned (closed but still sending) sockets and in destroy messages
    cookie: int  # 64-bit id, stable for the socket's life
    bytes_acked: int | None
    bytes_received: int | None
    cgroup_id: int | None  # cgroup v2 id (Linux 5.8+); absent in destroy messages


class NetlinkBatch(NamedTuple):
    """What one netlink read contained."""

    sockets: list[TcpSocketInfo]
    done: bool  # NLMSG_DONE seen (end of a dump)
    error: int  # positive errno from NLMSG_ERROR / NLMSG_DONE, else 0
    malformed: int  # messages skipped because they were truncated or inconsistent


def build_dump_request(family: int, seq: int = 1, states: int = DUMP_STATES) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for TCP sockets of `family`, asking for tcp_info."""
    payload = _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), states)
    return _NLH.pack(_NLH.size + len(payload), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload


def parse_inet_diag_msg(buf: bytes, start: int, end: int) -> TcpSocketInfo | None:
    """Parse one `inet_diag_msg` plus its attributes in buf[start:end]; None when malformed."""
    if end - start < MSG_SIZE or end > len(buf):
        return None
    family, state, sport, dport, src, lo, hi, uid, inode = _MSG.unpack_from(buf, start)
    if _SWAP_PORTS:
        sport = ((sport & 0xFF) << 8) | (sport >> 8)
        dport = ((dport & 0xFF) << 8) | (dport >> 8)
    if family == socket.AF_INET:
        src = src[:4]
    elif family != socket.AF_INET6:
        return None
    acked = received = cgroup_id = None
    pos = start + MSG_SIZE
    while pos + 4 <= end:
        length, kind = _RTA.unpack_from(buf, pos)
        if length < 4 or pos + length > end:
            return None
        if kind == INET_DIAG_INFO:
            body = length - 4
            if body >= TCPI_BYTES_RECEIVED + 8:
                acked, received = _TCPI_BYTES.unpack_from(buf, pos + 4 + TCPI_BYTES_ACKED)
            elif body >= TCPI_BYTES_ACKED + 8:
                acked = _U64.unpack_from(buf, pos + 4 + TCPI_BYTES_ACKED)[0]
        elif kind == INET_DIAG_CGROUP_ID and length >= 12:
            cgroup_id = _U64.unpack_from(buf, pos + 4)[0]
        pos += (length + 3) & ~3
    return TcpSocketInfo(family, state, sport, dport, src, uid, inode, lo | (hi << 32), acked, received, cgroup_id)


def parse_netlink_buffer(buf: bytes) -> NetlinkBatch:
    """Parse every netlink message of one datagram (a dump part or a destroy notification)."""
    sockets: list[TcpSocketInfo] = []
    done = False
    error = malformed = 0
    off = 0
    size = len(buf)
    header = _NLH_HEAD.unpack_from
    parse = parse_inet_diag_msg
    while off + 16 <= size:
        length, kind = header(buf, off)
        if length < 16 or off + length > size:
            malformed += 1
            break
        if kind == SOCK_DIAG_BY_FAMILY:
            info = parse(buf, off + 16, off + length)
            if info is None:
                malformed += 1
            else:
                sockets.append(info)
        elif kind in (NLMSG_DONE, NLMSG_ERROR):
            code = _I32.unpack_from(buf, off + 16)[0] if length >= 20 else 0
            if code < 0:
                error = -code
            if kind == NLMSG_DONE or code < 0:
                done = True
        off += (length + 3) & ~3
    return NetlinkBatch(sockets, done, error, malformed)


class SockDiagError(OSError):
    """The kernel refused or aborted a sock_diag dump."""


class SockDiagSocket:
    """A NETLINK_SOCK_DIAG socket for TCP dumps in the network namespace it was opened in.

    Not thread-safe; one user at a time. `capture`, when a list, receives every raw datagram
    (used to record test fixtures).
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock.bind((0, 0))
        except OSError:
            self._sock.close()
            raise
        self._seq = 0
        self.malformed = 0
        self.capture: list[bytes] | None = None

    def dump_tcp(self, families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)) -> list[TcpSocketInfo]:
        """Every TCP socket (except TIME_WAIT) of each family; raises SockDiagError or OSError."""
        out: list[TcpSocketInfo] = []
        for family in families:
            self._seq += 1
            self._sock.send(build_dump_request(family, self._seq))
            while True:
                data = self._sock.recv(RECV_BUFFER)
                if self.capture is not None:
                    self.capture.append(data)
                batch = parse_netlink_buffer(data)
                out.extend(batch.sockets)
                self.malformed += batch.malformed
                if batch.error:
                    raise SockDiagError(batch.error, f"sock_diag dump: {os.strerror(batch.error)}")
                if batch.done or not data:
                    break
        return out

    def close(self) -> None:
        self._sock.close()


class DestroySubscription:
    """A subscription to the TCP (IPv4 and IPv6) destroy multicast groups of sock_diag.

    Each destroyed TCP socket arrives as one message with its final tcp_info and cookie; inode,
    uid and cgroup id are 0 or absent. `read()` never blocks; wait on `fileno()` with select.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._sock.bind((0, TCP_DESTROY_GROUPS))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.malformed = 0
        self.capture: list[bytes] | None = None

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> tuple[list[TcpSocketInfo], int]:
        """Drain pending notifications: (sockets, overflows). An overflow means messages were lost."""
        out: list[TcpSocketInfo] = []
        overflows = 0
        while True:
            try:
                data = self._sock.recv(RECV_BUFFER)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    overflows += 1
                    continue
                raise
            if not data:
                break
            if self.capture is not None:
                self.capture.append(data)
            batch = parse_netlink_buffer(data)
            out.extend(batch.sockets)
            self.malformed += batch.malformed
        return out, overflows

    def close(self) -> None:
        self._sock.close()


_T = TypeVar("_T")
_libc: Any = None


def _setns(fd: int, nstype: int) -> None:
    global _libc
    import ctypes  # only for other namespaces: ctypes costs megabytes of resident memory

    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def in_netns(ns_path: str, factory: Callable[[], _T]) -> _T:
    """Call `factory` (which opens sockets) inside the network namespace at `ns_path`.

    Runs on a short-lived helper thread that enters the namespace with setns (CAP_SYS_ADMIN), so
    the caller's threads never change namespace. Raises OSError when the namespace cannot be entered.
    """
    result: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            result.append(factory())
        except BaseException as err:  # handed back to the caller below
            failure.append(err)

    helper = threading.Thread(target=run, name="atlas-netns", daemon=True)
    helper.start()
    helper.join()
    if failure:
        raise failure[0]
    return result[0]
