"""The HTTP server with a stand-in render_metrics: routing, gzip, errors, limits, binding, shutdown."""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_server_support import METRICS_BODY, METRICS_TYPE, open_fds, poll, raw_exchange, request, serving

from atlas_exporter.web import handler as handler_module
from atlas_exporter.web.http_request import accepts_gzip
from atlas_exporter.web.listen import ServerError, parse_listen_address
from atlas_exporter.web.server import start_server


def test_metrics_status_and_head():
    with serving() as srv:
        port = srv.address[1]
        status, headers, body = request(port, "/metrics")
        assert (status, body, headers["content-type"]) == (200, METRICS_BODY, METRICS_TYPE)
        assert headers["content-length"] == str(len(METRICS_BODY))
        assert headers["server"] == "atlas-exporter"
        status, headers, body = request(port, "/")
        assert status == 200 and b"status" in body and headers["content-type"].startswith("text/html")
        status, headers, body = request(port, "/metrics?name[]=up")
        assert status == 200 and body == METRICS_BODY
        status, headers, body = request(port, "/metrics", method="HEAD")
        assert status == 200 and body == b"" and headers["content-length"] == str(len(METRICS_BODY))


def test_custom_telemetry_path():
    with serving(telemetry_path="/probe/metrics") as srv:
        assert request(srv.address[1], "/probe/metrics")[2] == METRICS_BODY
        assert request(srv.address[1], "/metrics")[0] == 404


def test_relative_telemetry_path_is_refused():
    with pytest.raises(ServerError, match="must start with '/'"):
        start_server("127.0.0.1:0", "metrics", lambda: (b"", "text/plain"), lambda: "")


@pytest.mark.parametrize("path", ["/nope", "/metrics/extra", "/favicon.ico", "/../etc/passwd"])
def test_unknown_paths_are_404(path):
    with serving() as srv:
        status, _, body = request(srv.address[1], path)
        assert status == 404 and METRICS_BODY not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
@pytest.mark.parametrize("path", ["/metrics", "/"])
def test_other_methods_are_405(method, path):
    calls = []
    with serving(render_metrics=lambda: calls.append(1) or (METRICS_BODY, METRICS_TYPE)) as srv:
        status, headers, _ = request(srv.address[1], path, method=method)
        assert status == 405 and headers["allow"] == "GET, HEAD"
    assert calls == []


def test_gzip_when_accepted():
    big = b"".join(b'atlas_app_processes{app="app%d"} 1\n' % i for i in range(2000))
    with serving(render_metrics=lambda: (big, METRICS_TYPE)) as srv:
        port = srv.address[1]
        status, headers, body = request(port, headers={"Accept-Encoding": "gzip, deflate"})
        assert status == 200 and headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
        assert int(headers["content-length"]) == len(body) < len(big) / 5
        assert gzip.decompress(body) == big
        status, headers, body = request(port, headers={"Accept-Encoding": "gzip;q=0, identity"})
        assert "content-encoding" not in headers and body == big
        status, headers, body = request(port)
        assert "content-encoding" not in headers and body == big


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), ("", False), ("identity", False), ("gzip", True), ("GZIP", True), ("deflate, gzip", True),
    ("gzip;q=0", False), ("gzip; q=0.0", False), ("gzip;q=0.5", True), ("*", True), ("br, x-gzip", True),
    ("gzip;q=bad", False),
])
def test_accepts_gzip(value, expected):
    assert accepts_gzip(value) is expected


def test_render_failure_is_a_500_and_the_server_survives(caplog):
    fail = threading.Event()
    fail.set()

    def render():
        if fail.is_set():
            raise RuntimeError("snapshot broke\nsecond line")
        return METRICS_BODY, METRICS_TYPE

    caplog.set_level(logging.DEBUG, logger="atlas_exporter.web.handler")
    with serving(render_metrics=render) as srv:
        status, headers, body = request(srv.address[1])
        assert status == 500
        text = body.decode()
        assert text.count("\n") == 1 and text.endswith("\n") and "RuntimeError: snapshot broke second line" in text
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "snapshot broke" in errors[0].getMessage()
        fail.clear()
        status, _, body = request(srv.address[1])
        assert (status, body) == (200, METRICS_BODY)


def test_status_failure_is_a_500():
    def status():
        raise KeyError("top")

    with serving(render_status=status) as srv:
        code, _, body = request(srv.address[1], "/")
        assert code == 500 and body.count(b"\n") == 1 and b"KeyError" in body
        assert request(srv.address[1])[0] == 200


def test_keep_alive_serves_several_requests_on_one_connection():
    with serving() as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.address[1], timeout=30)
        try:
            for _ in range(3):
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                assert response.status == 200 and response.read() == METRICS_BODY
            assert conn.sock is not None  # the same socket was reused
        finally:
            conn.close()


def test_64_concurrent_scrapes_all_succeed():
    barrier = threading.Barrier(64, timeout=60)

    def render():
        time.sleep(0.02)  # long enough for the requests to overlap
        return METRICS_BODY, METRICS_TYPE

    def scrape(_):
        barrier.wait()
        return request(port, timeout=60)

    with serving(render_metrics=render) as srv:
        port = srv.address[1]
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(scrape, range(64)))
    assert [r[0] for r in results] == [200] * 64
    assert all(r[2] == METRICS_BODY for r in results)


def test_fd_count_stays_flat_over_100_scrapes():
    with serving() as srv:
        port = srv.address[1]
        for _ in range(5):
            assert request(port)[0] == 200
        assert poll(lambda: open_fds() == open_fds())
        before = open_fds()
        for i in range(100):
            assert request(port, headers={"Accept-Encoding": "gzip"} if i % 2 else None)[0] == 200
        for _ in range(10):
            assert request(port, "/nope")[0] == 404
        assert poll(lambda: open_fds() <= before), f"fds grew from {before} to {open_fds()}"


def test_request_line_too_long_is_414():
    with serving() as srv:
        answer = raw_exchange(srv.address[1], b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 414 ")
        assert request(srv.address[1])[0] == 200


def test_headers_too_large_is_431():
    with serving() as srv:
        many = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 500) for i in range(60))
        answer = raw_exchange(srv.address[1], b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert request(srv.address[1])[0] == 200


def test_garbage_request_is_400_and_the_server_survives():
    with serving() as srv:
        answer = raw_exchange(srv.address[1], b"\x16\x03\x01\x02\x00 nonsense\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ") or answer == b""
        assert request(srv.address[1])[0] == 200


def test_slow_client_is_cut_off_and_does_not_block_others(monkeypatch):
    monkeypatch.setattr(handler_module, "HEAD_TIMEOUT", 1.0)
    with serving() as srv:
        port = srv.address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never finishes the head
            assert request(port)[0] == 200  # others are served meanwhile
            started = time.monotonic()
            for _ in range(3):  # keep dribbling bytes: the deadline is for the whole head
                time.sleep(0.3)
                try:
                    slow.sendall(b"X")
                except OSError:
                    break
            assert slow.recv(1024) == b""  # the server closed the connection
            assert time.monotonic() - started < 15
        with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
            started = time.monotonic()
            assert silent.recv(1024) == b""  # a connection that never sends is closed too
            assert time.monotonic() - started < 15


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_at_the_cap_the_oldest_idle_connection_makes_room():
    with serving() as srv:
        srv.connections.cap = 3
        port = srv.address[1]
        idle = []
        try:
            for count in (1, 2, 3):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
                assert poll(lambda count=count: srv.open_connections == count)
            newest = socket.create_connection(("127.0.0.1", port), timeout=30)
            idle.append(newest)
            assert _closed_by_server(idle[0], 10)  # the oldest idle one was closed, not the new one
            assert not _closed_by_server(idle[1], 0.3)
            assert request(port)[0] == 200  # and a scrape at the cap closes the next oldest
            assert _closed_by_server(idle[1], 10)
            assert srv.evicted_connections == 2 and srv.rejected_connections == 0
            newest.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            newest.settimeout(10)
            assert newest.recv(65536).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in idle:
                sock.close()
        assert poll(lambda: srv.open_connections == 0)


def test_requests_are_logged_at_debug_level_not_on_stderr(caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="atlas_exporter.web.handler")
    with serving() as srv:
        request(srv.address[1], "/metrics")
        request(srv.address[1], "/nope")
        raw_exchange(srv.address[1], b"BROKEN\r\n\r\n")
    lines = [r for r in caplog.records if '"GET /nope HTTP/1.1" 404' in r.getMessage()]
    assert lines and all(r.levelno == logging.DEBUG for r in lines)
    assert capfd.readouterr().err == ""


def test_port_already_in_use():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ServerError) as err:
            start_server(f"127.0.0.1:{port}", "/metrics", lambda: (b"", "text/plain"), lambda: "")
        assert str(err.value) == f"listen tcp 127.0.0.1:{port}: address already in use"
    with serving() as first:
        port = first.address[1]
        with pytest.raises(ServerError, match="address already in use"):
            start_server(f"127.0.0.1:{port}", "/metrics", lambda: (b"", "text/plain"), lambda: "")
        assert request(port)[0] == 200


@pytest.mark.parametrize(("address", "message"), [
    ("9858", "missing port in address"),
    ("127.0.0.1", "missing port in address"),
    ("127.0.0.1:http", "invalid port"),
    ("127.0.0.1:70000", "invalid port"),
    ("127.0.0.1:-1", "invalid port"),
    ("127.0.0.1:\u00b2", "invalid port"),
    ("::1:9858", "too many colons"),
    ("[::1]9858", "missing port in address"),
    ("no-such-host.invalid:9858", "lookup no-such-host.invalid"),
    ("192.0.2.77:0", "cannot assign requested address"),
])
def test_bad_listen_addresses(address, message):
    with pytest.raises(ServerError) as err:
        start_server(address, "/metrics", lambda: (b"", "text/plain"), lambda: "")
    text = str(err.value)
    assert text.startswith("listen tcp") and message in text and "\n" not in text


@pytest.mark.parametrize(("address", "expected"), [
    (":9858", ("", 9858)), ("[::]:9858", ("::", 9858)), ("[::1]:0", ("::1", 0)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("localhost:9858", ("localhost", 9858)),
])
def test_parse_listen_address(address, expected):
    assert parse_listen_address(address) == expected


def test_ipv6_loopback():
    with serving(listen="[::1]:0") as srv:
        host, port = srv.address
        assert host == "::1"
        assert request(port, host="::1")[0] == 200
        with pytest.raises(OSError):
            request(port, host="127.0.0.1", timeout=5)


@pytest.mark.parametrize("listen", [":0", "[::]:0"])
def test_all_interfaces_serve_ipv4_and_ipv6(listen):
    with serving(listen=listen) as srv:
        port = srv.address[1]
        assert request(port, host="127.0.0.1")[0] == 200
        assert request(port, host="::1")[0] == 200


def test_shutdown_before_serving_and_twice():
    srv = start_server("127.0.0.1:0", "/metrics", lambda: (b"", "text/plain"), lambda: "")
    port = srv.address[1]
    srv.shutdown()
    srv.shutdown()
    srv.serve_forever()  # returns at once
    with pytest.raises(OSError):
        request(port, timeout=5)


def test_shutdown_from_a_signal_handler_in_the_serving_thread():
    srv = start_server("127.0.0.1:0", "/metrics", lambda: (b"", "text/plain"), lambda: "")
    previous = signal.signal(signal.SIGUSR1, lambda *_: srv.shutdown())
    sender = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        sender.start()
        started = time.monotonic()
        srv.serve_forever()  # in the main thread, where the handler runs
        assert time.monotonic() - started < 10
    finally:
        sender.cancel()
        signal.signal(signal.SIGUSR1, previous)
    with pytest.raises(OSError):
        request(srv.address[1], timeout=5)


def test_host_name_listens_on_its_ipv4_address():
    with serving(listen="localhost:0") as srv:
        host, port = srv.address
        assert host == "127.0.0.1"
        assert request(port)[0] == 200
