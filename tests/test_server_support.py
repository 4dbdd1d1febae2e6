"""Helpers for the server, web config and hardening tests: certificates made with openssl, a served
stand-in exporter, and small HTTP clients. No tests here."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from atlas_exporter.web.server import RunningServer, start_server
from atlas_exporter.web.webconfig import WebConfig

OPENSSL = shutil.which("openssl")
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
METRICS_BODY = b"# HELP up Whether the stand-in is up.\n# TYPE up gauge\nup 1\n"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Certs:
    """PEM files: a server certificate for localhost/127.0.0.1, a CA, a client certificate signed by
    the CA (SAN DNS:scraper), and a client certificate signed by a different CA."""

    folder: Path
    server_cert: Path
    server_key: Path
    ca_cert: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL, "openssl is needed for the TLS tests"
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _self_signed(folder: Path, name: str, subject: str, san: str | None = None) -> None:
    extra = ["-addext", f"subjectAltName={san}"] if san else []
    _openssl("req", "-x509", *EC, "-subj", subject, *extra, "-days", "2", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", cwd=folder)


def _signed(folder: Path, name: str, ca: str, subject: str, san: str) -> None:
    _openssl("req", "-new", *EC, "-subj", subject, "-addext", f"subjectAltName={san}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-copy_extensions", "copy", "-out", f"{name}.crt", cwd=folder)


def make_certs(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    _self_signed(folder, "server", "/CN=localhost", "DNS:localhost,IP:127.0.0.1")
    _self_signed(folder, "ca", "/CN=atlas test CA")
    _self_signed(folder, "otherca", "/CN=another CA")
    _signed(folder, "client", "ca", "/CN=scraper", "DNS:scraper")
    _signed(folder, "stranger", "otherca", "/CN=stranger", "DNS:scraper")
    return Certs(folder, folder / "server.crt", folder / "server.key", folder / "ca.crt", folder / "client.crt",
                 folder / "client.key", folder / "stranger.crt", folder / "stranger.key")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextmanager
def serving(render_metrics: Callable[[], tuple[bytes, str]] | None = None,
            render_status: Callable[[], str] | None = None, web_config: WebConfig | None = None,
            listen: str = "127.0.0.1:0", telemetry_path: str = "/metrics") -> Iterator[RunningServer]:
    """A started server in a thread, shut down and joined on exit."""
    server = start_server(listen, telemetry_path, render_metrics or (lambda: (METRICS_BODY, METRICS_TYPE)),
                          render_status or (lambda: "<html><body>status</body></html>"), web_config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        assert not thread.is_alive(), "serve_forever did not return after shutdown()"


def client_context(certs: Certs | None, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.server_cert) if certs else None)
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    return context


def request(port: int, path: str = "/metrics", method: str = "GET", headers: dict[str, str] | None = None,
            context: ssl.SSLContext | None = None, host: str = "127.0.0.1",
            timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers with lower-case names, body)."""
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        # The server certificate names IP:127.0.0.1 too, so hostname checking stays on.
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout); returns what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def poll(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Call `predicate` every 50 ms until it is true or `timeout` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
