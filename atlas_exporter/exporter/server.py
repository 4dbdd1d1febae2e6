"""The HTTP(S) server: `/metrics` (the telemetry path) and the status page at `/`.

`start_server(listen_address, telemetry_path, render_metrics, render_status, web_config)` binds and
returns a `RunningServer`; nothing is served until `serve_forever()`. Answers:

    GET /metrics   200, the exposition from render_metrics() (gzip when the client accepts it)
    GET /          200, the HTML page from render_status()
    GET /other     404            POST /metrics   405 (Allow: GET, HEAD)
    no or wrong basic auth credentials   401 (WWW-Authenticate: Basic realm="atlas-exporter")
    render_metrics() raises              500, one-line body, one log line; the server keeps serving

Bind problems raise `ServerError("listen tcp 127.0.0.1:9858: address already in use")`.
Each connection gets its own daemon thread (at most `MAX_CONNECTIONS` at once), a deadline for
its TLS handshake and request head, and limits on request line and header sizes. Requests are
logged through `logging` at debug level.
"""

from __future__ import annotations

import errno
import gzip
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from atlas_exporter.exporter.webconfig import BasicAuth, WebConfig, build_ssl_context, peer_san_allowed

log = logging.getLogger(__name__)

REALM = "atlas-exporter"
MAX_REQUEST_LINE = 8192  # bytes, as in most HTTP servers
MAX_HEADER_BYTES = 16384  # all header lines of one request together
MAX_CONNECTIONS = 256  # connections served at once; more are closed at accept
HEAD_TIMEOUT = 10.0  # seconds for a TLS handshake, or for a request head once its first byte arrived
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
WRITE_TIMEOUT = 30.0  # seconds to send one response
GZIP_LEVEL = 6

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
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, family: socket.AddressFamily, sockaddr: tuple[Any, ...], dual_stack: bool,
                 handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = family
        self.dual_stack = dual_stack
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.rejected_connections = 0
        self.ssl_context: ssl.SSLContext | None = None
        self.allowed_sans: tuple[str, ...] = ()
        super().__init__(sockaddr, handler, bind_and_activate=False)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if self.dual_stack else 1)
        # HTTPServer.server_bind also looks up the host's FQDN, which can block on DNS; skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[0], self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.rejected_connections += 1
            log.debug("closing connection from %s: %d connections already open", client_address, MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            request.settimeout(HEAD_TIMEOUT)
            super().finish_request(request, client_address)
            return
        request.settimeout(HEAD_TIMEOUT)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log.debug("TLS handshake with %s failed: %s", client_address, err)
            return
        try:
            if self.allowed_sans and not peer_san_allowed(tls.getpeercert(), self.allowed_sans):
                log.debug("closing TLS connection from %s: no client certificate SAN in client_allowed_sans",
                          client_address)
                return
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error while serving %s", client_address, exc_info=True)


class _HeadReader:
    """Wraps a buffered `rfile`: `readline` stops at a byte budget and at a deadline."""

    def __init__(self, rfile: Any, sock: socket.socket, budget: int, deadline: float) -> None:
        self._rfile = rfile
        self._sock = sock
        self._budget = budget
        self._deadline = deadline
        self.exceeded = False

    def readline(self, size: int = -1) -> bytes:
        line = bytearray()
        while True:
            if self._budget <= 0:
                self.exceeded = True
                return b""
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request head not received in time")
            self._sock.settimeout(remaining)
            chunk = self._rfile.peek(1)
            if not chunk:
                return bytes(line)
            limit = min(len(chunk), self._budget)
            if size >= 0:
                limit = min(limit, size - len(line))
            end = chunk.find(b"\n", 0, limit)
            take = end + 1 if end >= 0 else limit
            data = self._rfile.read(take)
            self._budget -= len(data)
            line += data
            if end >= 0 or (size >= 0 and len(line) >= size):
                return bytes(line)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # the head and a small body leave in one write
    disable_nagle_algorithm = True
    server_version = "atlas-exporter"
    sys_version = ""
    # Set per server by start_server.
    telemetry_path = "/metrics"
    render_metrics: RenderMetrics
    render_status: RenderStatus
    extra_headers: tuple[tuple[str, str], ...] = ()
    auth: BasicAuth | None = None

    def setup(self) -> None:
        super().setup()
        self._first = True

    def handle_one_request(self) -> None:
        sock = self.connection
        try:
            # Wait for the first byte of the next request (longer on a kept-alive connection).
            sock.settimeout(HEAD_TIMEOUT if self._first else IDLE_TIMEOUT)
            if not self.rfile.peek(1):
                self.close_connection = True
                return
            self._first = False
            deadline = time.monotonic() + HEAD_TIMEOUT
            line_reader = _HeadReader(self.rfile, sock, MAX_REQUEST_LINE + 1, deadline)
            self.raw_requestline = line_reader.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE or line_reader.exceeded:
                self.requestline, self.request_version, self.command = "", "", ""
                self.close_connection = True
                self._send_text(414, "Request line too long.\n")
                return
            real = self.rfile
            head = _HeadReader(real, sock, MAX_HEADER_BYTES, deadline)
            self.rfile = head
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = real
            if not parsed:
                return
            if self.request_version == "HTTP/0.9":
                self.send_error(400, "HTTP/0.9 requests are not served")
                return
            if head.exceeded:
                self.close_connection = True
                self._send_text(431, "Request header fields too large.\n")
                return
            sock.settimeout(WRITE_TIMEOUT)
            self._dispatch()
            self.wfile.flush()
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError) as err:
            log.debug("connection from %s closed: %s", self.client_address, err)
            self.close_connection = True

    def _dispatch(self) -> None:
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # a request body, if any, is never read
        if self.auth is not None and not self.auth.check(self.headers.get("Authorization")):
            self._send_text(401, "Unauthorized.\n",
                            [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
            return
        path = urlsplit(self.path).path
        if path not in (self.telemetry_path, "/"):
            self._send_text(404, "Not found.\n")
            return
        if self.command not in ("GET", "HEAD"):
            self._send_text(405, "Method not allowed.\n", [("Allow", "GET, HEAD")])
            return
        if path == self.telemetry_path:
            try:
                body, content_type = self.render_metrics()
            except Exception as err:  # noqa: BLE001 - any failure becomes a 500, never a dead server
                reason = " ".join(f"{type(err).__name__}: {err}".split())
                log.error("collecting metrics failed: %s", reason)
                log.debug("collecting metrics failed", exc_info=True)
                self._send_text(500, f"An error has occurred while collecting metrics: {reason}\n")
                return
        else:
            try:
                body, content_type = self.render_status().encode("utf-8"), "text/html; charset=utf-8"
            except Exception as err:  # noqa: BLE001
                reason = " ".join(f"{type(err).__name__}: {err}".split())
                log.error("rendering the status page failed: %s", reason)
                log.debug("rendering the status page failed", exc_info=True)
                self._send_text(500, f"An error has occurred while rendering the status page: {reason}\n")
                return
        self._send(200, body, content_type, compress=True)

    def _send_text(self, code: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        self._send(code, text.encode("utf-8"), "text/plain; charset=utf-8", headers=headers)

    def _send(self, code: int, body: bytes, content_type: str, *, compress: bool = False,
              headers: list[tuple[str, str]] | None = None) -> None:
        if compress and accepts_gzip(self.headers.get("Accept-Encoding") if self.headers else None):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            headers = [*(headers or []), ("Content-Encoding", "gzip")]
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if compress:
            self.send_header("Vary", "Accept-Encoding")
        for name, value in (*self.extra_headers, *(headers or [])):
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # parse_request reports malformed requests through here; answer in plain text and close.
        self.close_connection = True
        if getattr(self, "request_version", "") in ("", "HTTP/0.9"):
            self.request_version = "HTTP/1.0"  # so that the status line and headers are sent
        self._send_text(code, f"{message or self.responses.get(code, ('Error',))[0]}.\n")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug('%s "%s" %s', self.address_string(), self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def version_string(self) -> str:
        return self.server_version


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


class RunningServer:
    """A bound server. `address` is the (host, port) actually bound; port 0 picks a free one."""

    def __init__(self, httpd: _Server, scheme: str, basic_auth: BasicAuth | None = None) -> None:
        self._httpd = httpd
        self.scheme = scheme  # "http" or "https"
        self.basic_auth = basic_auth  # the credential checker when basic_auth_users is set
        self._lock = threading.Lock()
        self._closed = False
        self._serving_ident: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def rejected_connections(self) -> int:
        """Connections closed at accept because `MAX_CONNECTIONS` were already open."""
        return self._httpd.rejected_connections

    def serve_forever(self) -> None:
        """Serve until `shutdown()`; then close the listening socket."""
        with self._lock:
            if self._closed:
                return
            self._serving_ident = threading.get_ident()
        try:
            self._httpd.serve_forever(poll_interval=0.1)
        finally:
            self._httpd.server_close()

    def shutdown(self) -> None:
        """Stop serving and close the listening socket. Idempotent; safe from a signal handler."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            serving = self._serving_ident
        if serving is None:
            self._httpd.server_close()
        elif serving == threading.get_ident():
            # Called from inside serve_forever (a signal handler): waiting here would deadlock.
            threading.Thread(target=self._httpd.shutdown, name="atlas-server-shutdown", daemon=True).start()
        else:
            self._httpd.shutdown()


def start_server(listen_address: str, telemetry_path: str, render_metrics: RenderMetrics,
                 render_status: RenderStatus, web_config: WebConfig | None = None) -> RunningServer:
    """Bind `listen_address` and return the server, not yet serving; raises `ServerError` or `WebConfigError`."""
    if not telemetry_path.startswith("/"):
        raise ServerError(f"--web.telemetry-path must start with '/', got {telemetry_path!r}")
    family, sockaddr, dual_stack = _resolve(listen_address)
    context = None
    auth = None
    headers: tuple[tuple[str, str], ...] = ()
    if web_config is not None:
        if web_config.tls is not None:
            context = build_ssl_context(web_config.tls, web_config.source)
        if web_config.basic_auth_users:
            auth = BasicAuth(web_config.basic_auth_users)
        headers = web_config.headers
    handler = type("AtlasHandler", (_Handler,), {
        "telemetry_path": telemetry_path,
        "render_metrics": staticmethod(render_metrics),
        "render_status": staticmethod(render_status),
        "extra_headers": headers,
        "auth": auth,
    })
    try:
        httpd = _Server(family, sockaddr, dual_stack, handler)
    except OSError as err:
        raise ServerError(f"listen tcp {listen_address}: {_bind_reason(err)}") from None
    httpd.ssl_context = context
    httpd.allowed_sans = web_config.tls.client_allowed_sans if web_config and web_config.tls else ()
    try:
        httpd.server_bind()
        httpd.server_activate()
    except OSError as err:
        httpd.server_close()
        raise ServerError(f"listen tcp {listen_address}: {_bind_reason(err)}") from None
    scheme = "https" if context is not None else "http"
    host, port = httpd.server_address[:2]
    log.debug("listening on %s (%s://%s:%s%s)", listen_address, scheme,
             f"[{host}]" if ":" in str(host) else host, port, telemetry_path)
    return RunningServer(httpd, scheme, auth)
