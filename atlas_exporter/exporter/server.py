"""The HTTP(S) server: `/metrics` (the telemetry path) and the status page at `/`.

`start_server(listen_address, telemetry_path, render_metrics, render_status, web_config)` binds and
returns a `RunningServer`; nothing is served until `serve_forever()`. Answers:

    GET /metrics   200, the exposition from render_metrics() (gzip when the client accepts it)
    GET /          200, the HTML page from render_status()
    GET /other     404            POST /metrics   405 (Allow: GET, HEAD)
    no or wrong basic auth credentials   401 (WWW-Authenticate: Basic realm="atlas-exporter")
    too many password checks waiting     429 (Retry-After: 1)
    render_metrics() raises              500, one-line body, one log line; the server keeps serving

Bind problems raise `ServerError("listen tcp 127.0.0.1:9858: address already in use")`.

One asyncio event loop (in the thread that calls `serve_forever()`) holds every connection, so
thousands of idle, slow or half-open connections cost memory, not threads. TLS handshakes and reads
are driven on non-blocking sockets by the loop. Deadlines cover a whole phase, never a single read: the
TLS handshake, the first request on a new connection, each request head once its first byte arrived,
the idle wait of a kept-alive connection, and sending each response. At most `connection_cap()`
connections are held; at the cap the connection idle for longest is closed to make room; likewise
for TLS handshakes in progress beyond `MAX_HANDSHAKES` (a silent connection holds no TLS state). When accept
fails for lack of file descriptors, the oldest idle connection is closed or accepting pauses (backing
off to 1 s), and the failure is counted and logged. Rendering, gzip and bcrypt run in worker threads,
never on the loop; requests that arrive while the same page is being rendered share that render.
A request body is read and discarded (or the connection is closed after the answer),
so every request gets exactly one answer. Requests are logged through `logging` at debug level.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gzip
import ipaddress
import logging
import os
import queue
import re
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from atlas_exporter.exporter.webconfig import BasicAuth, WebConfig, build_ssl_context, peer_san_allowed

log = logging.getLogger(__name__)

REALM = "atlas-exporter"
MAX_REQUEST_LINE = 8192  # bytes, as in most HTTP servers
MAX_HEADER_BYTES = 16384  # all header lines of one request together
MAX_DISCARDED_BODY = 65536  # a request body up to this size is read and dropped; a larger one closes
MAX_CONNECTIONS = 8192  # connections held at once (fewer when RLIMIT_NOFILE is low); see connection_cap()
MAX_HANDSHAKES = 512  # TLS handshakes in progress at once (each holds about 50 KiB of TLS state)
FD_RESERVE = 64  # descriptors left below RLIMIT_NOFILE for the collectors
HEAD_TIMEOUT = 10.0  # seconds for a TLS handshake, for the first request, and for a request head
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
WRITE_TIMEOUT = 30.0  # seconds to send one response
RENDER_TIMEOUT = 60.0  # seconds a request waits for its page to be rendered, then 503
LINGER_SECONDS = 1.0  # after a final answer, unread input is drained this long before closing
BACKLOG = 1024
RENDER_THREADS = 4
ACCEPT_BACKOFF = (0.05, 1.0)  # seconds: first and longest pause of accept() after EMFILE/ENFILE
GZIP_LEVEL = 6
_ACCEPT_BATCH = 64
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_DECIMAL = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 414: "URI Too Long", 429: "Too Many Requests", 503: "Service Unavailable", 431:
            "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
            505: "HTTP Version Not Supported"}

RenderMetrics = Callable[[], tuple[bytes, str]]
RenderStatus = Callable[[], str]


class ServerError(Exception):
    """The server cannot start; the message is one line, like `listen tcp HOST:PORT: reason`."""


def parse_listen_address(listen_address: str) -> tuple[str, int]:
    """Split `HOST:PORT`, `[V6]:PORT` or `:PORT` into (host, port); host "" means all interfaces."""
    text = listen_address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ServerError(f"listen tcp: address {listen_address}: missing port in address")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ServerError(f"listen tcp: address {listen_address}: missing port in address")
        if ":" in host:
            raise ServerError(f"listen tcp: address {listen_address}: too many colons in address "
                              "(write IPv6 addresses in brackets, like [::1]:9858)")
    if not _DECIMAL.fullmatch(port_text) or not 0 <= int(port_text) <= 65535:
        raise ServerError(f"listen tcp: address {listen_address}: invalid port {port_text!r}")
    return host, int(port_text)


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM):
            return True
    except OSError:
        return False


def _resolve(listen_address: str) -> tuple[socket.AddressFamily, tuple[Any, ...], bool]:
    """(family, sockaddr, dual_stack) for a listen address."""
    host, port = parse_listen_address(listen_address)
    if host in ("", "::"):
        if _ipv6_available():
            return socket.AF_INET6, ("::", port, 0, 0), True
        if host == "::":
            raise ServerError(f"listen tcp {listen_address}: IPv6 is not available on this host")
        return socket.AF_INET, ("0.0.0.0", port), False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        reason = err.strerror if isinstance(err, socket.gaierror) else str(err)
        raise ServerError(f"listen tcp: lookup {host}: {(reason or 'no such host').lower()}") from None
    infos = [info for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not infos:
        raise ServerError(f"listen tcp: lookup {host}: no address")
    # Like Go's net.Listen, a name with several addresses listens on one, preferring IPv4.
    family, _, _, _, sockaddr = min(infos, key=lambda info: info[0] != socket.AF_INET)
    return family, sockaddr, False


def _bind_reason(err: OSError) -> str:
    reasons = {
        errno.EADDRINUSE: "address already in use",
        errno.EADDRNOTAVAIL: "cannot assign requested address",
        errno.EACCES: "permission denied",
    }
    return reasons.get(err.errno or 0, (err.strerror or str(err)).lower())


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


class WorkerPool(concurrent.futures.Executor):
    """A fixed set of daemon threads: unlike ThreadPoolExecutor, a stuck job never holds up exit."""

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]] = \
            queue.SimpleQueue()
        self._workers = workers
        self._name = name
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        call = (lambda: fn(*args, **kwargs)) if kwargs else fn
        self._jobs.put((future, call, () if kwargs else args))
        if len(self._threads) < self._workers:
            with self._lock:
                if len(self._threads) < self._workers:
                    thread = threading.Thread(target=self._run, name=f"{self._name}-{len(self._threads)}",
                                              daemon=True)
                    self._threads.append(thread)
                    thread.start()
        return future

    def _run(self) -> None:
        while True:
            future, call, args = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call(*args)
            except BaseException as err:  # handed to the waiter, never lost in the thread
                future.set_exception(err)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = False) -> None:
        """Workers are daemon threads: nothing to join."""


class _Closed(Exception):
    """The connection was closed (by the peer, a deadline, or eviction)."""


class _Connection:
    """One accepted socket: non-blocking reads and writes, plain or TLS, driven by the event loop."""

    __slots__ = ("sock", "fd", "peer", "client", "loop", "task", "closed", "buffer", "waiting", "deadline",
                 "stalled")

    def __init__(self, sock: socket.socket, peer: Any, loop: asyncio.AbstractEventLoop,
                 stalled: dict[_Connection, None] | None = None) -> None:
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
            raise _Closed("closed")
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
            raise _Closed("closed")

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
                raise _Closed("closed")
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
                raise _Closed("closed")
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
        """Close now; a task waiting on this connection raises `_Closed`. Idempotent."""
        if self.closed:
            return
        self._unregister()
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class _Request:
    __slots__ = ("method", "target", "version", "line", "headers", "keep_alive")

    def __init__(self, method: str, target: str, version: tuple[int, int], line: str,
                 headers: dict[str, str], keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.line = line
        self.headers = headers
        self.keep_alive = keep_alive


class _BadRequest(Exception):
    def __init__(self, code: int, text: str, line: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.line = line


def _parse_head(head: bytes) -> _Request:
    """A request head (without the blank line) -> _Request; raises _BadRequest."""
    lines = re.split(rb"\r?\n", head)
    raw_line = lines[0]
    line = raw_line.decode("latin-1")
    parts = raw_line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise _BadRequest(400, "Bad request syntax.", line)
    method_b, target_b, version_b = parts
    version = _VERSION.match(version_b)
    if not _TOKEN.match(method_b) or version is None:
        raise _BadRequest(400, "Bad request syntax.", line)
    if version.group(1) != b"1":
        raise _BadRequest(505, "HTTP version not supported.", line)
    headers: dict[str, str] = {}
    lengths: set[str] = set()
    for raw in lines[1:]:
        if raw[:1] in (b" ", b"\t"):
            raise _BadRequest(400, "Folded header lines are not accepted.", line)
        name_b, sep, value_b = raw.partition(b":")
        if not sep or not _TOKEN.match(name_b):
            raise _BadRequest(400, "Bad header line.", line)
        name = name_b.decode("ascii").lower()
        value = value_b.strip(b" \t").decode("latin-1")
        if name == "content-length":
            lengths.add(value)
        headers[name] = f"{headers[name]}, {value}" if name in headers and name != "content-length" else value
    if len(lengths) > 1:
        raise _BadRequest(400, "Conflicting Content-Length headers.", line)
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    minor = int(version.group(2))
    keep_alive = "close" not in tokens if minor >= 1 else "keep-alive" in tokens
    return _Request(method_b.decode("ascii"), target_b.decode("latin-1"), (1, minor), line, headers, keep_alive)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding value allows gzip (`gzip;q=0` does not)."""
    if not accept_encoding:
        return False
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


class _Settings:
    """What a reload can change: TLS context, SAN allow-list, basic auth, extra headers."""

    __slots__ = ("context", "allowed_sans", "auth", "headers")

    def __init__(self, context: ssl.SSLContext | None, allowed_sans: tuple[str, ...], auth: BasicAuth | None,
                 headers: tuple[tuple[str, str], ...]) -> None:
        self.context = context
        self.allowed_sans = allowed_sans
        self.auth = auth
        self.headers = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)


def _settings(web_config: WebConfig | None) -> _Settings:
    if web_config is None:
        return _Settings(None, (), None, ())
    context = build_ssl_context(web_config.tls, web_config.source) if web_config.tls is not None else None
    auth = BasicAuth(web_config.basic_auth_users) if web_config.basic_auth_users else None
    sans = web_config.tls.client_allowed_sans if web_config.tls is not None else ()
    return _Settings(context, sans, auth, web_config.headers)


class RunningServer:
    """A bound server. `address` is the (host, port) actually bound; port 0 picks a free one."""

    def __init__(self, sock: socket.socket, telemetry_path: str, render_metrics: RenderMetrics,
                 render_status: RenderStatus, settings: _Settings) -> None:
        self._sock = sock
        self._address = sock.getsockname()
        self.telemetry_path = telemetry_path
        self.render_metrics = render_metrics
        self.render_status = render_status
        self._settings = settings
        self.scheme = "https" if settings.context is not None else "http"
        self._lock = threading.RLock()  # shutdown() may run in a signal handler while serve_forever holds it
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._serving_ident: int | None = None
        self._done = threading.Event()
        self._connections: dict[_Connection, None] = {}
        self._idle: dict[_Connection, None] = {}  # waiting for a request, oldest first
        self._handshaking: dict[_Connection, None] = {}  # in a TLS handshake, oldest first
        self._stalled: dict[_Connection, None] = {}  # answering, blocked until the client reads; oldest first
        self._pool = WorkerPool(RENDER_THREADS, "atlas-render")
        self._rendering: dict[tuple[Any, bool], asyncio.Future[tuple[bytes, str]]] = {}
        self._accept = sock.accept
        self._accepting = False
        self._backoff = ACCEPT_BACKOFF[0]
        self._last_fd_warning = -1e9
        self.cap = connection_cap()
        # Counters, for tests and logs.
        self.rejected_connections = 0  # closed at accept: at the cap with no idle connection to close
        self.evicted_connections = 0  # idle connections closed to make room for a new one
        self.accept_errors = 0  # accept() failures for lack of file descriptors or memory
        self.timeouts = 0  # connections closed by a deadline

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._address[:2]
        return str(host), int(port)

    @property
    def basic_auth(self) -> BasicAuth | None:
        """The credential checker when basic_auth_users is set."""
        return self._settings.auth

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def reload(self, web_config: WebConfig | None) -> None:
        """Use a new web config for new connections and requests; raises `WebConfigError`.

        TLS cannot be turned on or off by a reload (the scheme Prometheus scrapes would change).
        """
        settings = _settings(web_config)
        if (settings.context is None) != (self._settings.context is None):
            from atlas_exporter.exporter.webconfig import WebConfigError

            source = web_config.source if web_config is not None else "web config"
            raise WebConfigError(f"{source}: tls_server_config: TLS cannot be turned on or off without a restart")
        self._settings = settings

    # -- lifecycle -------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until `shutdown()`; then close the listening socket and every connection."""
        with self._lock:
            if self._closed:
                return
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            self._serving_ident = threading.get_ident()
        try:
            loop.run_until_complete(self._main())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._sock.close()
                self._done.set()

    def shutdown(self) -> None:
        """Stop serving and close the listening socket. Idempotent; safe from a signal handler."""
        with self._lock:
            first = not self._closed
            self._closed = True
            loop, stop, serving = self._loop, self._stop, self._serving_ident
        if loop is None:
            if first:
                self._sock.close()
            return
        if first and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop is already closed
                pass
        if serving != threading.get_ident():
            self._done.wait(10)

    async def _main(self) -> None:
        assert self._stop is not None
        self._sock.setblocking(False)
        self._start_accepting()
        try:
            await self._stop.wait()
        finally:
            self._stop_accepting()
            for conn in list(self._connections):
                conn.close()
                if conn.task is not None:
                    conn.task.cancel()
            tasks = [c.task for c in self._connections if c.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=2)

    # -- accepting -------------------------------------------------------------------------------

    def _start_accepting(self) -> None:
        if not self._accepting and self._sock.fileno() >= 0:
            assert self._loop is not None
            self._loop.add_reader(self._sock.fileno(), self._on_acceptable)
            self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._accepting = False

    def _on_acceptable(self) -> None:
        loop = self._loop
        assert loop is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, peer = self._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno not in _OUT_OF_FDS:
                    log.debug("accept failed: %s", err)
                    return
                self.accept_errors += 1
                if self._evict_oldest_idle():
                    self._warn_fds(err, "closed the oldest idle connection")
                    continue
                self._warn_fds(err, f"pausing accept for {self._backoff:g} s")
                self._stop_accepting()
                loop.call_later(self._backoff, self._start_accepting)
                self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF[1])
                return
            self._backoff = ACCEPT_BACKOFF[0]
            if len(self._connections) >= self.cap and not self._evict_oldest_idle():
                self.rejected_connections += 1
                log.debug("closing connection from %s: %d connections busy", peer, len(self._connections))
                sock.close()
                continue
            try:
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            conn = _Connection(sock, peer, loop, self._stalled)
            self._connections[conn] = None
            self._idle[conn] = None
            conn.task = loop.create_task(self._serve_connection(conn))

    def _warn_fds(self, err: OSError, action: str) -> None:
        now = time.monotonic()
        if now - self._last_fd_warning >= 60:
            self._last_fd_warning = now
            log.warning("accept failed: %s (%s; %d accept failures so far, %d connections open; raise "
                        "LimitNOFILE / ulimit -n)", os.strerror(err.errno or 0).lower(), action,
                        self.accept_errors, len(self._connections))

    def _evict_oldest_idle(self) -> bool:
        """Close the connection idle for longest or, when none is idle, the one that has waited
        longest for its client to read an answer; False when every connection is busy otherwise."""
        for waiting, what in ((self._idle, "idle"), (self._stalled, "stalled")):
            for conn in waiting:
                self.evicted_connections += 1
                log.debug("closing %s connection from %s to make room", what, conn.address())
                self._drop(conn)
                return True
        return False

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._idle.pop(conn, None)
        self._handshaking.pop(conn, None)
        self._stalled.pop(conn, None)
        self._connections.pop(conn, None)
        if conn.task is not None and asyncio.current_task() is not conn.task:
            conn.task.cancel()

    def _handshake_started(self, conn: _Connection) -> None:
        """At most MAX_HANDSHAKES TLS handshakes hold TLS state at once; the oldest makes room."""
        while len(self._handshaking) >= MAX_HANDSHAKES:
            oldest = next(iter(self._handshaking))
            self.evicted_connections += 1
            log.debug("closing TLS handshake from %s to make room", oldest.address())
            self._handshaking.pop(oldest, None)
            self._drop(oldest)
        self._handshaking[conn] = None

    def _set_idle(self, conn: _Connection, idle: bool) -> None:
        self._idle.pop(conn, None)
        if idle and not conn.closed:
            self._idle[conn] = None

    # -- one connection ---------------------------------------------------------------------------

    async def _serve_connection(self, conn: _Connection) -> None:
        settings = self._settings
        try:
            if settings.context is not None:
                try:
                    async with asyncio.timeout(HEAD_TIMEOUT):
                        await conn.handshake(settings.context, lambda: self._handshake_started(conn))
                except TimeoutError:
                    raise
                except (ssl.SSLError, OSError) as err:
                    log.debug("TLS handshake with %s failed: %s", conn.address(), err)
                    return
                finally:
                    self._handshaking.pop(conn, None)
                if settings.allowed_sans and not peer_san_allowed(conn.sock.getpeercert(),  # type: ignore[attr-defined]
                                                                  settings.allowed_sans):
                    log.debug("closing TLS connection from %s: no client certificate SAN in client_allowed_sans",
                              conn.address())
                    return
            first = True
            while not conn.closed:
                self._set_idle(conn, True)
                keep = await self._one_request(conn, first)
                first = False
                if not keep:
                    break
        except TimeoutError:
            self.timeouts += 1
            log.debug("connection from %s closed: deadline passed", conn.address())
        except (_Closed, asyncio.CancelledError):
            pass
        except (ConnectionError, ssl.SSLError, OSError) as err:
            log.debug("connection from %s closed: %s", conn.address(), err)
        except Exception:  # never lose the loop to one connection
            log.debug("error while serving %s", conn.address(), exc_info=True)
        finally:
            self._drop(conn)

    async def _read_head(self, conn: _Connection, first: bool) -> bytes | None:
        """The next request head, without its blank line; None at a clean end of the connection."""
        buf = conn.buffer
        if not buf.strip(b"\r\n"):
            async with asyncio.timeout(HEAD_TIMEOUT if first else IDLE_TIMEOUT):
                while not buf.strip(b"\r\n"):
                    data = await conn.recv()
                    if not data:
                        return None
                    buf += data
        limit = MAX_REQUEST_LINE + MAX_HEADER_BYTES
        conn.deadline = asyncio.get_running_loop().time() + HEAD_TIMEOUT  # head and body together
        async with asyncio.timeout_at(conn.deadline):
            while True:
                while buf[:1] in (b"\r", b"\n"):  # empty lines before a request are ignored
                    del buf[:1]
                end = _HEAD_END.search(buf, 0, limit + 4)
                newline = buf.find(b"\n", 0, MAX_REQUEST_LINE + 2)
                if (newline < 0 and len(buf) > MAX_REQUEST_LINE + 1) or newline > MAX_REQUEST_LINE + 1:
                    raise _BadRequest(414, "Request line too long.")
                if end is not None:
                    head = bytes(buf[:end.start()])
                    del buf[:end.end()]
                    if len(head) - newline > MAX_HEADER_BYTES:
                        raise _BadRequest(431, "Request header fields too large.")
                    return head
                if len(buf) > limit:
                    raise _BadRequest(431, "Request header fields too large.")
                data = await conn.recv()
                if not data:
                    return None
                buf += data

    async def _discard(self, conn: _Connection, length: int) -> None:
        buf = conn.buffer
        async with asyncio.timeout_at(conn.deadline):
            while len(buf) < length:
                length -= len(buf)
                buf.clear()
                data = await conn.recv(min(65536, length))
                if not data:
                    raise _Closed("end of input inside a request body")
                buf += data
            del buf[:length]

    async def _one_request(self, conn: _Connection, first: bool) -> bool:
        """Read, answer and log one request; whether the connection stays open for another."""
        try:
            head = await self._read_head(conn, first)
            if head is None:
                return False
            request = _parse_head(head)
        except _BadRequest as err:
            self._set_idle(conn, False)
            await self._answer(conn, None, err.code, err.text + "\n", close=True, line=err.line)
            await self._linger(conn)
            return False
        self._set_idle(conn, False)
        headers = request.headers
        close = not request.keep_alive
        body_unread = False
        if "transfer-encoding" in headers:
            if "content-length" in headers:
                await self._answer(conn, request, 400, "Content-Length and Transfer-Encoding together.\n",
                                   close=True)
                await self._linger(conn)
                return False
            close = body_unread = True  # a chunked body is never read: answer, then close
        elif "content-length" in headers:
            text = headers["content-length"]
            if not _DECIMAL.fullmatch(text):
                await self._answer(conn, request, 400, "Bad Content-Length.\n", close=True)
                await self._linger(conn)
                return False
            length = int(text)
            if length > MAX_DISCARDED_BODY or "expect" in headers:
                close = body_unread = True
            elif length:
                await self._discard(conn, length)
        await self._dispatch(conn, request, close)
        if body_unread or close:
            await self._linger(conn)
            return False
        return True

    async def _linger(self, conn: _Connection) -> None:
        """Half-close, then drop unread input for a moment, so that the answer is not lost to a reset."""
        try:
            if not isinstance(conn.sock, ssl.SSLSocket):
                conn.sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(LINGER_SECONDS):
                while await conn.recv():
                    pass
        except (TimeoutError, OSError, ssl.SSLError, _Closed):
            pass

    async def _dispatch(self, conn: _Connection, request: _Request, close: bool) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        if settings.auth is not None:
            verdict = settings.auth.begin(request.headers.get("authorization"), conn.client)
            if isinstance(verdict, concurrent.futures.Future):
                verdict = await asyncio.wrap_future(verdict)
            if verdict is None:
                await self._answer(conn, request, 429, "Too many password checks waiting; try again.\n",
                                   close=close, extra=[("Retry-After", "1")])
                return
            if not verdict:
                await self._answer(conn, request, 401, "Unauthorized.\n", close=close,
                                   extra=[("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
                return
        path = urlsplit(request.target).path
        if path not in (self.telemetry_path, "/"):
            await self._answer(conn, request, 404, "Not found.\n", close=close)
            return
        if request.method not in ("GET", "HEAD"):
            await self._answer(conn, request, 405, "Method not allowed.\n", close=close,
                               extra=[("Allow", "GET, HEAD")])
            return
        gzip_ok = accepts_gzip(request.headers.get("accept-encoding"))
        what = "collecting metrics" if path == self.telemetry_path else "rendering the status page"
        job = self._render_metrics if path == self.telemetry_path else self._render_status
        # Requests that arrive while the same page is being rendered share that render (and its
        # bytes): a burst of scrapes costs one render and one body in memory, not one per connection.
        key = (job, gzip_ok)
        shared = self._rendering.get(key)
        if shared is None:
            shared = loop.run_in_executor(self._pool, job, gzip_ok)
            self._rendering[key] = shared
            shared.add_done_callback(lambda _, key=key: self._rendering.pop(key, None))
        try:
            async with asyncio.timeout(RENDER_TIMEOUT):
                body, content_type = await asyncio.shield(shared)
        except TimeoutError:
            log.error("%s took longer than %g s; answering 503", what, RENDER_TIMEOUT)
            await self._answer(conn, request, 503, f"{what.capitalize()} took longer than {RENDER_TIMEOUT:g} s.\n",
                               close=close, extra=[("Retry-After", "10")])
            return
        except Exception as err:  # noqa: BLE001 - any failure becomes a 500, never a dead server
            reason = _one_line(err)
            log.error("%s failed: %s", what, reason)
            log.debug("%s failed", what, exc_info=err)
            await self._answer(conn, request, 500, f"An error has occurred while {what}: {reason}\n", close=close)
            return
        extra = [("Vary", "Accept-Encoding")]
        if gzip_ok:
            extra.append(("Content-Encoding", "gzip"))
        await self._answer(conn, request, 200, body, close=close, content_type=content_type, extra=extra)

    def _render_metrics(self, compress: bool) -> tuple[bytes, str]:
        body, content_type = self.render_metrics()
        return (gzip.compress(body, GZIP_LEVEL, mtime=0) if compress else body), content_type

    def _render_status(self, compress: bool) -> tuple[bytes, str]:
        body = self.render_status().encode("utf-8")
        return (gzip.compress(body, GZIP_LEVEL, mtime=0) if compress else body), "text/html; charset=utf-8"

    async def _answer(self, conn: _Connection, request: _Request | None, code: int, body: bytes | str, *,
                      close: bool, content_type: str = "text/plain; charset=utf-8",
                      extra: list[tuple[str, str]] | None = None, line: str = "") -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        head = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
                f"Server: atlas-exporter\r\nDate: {formatdate(usegmt=True)}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in extra or ())
        if close:
            head.append("Connection: close\r\n")
        out = "".join(head).encode("latin-1") + self._settings.headers + b"\r\n"
        if request is None or request.method != "HEAD":
            out += data
        log.debug('%s "%s" %s', conn.address(), request.line if request else line, code)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await conn.sendall(out)


class ServerMetrics:
    """A prometheus_client collector of the server's own counters (register it with the registry).

    atlas_exporter_http_connections                       gauge: connections held now
    atlas_exporter_http_connections_closed_total{reason}  counter: closed by the server; reason is
        evicted (idle or handshaking, to make room), rejected (at the cap, nothing idle to close),
        timeout (a deadline passed)
    atlas_exporter_http_accept_errors_total               counter: accept() failed for lack of fds
    atlas_exporter_http_auth_turned_away_total            counter: 429s, too many password checks waiting
    """

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        srv = self.server
        closed = CounterMetricFamily("atlas_exporter_http_connections_closed",
                                     "Connections closed by the server, by reason.", labels=["reason"])
        closed.add_metric(["evicted"], srv.evicted_connections)
        closed.add_metric(["rejected"], srv.rejected_connections)
        closed.add_metric(["timeout"], srv.timeouts)
        out = [
            GaugeMetricFamily("atlas_exporter_http_connections", "Client connections held by the server now.",
                              value=srv.open_connections),
            closed,
            CounterMetricFamily("atlas_exporter_http_accept_errors",
                                "accept() failures for lack of file descriptors or memory.",
                                value=srv.accept_errors),
        ]
        auth = srv.basic_auth
        if auth is not None:
            out.append(CounterMetricFamily("atlas_exporter_http_auth_turned_away",
                                           "Requests answered 429 because too many password checks were waiting.",
                                           value=auth.turned_away))
        return out


def start_server(listen_address: str, telemetry_path: str, render_metrics: RenderMetrics,
                 render_status: RenderStatus, web_config: WebConfig | None = None) -> RunningServer:
    """Bind `listen_address` and return the server, not yet serving; raises `ServerError` or `WebConfigError`."""
    if not telemetry_path.startswith("/"):
        raise ServerError(f"--web.telemetry-path must start with '/', got {telemetry_path!r}")
    family, sockaddr, dual_stack = _resolve(listen_address)
    settings = _settings(web_config)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise ServerError(f"listen tcp {listen_address}: {_bind_reason(err)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError as err:
        sock.close()
        raise ServerError(f"listen tcp {listen_address}: {_bind_reason(err)}") from None
    server = RunningServer(sock, telemetry_path, render_metrics, render_status, settings)
    host, port = server.address
    log.debug("listening on %s (%s://%s:%s%s), at most %d connections", listen_address, server.scheme,
              f"[{host}]" if ":" in host else host, port, telemetry_path, server.cap)
    return server
