"""The server with a web config: TLS (certificates made here with openssl), client certificates,
basic auth, extra headers, and scrapes under concurrency."""

from __future__ import annotations

import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest
from test_server_support import (
    METRICS_BODY,
    OPENSSL,
    Certs,
    basic,
    client_context,
    make_certs,
    open_fds,
    raw_exchange,
    request,
    serving,
)

from atlas_exporter.web.webconfig import WebConfig
from atlas_exporter.web.websettings import load_web_config

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture(scope="module")
def slow_hash() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()


def _config(folder: Path, text: str) -> WebConfig:
    path = folder / "web.yml"
    path.write_text(text)
    return load_web_config(path)


def _tls(certs: Certs, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.server_key}\n{extra}"


def test_https_serves_and_plain_http_is_refused(certs, tmp_path):
    with serving(web_config=_config(tmp_path, _tls(certs))) as srv:
        port = srv.address[1]
        assert srv.scheme == "https"
        status, _, body = request(port, context=client_context(certs))
        assert (status, body) == (200, METRICS_BODY)
        answer = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout=15)
        assert METRICS_BODY not in answer
        with pytest.raises(ssl.SSLCertVerificationError):
            request(port, context=ssl.create_default_context())  # the system CAs do not know this certificate
        assert request(port, context=client_context(certs))[0] == 200


def test_min_version_tls13_refuses_a_tls12_client(certs, tmp_path):
    with serving(web_config=_config(tmp_path, _tls(certs, "  min_version: TLS13\n"))) as srv:
        old = client_context(certs)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            request(srv.address[1], context=old)
        new = client_context(certs)
        assert request(srv.address[1], context=new)[0] == 200


def test_require_and_verify_client_cert(certs, tmp_path):
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca_cert}\n"
    with serving(web_config=_config(tmp_path, _tls(certs, extra))) as srv:
        port = srv.address[1]
        good = client_context(certs, (certs.client_cert, certs.client_key))
        assert request(port, context=good)[0] == 200
        for context in (client_context(certs), client_context(certs, (certs.stranger_cert, certs.stranger_key))):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                request(port, context=context)
        assert request(port, context=good)[0] == 200


def test_verify_client_cert_if_given(certs, tmp_path):
    extra = f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {certs.ca_cert}\n"
    with serving(web_config=_config(tmp_path, _tls(certs, extra))) as srv:
        port = srv.address[1]
        assert request(port, context=client_context(certs))[0] == 200
        assert request(port, context=client_context(certs, (certs.client_cert, certs.client_key)))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(port, context=client_context(certs, (certs.stranger_cert, certs.stranger_key)))


@pytest.mark.parametrize(("sans", "allowed"), [("[scraper]", True), ("[127.0.0.1, other]", False)])
def test_client_allowed_sans(certs, tmp_path, sans, allowed):
    extra = (f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca_cert}\n"
             f"  client_allowed_sans: {sans}\n")
    with serving(web_config=_config(tmp_path, _tls(certs, extra))) as srv:
        context = client_context(certs, (certs.client_cert, certs.client_key))
        if allowed:
            assert request(srv.address[1], context=context)[0] == 200
        else:
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                request(srv.address[1], context=context)


def test_basic_auth_right_missing_wrong(tmp_path, slow_hash):
    config = _config(tmp_path, f"basic_auth_users:\n  alice: {slow_hash}\n")
    with serving(web_config=config) as srv:
        port = srv.address[1]
        status, _, body = request(port, headers={"Authorization": basic("alice", PASSWORD)})
        assert (status, body) == (200, METRICS_BODY)
        cases = [
            {},
            {"Authorization": basic("alice", "wrong")},
            {"Authorization": basic("bob", PASSWORD)},
            {"Authorization": "Basic not-base64!"},
            {"Authorization": "Bearer " + PASSWORD},
        ]
        for headers in cases:
            for path in ("/metrics", "/", "/nope"):
                status, answer, body = request(port, path, headers=headers)
                assert status == 401, (headers, path)
                assert answer["www-authenticate"] == 'Basic realm="atlas-exporter", charset="UTF-8"'
                assert METRICS_BODY not in body and b"status" not in body
        status, _, body = request(port, "/", headers={"Authorization": basic("alice", PASSWORD)})
        assert status == 200 and b"status" in body


def test_headers_from_the_web_config(tmp_path):
    config = _config(tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
                               "    Strict-Transport-Security: max-age=31536000\n")
    with serving(web_config=config) as srv:
        for path in ("/metrics", "/", "/nope"):
            _, headers, _ = request(srv.address[1], path)
            assert headers["x-frame-options"] == "deny"
            assert headers["strict-transport-security"] == "max-age=31536000"


def test_64_concurrent_scrapes_over_tls_with_basic_auth(certs, tmp_path, slow_hash):
    config = _config(tmp_path, _tls(certs) + f"basic_auth_users:\n  alice: {slow_hash}\n")
    barrier = threading.Barrier(64, timeout=60)
    context = client_context(certs)
    auth = {"Authorization": basic("alice", PASSWORD)}

    def scrape(_):
        barrier.wait()
        return request(port, context=context, headers=auth, timeout=60)

    with serving(web_config=config) as srv:
        port = srv.address[1]
        started = time.monotonic()
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(scrape, range(64)))
        elapsed = time.monotonic() - started
        assert srv.basic_auth is not None and srv.basic_auth.bcrypt_checks == 1
    assert [r[0] for r in results] == [200] * 64
    assert all(r[2] == METRICS_BODY for r in results)
    assert elapsed < 30


def test_fd_count_stays_flat_over_100_tls_scrapes(certs, tmp_path):
    hashed = bcrypt.hashpw(b"p", bcrypt.gensalt(4)).decode()
    config = _config(tmp_path, _tls(certs) + f"basic_auth_users:\n  a: {hashed}\n")
    context = client_context(certs)
    with serving(web_config=config) as srv:
        port = srv.address[1]
        for _ in range(5):
            assert request(port, context=context, headers={"Authorization": basic("a", "p")})[0] == 200
        before = open_fds()
        for i in range(100):
            status = request(port, context=context, headers={"Authorization": basic("a", "p" if i % 3 else "x")})[0]
            assert status == (200 if i % 3 else 401)
        for _ in range(5):  # failed handshakes must not leak either
            raw_exchange(port, b"GET / HTTP/1.1\r\n\r\n", timeout=15)
        deadline = time.monotonic() + 10
        while open_fds() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds() <= before
