"""The HTTP(S) server: `/metrics` (the telemetry path) and the status page at `/`.

`start_server(listen_address, telemetry_path, render_metrics, render_status, web_config)` binds and
returns a `RunningServer`; nothing is served until `serve_forever()`. Bind problems raise
`ServerError("listen tcp 127.0.0.1:9858: address already in use")`. What each request gets is in
`handler.py`; `ServerMetrics` reports the server's own counters:

    atlas_exporter_http_connections 3.0
    atlas_exporter_http_connections_closed_total{reason="evicted"} 0.0
    atlas_exporter_http_accept_errors_total 0.0

One asyncio event loop (in the thread that calls `serve_forever()`) holds every connection, so
thousands of idle, slow or half-open connections cost memory, not threads. TLS handshakes and reads
are driven on non-blocking sockets by the loop. At most `connection_cap()` connections are held; at
the cap the connection idle for longest is closed to make room; likewise for TLS handshakes in
progress beyond `MAX_HANDSHAKES` (a silent connection holds no TLS state); see `connections.py`.
When accept fails for lack of file descriptors, the oldest idle connection is closed or accepting
pauses (backing off to 1 s), and the failure is counted and logged.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import threading
import time

from prometheus_client.metrics_core import Metric

from atlas_exporter.exporter.metrics import (
    HTTP_ACCEPT_ERRORS,
    HTTP_AUTH_TURNED_AWAY,
    HTTP_CONNECTIONS,
    HTTP_CONNECTIONS_CLOSED,
)
from atlas_exporter.web.basicauth import BasicAuth
from atlas_exporter.web.connections import Connection, ConnectionTable, connection_cap
from atlas_exporter.web.handler import RenderMetrics, RenderStatus, RequestHandler
from atlas_exporter.web.listen import ServerError, listen, resolve
from atlas_exporter.web.webconfig import WebConfig, WebConfigError
from atlas_exporter.web.websettings import ServerSettings, server_settings

log = logging.getLogger(__name__)

ACCEPT_BACKOFF = (0.05, 1.0)  # seconds: first and longest pause of accept() after EMFILE/ENFILE
_ACCEPT_BATCH = 64
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class RunningServer:
    """A bound server. `address` is the (host, port) actually bound; port 0 picks a free one."""

    def __init__(self, sock: socket.socket, telemetry_path: str, render_metrics: RenderMetrics,
                 render_status: RenderStatus, settings: ServerSettings) -> None:
        self._sock = sock
        self._address = sock.getsockname()
        self.telemetry_path = telemetry_path
        self.scheme = "https" if settings.context is not None else "http"
        self._lock = threading.RLock()  # shutdown() may run in a signal handler while serve_forever holds it
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._serving_ident: int | None = None
        self._done = threading.Event()
        self.connections = ConnectionTable(connection_cap())
        self.handler = RequestHandler(self.connections, settings, telemetry_path, render_metrics, render_status)
        self._accept = sock.accept
        self._accepting = False
        self._backoff = ACCEPT_BACKOFF[0]
        self._last_fd_warning = -1e9
        self.accept_errors = 0  # accept() failures for lack of file descriptors or memory

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._address[:2]
        return str(host), int(port)

    @property
    def basic_auth(self) -> BasicAuth | None:
        """The credential checker when basic_auth_users is set."""
        return self.handler.settings.auth

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    @property
    def cap(self) -> int:
        """Connections held at once."""
        return self.connections.cap

    @property
    def rejected_connections(self) -> int:
        """Closed at accept: at the cap with no idle connection to close."""
        return self.connections.rejected

    @property
    def evicted_connections(self) -> int:
        """Idle, stalled or handshaking connections closed to make room for a new one."""
        return self.connections.evicted

    @property
    def timeouts(self) -> int:
        """Connections closed by a deadline."""
        return self.connections.timeouts

    def reload(self, web_config: WebConfig | None) -> None:
        """Use a new web config for new connections and requests; raises `WebConfigError`.

        TLS cannot be turned on or off by a reload (the scheme Prometheus scrapes would change).
        """
        settings = server_settings(web_config)
        if (settings.context is None) != (self.handler.settings.context is None):
            source = web_config.source if web_config is not None else "web config"
            raise WebConfigError(f"{source}: tls_server_config: TLS cannot be turned on or off without a restart")
        self.handler.settings = settings

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
            tasks = self.connections.close_all()
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
                if self.connections.evict_oldest_idle():
                    self._warn_fds(err, "closed the oldest idle connection")
                    continue
                self._warn_fds(err, f"pausing accept for {self._backoff:g} s")
                self._stop_accepting()
                loop.call_later(self._backoff, self._start_accepting)
                self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF[1])
                return
            self._backoff = ACCEPT_BACKOFF[0]
            if not self.connections.admit(peer):
                sock.close()
                continue
            try:
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            conn = Connection(sock, peer, loop, self.connections.stalled)
            self.connections.add(conn)
            conn.task = loop.create_task(self.handler.serve(conn))

    def _warn_fds(self, err: OSError, action: str) -> None:
        now = time.monotonic()
        if now - self._last_fd_warning >= 60:
            self._last_fd_warning = now
            log.warning("accept failed: %s (%s; %d accept failures so far, %d connections open; raise "
                        "LimitNOFILE / ulimit -n)", os.strerror(err.errno or 0).lower(), action,
                        self.accept_errors, len(self.connections))


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

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        srv = self.server
        closed = HTTP_CONNECTIONS_CLOSED.family()
        closed.add_metric(["evicted"], srv.evicted_connections)
        closed.add_metric(["rejected"], srv.rejected_connections)
        closed.add_metric(["timeout"], srv.timeouts)
        out: list[Metric] = [
            HTTP_CONNECTIONS.value(srv.open_connections),
            closed,
            HTTP_ACCEPT_ERRORS.value(srv.accept_errors),
        ]
        auth = srv.basic_auth
        if auth is not None:
            out.append(HTTP_AUTH_TURNED_AWAY.value(auth.turned_away))
        return out


def start_server(listen_address: str, telemetry_path: str, render_metrics: RenderMetrics,
                 render_status: RenderStatus, web_config: WebConfig | None = None) -> RunningServer:
    """Bind `listen_address` and return the server, not yet serving; raises `ServerError` or `WebConfigError`."""
    if not telemetry_path.startswith("/"):
        raise ServerError(f"--web.telemetry-path must start with '/', got {telemetry_path!r}")
    family, sockaddr, dual_stack = resolve(listen_address)
    settings = server_settings(web_config)
    sock = listen(listen_address, family, sockaddr, dual_stack)
    server = RunningServer(sock, telemetry_path, render_metrics, render_status, settings)
    host, port = server.address
    log.debug("listening on %s (%s://%s:%s%s), at most %d connections", listen_address, server.scheme,
              f"[{host}]" if ":" in host else host, port, telemetry_path, server.cap)
    return server
