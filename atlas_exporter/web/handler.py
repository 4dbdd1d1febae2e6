"""Answering requests on one connection: the TLS handshake, request heads and bodies, auth, the answer.

`RequestHandler.serve(conn)` runs for each accepted connection, on the server's event loop, until
the connection closes. It answers:

    GET /metrics   200, the exposition from render_metrics() (gzip when the client accepts it)
    GET /          200, the HTML page from render_status()
    GET /other     404            POST /metrics   405 (Allow: GET, HEAD)
    no or wrong basic auth credentials   401 (WWW-Authenticate: Basic realm="atlas-exporter")
    too many password checks waiting     429 (Retry-After: 1)
    render_metrics() raises              500, one-line body, one log line; the server keeps serving

Deadlines cover a whole phase, never a single read: the TLS handshake, the first request on a new
connection, each request head once its first byte arrived, the idle wait of a kept-alive connection,
and sending each response. Rendering, gzip and bcrypt run in worker threads, never on the loop;
requests that arrive while the same page is being rendered share that render. A request body is read
and discarded (or the connection is closed after the answer), so every request gets exactly one
answer. Requests are logged at debug level.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from atlas_exporter.web.connections import Closed, Connection, ConnectionTable
from atlas_exporter.web.http_request import (
    DECIMAL,
    HEAD_END,
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    REASONS,
    BadRequest,
    Request,
    accepts_gzip,
    one_line,
    parse_head,
)
from atlas_exporter.web.tls import peer_san_allowed
from atlas_exporter.web.websettings import ServerSettings

log = logging.getLogger(__name__)

REALM = "atlas-exporter"
MAX_DISCARDED_BODY = 65536  # a request body up to this size is read and dropped; a larger one closes
HEAD_TIMEOUT = 10.0  # seconds for a TLS handshake, for the first request, and for a request head
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
WRITE_TIMEOUT = 30.0  # seconds to send one response
RENDER_TIMEOUT = 60.0  # seconds a request waits for its page to be rendered, then 503
LINGER_SECONDS = 1.0  # after a final answer, unread input is drained this long before closing
RENDER_THREADS = 4
GZIP_LEVEL = 6

RenderMetrics = Callable[[], tuple[bytes, str]]
RenderStatus = Callable[[], str]


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


class RequestHandler:
    """Serves connections from the `ConnectionTable`; `settings` is replaced by a reload and read
    once per connection (TLS) and once per request (auth, headers)."""

    def __init__(self, table: ConnectionTable, settings: ServerSettings, telemetry_path: str,
                 render_metrics: RenderMetrics, render_status: RenderStatus) -> None:
        self.table = table
        self.settings = settings
        self.telemetry_path = telemetry_path
        self.render_metrics = render_metrics
        self.render_status = render_status
        self._pool = WorkerPool(RENDER_THREADS, "atlas-render")
        self._rendering: dict[tuple[Any, bool], asyncio.Future[tuple[bytes, str]]] = {}

    async def serve(self, conn: Connection) -> None:
        """Serve one connection until it closes, then drop it from the table."""
        settings = self.settings
        try:
            if settings.context is not None:
                try:
                    async with asyncio.timeout(HEAD_TIMEOUT):
                        await conn.handshake(settings.context, lambda: self.table.handshake_started(conn))
                except TimeoutError:
                    raise
                except (ssl.SSLError, OSError) as err:
                    log.debug("TLS handshake with %s failed: %s", conn.address(), err)
                    return
                finally:
                    self.table.handshake_ended(conn)
                tls = conn.sock
                if settings.allowed_sans and not (isinstance(tls, ssl.SSLSocket)
                                                  and peer_san_allowed(tls.getpeercert(), settings.allowed_sans)):
                    log.debug("closing TLS connection from %s: no client certificate SAN in client_allowed_sans",
                              conn.address())
                    return
            first = True
            while not conn.closed:
                self.table.set_idle(conn, True)
                keep = await self._one_request(conn, first)
                first = False
                if not keep:
                    break
        except TimeoutError:
            self.table.timeouts += 1
            log.debug("connection from %s closed: deadline passed", conn.address())
        except (Closed, asyncio.CancelledError):
            pass
        except (ConnectionError, ssl.SSLError, OSError) as err:
            log.debug("connection from %s closed: %s", conn.address(), err)
        except Exception:  # never lose the loop to one connection
            log.debug("error while serving %s", conn.address(), exc_info=True)
        finally:
            self.table.drop(conn)

    async def _read_head(self, conn: Connection, first: bool) -> bytes | None:
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
                while buf and buf[0] in b"\r\n":  # empty lines before a request are ignored
                    del buf[:1]
                end = HEAD_END.search(buf, 0, limit + 4)
                newline = buf.find(b"\n", 0, MAX_REQUEST_LINE + 2)
                if (newline < 0 and len(buf) > MAX_REQUEST_LINE + 1) or newline > MAX_REQUEST_LINE + 1:
                    raise BadRequest(414, "Request line too long.")
                if end is not None:
                    head = bytes(buf[:end.start()])
                    del buf[:end.end()]
                    if len(head) - newline > MAX_HEADER_BYTES:
                        raise BadRequest(431, "Request header fields too large.")
                    return head
                if len(buf) > limit:
                    raise BadRequest(431, "Request header fields too large.")
                data = await conn.recv()
                if not data:
                    return None
                buf += data

    async def _discard(self, conn: Connection, length: int) -> None:
        buf = conn.buffer
        async with asyncio.timeout_at(conn.deadline):
            while len(buf) < length:
                length -= len(buf)
                buf.clear()
                data = await conn.recv(min(65536, length))
                if not data:
                    raise Closed("end of input inside a request body")
                buf += data
            del buf[:length]

    async def _one_request(self, conn: Connection, first: bool) -> bool:
        """Read, answer and log one request; whether the connection stays open for another."""
        try:
            head = await self._read_head(conn, first)
            if head is None:
                return False
            request = parse_head(head)
        except BadRequest as err:
            self.table.set_idle(conn, False)
            await self._answer(conn, None, err.code, err.text + "\n", close=True, line=err.line)
            await self._linger(conn)
            return False
        self.table.set_idle(conn, False)
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
            if not DECIMAL.fullmatch(text):
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

    async def _linger(self, conn: Connection) -> None:
        """Half-close, then drop unread input for a moment, so that the answer is not lost to a reset."""
        try:
            if not isinstance(conn.sock, ssl.SSLSocket):
                conn.sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(LINGER_SECONDS):
                while await conn.recv():
                    pass
        except (TimeoutError, OSError, ssl.SSLError, Closed):
            pass

    async def _dispatch(self, conn: Connection, request: Request, close: bool) -> None:
        settings = self.settings
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

            def forget(_: object, key: tuple[Any, bool] = key) -> None:
                self._rendering.pop(key, None)

            shared.add_done_callback(forget)
        try:
            async with asyncio.timeout(RENDER_TIMEOUT):
                body, content_type = await asyncio.shield(shared)
        except TimeoutError:
            log.error("%s took longer than %g s; answering 503", what, RENDER_TIMEOUT)
            await self._answer(conn, request, 503, f"{what.capitalize()} took longer than {RENDER_TIMEOUT:g} s.\n",
                               close=close, extra=[("Retry-After", "10")])
            return
        except Exception as err:  # noqa: BLE001 - any failure becomes a 500, never a dead server
            reason = one_line(err)
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

    async def _answer(self, conn: Connection, request: Request | None, code: int, body: bytes | str, *,
                      close: bool, content_type: str = "text/plain; charset=utf-8",
                      extra: list[tuple[str, str]] | None = None, line: str = "") -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        head = [f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}\r\n"
                f"Server: atlas-exporter\r\nDate: {formatdate(usegmt=True)}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in extra or ())
        if close:
            head.append("Connection: close\r\n")
        out = "".join(head).encode("latin-1") + self.settings.headers + b"\r\n"
        if request is None or request.method != "HEAD":
            out += data
        log.debug('%s "%s" %s', conn.address(), request.line if request else line, code)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await conn.sendall(out)

