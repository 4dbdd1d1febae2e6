"""Connection limits and accounting: how many connections the server holds, and which to close first.

`connection_cap()` is how many connections may be held at once (`MAX_CONNECTIONS`, fewer under a low
RLIMIT_NOFILE); `raise_open_files_limit()` lifts the soft limit at start. A `Connection` is one
accepted socket, plain or TLS, read and written without blocking from the event loop. The
`ConnectionTable` holds them, knows which are idle (waiting for a request), in a TLS handshake or
stalled (an answer waiting for the client to read), closes the oldest of those to make room, and
counts what the server closed:

    evicted   idle, stalled or handshaking connections closed to make room for a new one
    rejected  new connections closed at once: at the cap with nothing to close
    timeouts  connections closed because a deadline passed
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import resource
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8192  # connections held at once (fewer when RLIMIT_NOFILE is low); see connection_cap()
MAX_HANDSHAKES = 512  # TLS handshakes in progress at once (each holds about 50 KiB of TLS state)
FD_RESERVE = 64  # descriptors left below RLIMIT_NOFILE for the collectors


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as Go programs do at start; (old, new) soft limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if sys.platform == "darwin" and (hard == resource.RLIM_INFINITY or hard > 10240):
        target = 10240  # OPEN_MAX: macOS refuses more for setrlimit
    elif hard == resource.RLIM_INFINITY:
        target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.debug("could not raise the open files limit from %d to %d: %s", soft, target, err)
            return soft, soft
        return soft, target
    return soft, soft


def _open_fds() -> int:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


def connection_cap() -> int:
    """How many connections the server holds at once: MAX_CONNECTIONS, fewer under a low RLIMIT_NOFILE.

    The descriptors free at start (the collectors already hold theirs) are shared: half of them, up
    to FD_RESERVE, stay free for reading /proc and crash reports during a scrape."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    free = soft - _open_fds()
    return max(4, min(MAX_CONNECTIONS, free - min(FD_RESERVE, free // 2)))


def client_key(peer: Any) -> str:
    """Who a connection comes from, for fair queueing: the IPv4 address, or the /64 of an IPv6 one."""
    host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Closed(Exception):
    """The connection was closed (by the peer, a deadline, or eviction)."""


class Connection:
    """One accepted socket: non-blocking reads and writes, plain or TLS, driven by the event loop."""

    __slots__ = ("sock", "fd", "peer", "client", "loop", "task", "closed", "buffer", "waiting", "deadline",
                 "stalled")

    def __init__(self, sock: socket.socket, peer: Any, loop: asyncio.AbstractEventLoop,
                 stalled: dict[Connection, None] | None = None) -> None:
        self.sock: socket.socket = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.client = client_key(peer)
        self.loop = loop
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.buffer = bytearray()
        self.waiting: str | None = None  # "r" or "w" while registered with the loop
        self.deadline = 0.0  # loop time by which the current request must have arrived
        self.stalled = stalled  # while a write waits for the client to read, this connection is in it

    def address(self) -> str:
        peer = self.peer
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        return str(peer)

    async def _wait(self, mode: str) -> None:
        if self.closed:
            raise Closed("closed")
        future = self.loop.create_future()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        if mode == "r":
            self.loop.add_reader(self.fd, ready)
        else:
            self.loop.add_writer(self.fd, ready)
        self.waiting = mode
        if mode == "w" and self.stalled is not None:
            self.stalled[self] = None
        try:
            await future
        finally:
            self._unregister()
            if self.stalled is not None:
                self.stalled.pop(self, None)
        if self.closed:
            raise Closed("closed")

    def _unregister(self) -> None:
        if self.waiting is not None and not self.closed:
            if self.waiting == "r":
                self.loop.remove_reader(self.fd)
            else:
                self.loop.remove_writer(self.fd)
        self.waiting = None

    async def handshake(self, context: ssl.SSLContext, started: Callable[[], None]) -> None:
        await self._wait("r")  # TLS state (about 50 KiB) only once the client has sent something
        started()
        tls = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        self.sock = tls  # wrap_socket detached the plain socket; the descriptor is the same
        while True:
            try:
                tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                await self._wait("r")
            except ssl.SSLWantWriteError:
                await self._wait("w")

    async def recv(self, size: int = 65536) -> bytes:
        while True:
            if self.closed:
                raise Closed("closed")
            try:
                return self.sock.recv(size)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                await self._wait("r")
            except ssl.SSLWantWriteError:
                await self._wait("w")

    async def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.closed:
                raise Closed("closed")
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                await self._wait("w")
                continue
            except ssl.SSLWantReadError:
                await self._wait("r")
                continue
            view = view[sent:]

    def close(self) -> None:
        """Close now; a task waiting on this connection raises `Closed`. Idempotent."""
        if self.closed:
            return
        self._unregister()
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass




class ConnectionTable:
    """The connections a server holds, oldest first in each group; used from the event loop only."""

    def __init__(self, cap: int) -> None:
        self.cap = cap  # connections held at once
        self.open: dict[Connection, None] = {}
        self.idle: dict[Connection, None] = {}  # waiting for a request
        self.handshaking: dict[Connection, None] = {}  # in a TLS handshake
        self.stalled: dict[Connection, None] = {}  # answering, blocked until the client reads
        self.evicted = 0
        self.rejected = 0
        self.timeouts = 0

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, peer: Any) -> bool:
        """Whether a new connection may be held: below the cap, or after closing one to make room."""
        if len(self.open) < self.cap or self.evict_oldest_idle():
            return True
        self.rejected += 1
        log.debug("closing connection from %s: %d connections busy", peer, len(self.open))
        return False

    def add(self, conn: Connection) -> None:
        """Hold a new connection; it counts as idle until its first request arrives."""
        self.open[conn] = None
        self.idle[conn] = None

    def set_idle(self, conn: Connection, idle: bool) -> None:
        self.idle.pop(conn, None)
        if idle and not conn.closed:
            self.idle[conn] = None

    def evict_oldest_idle(self) -> bool:
        """Close the connection idle for longest or, when none is idle, the one that has waited
        longest for its client to read an answer; False when every connection is busy otherwise."""
        for waiting, what in ((self.idle, "idle"), (self.stalled, "stalled")):
            for conn in waiting:
                self.evicted += 1
                log.debug("closing %s connection from %s to make room", what, conn.address())
                self.drop(conn)
                return True
        return False

    def handshake_started(self, conn: Connection) -> None:
        """At most MAX_HANDSHAKES TLS handshakes hold TLS state at once; the oldest makes room."""
        while len(self.handshaking) >= MAX_HANDSHAKES:
            oldest = next(iter(self.handshaking))
            self.evicted += 1
            log.debug("closing TLS handshake from %s to make room", oldest.address())
            self.handshaking.pop(oldest, None)
            self.drop(oldest)
        self.handshaking[conn] = None

    def handshake_ended(self, conn: Connection) -> None:
        self.handshaking.pop(conn, None)

    def drop(self, conn: Connection) -> None:
        """Close a connection and forget it; its task is cancelled unless it is the one running."""
        conn.close()
        self.idle.pop(conn, None)
        self.handshaking.pop(conn, None)
        self.stalled.pop(conn, None)
        self.open.pop(conn, None)
        if conn.task is not None and asyncio.current_task() is not conn.task:
            conn.task.cancel()

    def close_all(self) -> list[asyncio.Task[None]]:
        """Close every connection and cancel its task; the tasks, to wait for."""
        for conn in list(self.open):
            conn.close()
            if conn.task is not None:
                conn.task.cancel()
        return [c.task for c in self.open if c.task is not None]
