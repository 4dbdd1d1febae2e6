"""Loading and validating --web.config.file, and the basic auth checker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import bcrypt
import pytest
from test_server_support import OPENSSL, Certs, basic, make_certs

from atlas_exporter.web.basicauth import BasicAuth, parse_basic_authorization
from atlas_exporter.web.tls import build_ssl_context, peer_san_allowed
from atlas_exporter.web.webconfig import WebConfigError
from atlas_exporter.web.websettings import load_web_config

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("webconfig-certs"))


def _write(folder: Path, text: str, name: str = "web.yml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_full_config_loads(certs, tmp_path):
    path = _write(certs.folder, f"""
tls_server_config:
  cert_file: server.crt
  key_file: {certs.server_key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS13
  client_allowed_sans: [scraper]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Content-Security-Policy: ""
basic_auth_users:
  alice: {HASH}
  bob: $2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG
""", "full.yml")
    config = load_web_config(path)
    assert config.source == str(path)
    assert config.tls is not None
    assert config.tls.cert_file == str(certs.folder / "server.crt")  # relative to the file's folder
    assert config.tls.client_ca_file == str(certs.folder / "ca.crt")
    assert (config.tls.client_auth_type, config.tls.min_version, config.tls.max_version) == (
        "RequireAndVerifyClientCert", "TLS13", "TLS13")
    assert config.tls.client_allowed_sans == ("scraper",)
    assert config.headers == (("X-Frame-Options", "deny"), ("X-Content-Type-Options", "nosniff"))
    assert set(config.basic_auth_users) == {"alice", "bob"}


@pytest.mark.parametrize("text", ["", "{}\n", "tls_server_config:\n", "basic_auth_users: {}\n"])
def test_empty_configs_mean_plain_http_without_auth(tmp_path, text):
    config = load_web_config(_write(tmp_path, text))
    assert config.tls is None and config.basic_auth_users == {} and config.headers == ()


# (file content, key named in the message, problem named in the message)
BAD_CONFIGS = [
    ("tls_server_config:\n  cert_file: a: b\n", "line 2, column 15", "YAML syntax error: mapping values"),
    ("- just\n- a list\n", "(top level)", "must be a mapping"),
    ("basic_auth_user:\n  a: b\n", "basic_auth_user", "did you mean 'basic_auth_users'"),
    ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  client_auth: X\n",
     "tls_server_config.client_auth", "unknown key"),
    ("tls_server_config:\n  key_file: server.key\n", "tls_server_config.cert_file", "missing"),
    ("tls_server_config:\n  cert_file: server.crt\n", "tls_server_config.key_file", "missing"),
    ("tls_server_config:\n  cert_file: 42\n  key_file: server.key\n", "tls_server_config.cert_file",
     "must be a non-empty string, got an integer"),
    ("tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n", "tls_server_config.cert_file",
     "cannot read"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Verify\n",
     "tls_server_config.client_auth_type", "must be one of NoClientCert"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAnyClientCert\n", "tls_server_config.client_auth_type", "not supported"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file", "missing"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n",
     "tls_server_config.client_ca_file", "no client certificate is verified"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS1.2\n",
     "tls_server_config.min_version", "must be TLS12 or TLS13"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n",
     "tls_server_config.min_version", "insecure"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n"
     "  max_version: TLS12\n", "tls_server_config.min_version", "above max_version"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_allowed_sans: scraper\n",
     "tls_server_config.client_allowed_sans", "must be a list"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_allowed_sans: [a]\n",
     "tls_server_config.client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert"),
    ("tls_server_config:\n  cert: '-----BEGIN CERTIFICATE-----'\n", "tls_server_config.cert", "use cert_file"),
    ("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "tls_server_config.cipher_suites",
     "not supported"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  prefer_server_cipher_suites: yes2\n",
     "tls_server_config.prefer_server_cipher_suites", "must be true or false"),
    ("rate_limit:\n  interval: 1s\n", "rate_limit", "not supported"),
    ("http_server_config:\n  headers:\n    Server: evil\n", "http_server_config.headers.Server",
     "cannot be configured"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "http_server_config.headers.X-Frame-Options",
     "must be one of deny, sameorigin"),
    ("http_server_config:\n  headers:\n    X-XSS-Protection: \"1\\r\\nSet-Cookie: a=b\"\n",
     "http_server_config.headers.X-XSS-Protection", "single-line string"),
    ("http_server_config:\n  headers:\n    Content-Security-Policy: \"default-src \u2019self\u2019\"\n",
     "http_server_config.headers.Content-Security-Policy", "U+2019) at position 13 cannot be sent in an HTTP header"),
    ("http_server_config:\n  headers:\n    Strict-Transport-Security: \"max-age=1\\x01\"\n",
     "http_server_config.headers.Strict-Transport-Security", "U+0001"),
    ("http_server_config:\n  http2: 1\n", "http_server_config.http2", "must be true or false, got an integer"),
    ("http_server_config:\n  header: {}\n", "http_server_config.header", "did you mean 'headers'"),
    ("basic_auth_users: [alice]\n", "basic_auth_users", "must be a mapping"),
    ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice", "not a bcrypt hash"),
    ("basic_auth_users:\n  alice: $2b$10$short\n", "basic_auth_users.alice", "not a bcrypt hash"),
    (f"basic_auth_users:\n  'al:ice': {HASH}\n", "basic_auth_users.al:ice", "must not contain ':'"),
    ("basic_auth_users:\n  alice:\n", "basic_auth_users.alice", "not a bcrypt hash"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD_CONFIGS, ids=[b[1] + ":" + b[2] for b in BAD_CONFIGS])
def test_bad_configs_get_a_one_line_error(certs, text, key, problem):
    path = _write(certs.folder, text, "bad.yml")
    with pytest.raises(WebConfigError) as err:
        load_web_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert key in message and problem in message, message
    assert "hunter2" not in message  # a secret is never echoed


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(WebConfigError, match=r"^/nonexistent/web\.yml: file not found$"):
        load_web_config("/nonexistent/web.yml")
    with pytest.raises(WebConfigError, match="is a directory"):
        load_web_config(tmp_path)


def test_unreadable_file_as_nobody(tmp_path, nobody_python):
    path = _write(tmp_path, "{}\n")
    path.chmod(0o000)
    prefix, env = nobody_python
    result = subprocess.run(
        [*prefix, "-c",
         "from atlas_exporter.web.websettings import load_web_config as l\n"
         "from atlas_exporter.web.webconfig import WebConfigError as E\n"
         f"try: l({str(path)!r})\nexcept E as e: print(e)"],
        capture_output=True, text=True, timeout=60, cwd="/", env=env)
    assert result.stdout.strip() == f"{path}: cannot read: Permission denied"


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
def test_key_problems(certs, tmp_path):
    enc = tmp_path / "enc.key"
    subprocess.run([OPENSSL, "pkey", "-in", str(certs.server_key), "-aes256", "-passout", "pass:pw", "-out",
                    str(enc)], check=True, capture_output=True, timeout=60)
    garbage = _write(tmp_path, "not a pem\n", "garbage.pem")
    cases = [
        (certs.server_cert, enc, "tls_server_config.key_file", "encrypted"),
        (certs.server_cert, certs.client_key, "tls_server_config.cert_file", "cannot use"),  # key mismatch
        (garbage, certs.server_key, "tls_server_config.cert_file", "cannot use"),
    ]
    for cert, key, name, problem in cases:
        path = _write(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
        with pytest.raises(WebConfigError) as err:
            load_web_config(path)
        message = str(err.value)
        assert "\n" not in message and name in message and problem in message, message
    path = _write(tmp_path, f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.server_key}\n"
                            f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {garbage}\n")
    with pytest.raises(WebConfigError, match="tls_server_config.client_ca_file: cannot load"):
        load_web_config(path)


def test_ssl_context_settings(certs):
    import ssl

    path = _write(certs.folder, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                                "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n", "ctx.yml")
    tls = load_web_config(path).tls
    assert tls is not None
    context = build_ssl_context(tls)
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION


def test_bcrypt_is_imported_only_for_basic_auth(certs, tmp_path):
    plain = _write(tmp_path, "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n", "plain.yml")
    users = _write(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n", "users.yml")
    code = ("import sys\nfrom atlas_exporter.web.websettings import load_web_config\n"
            "load_web_config(sys.argv[1])\nprint('bcrypt' in sys.modules)")
    root = Path(__file__).parent.parent
    for path, expected in ((plain, "False"), (users, "True")):
        result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                timeout=60, cwd=root)
        assert result.stdout.strip() == expected, result.stderr


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("Bearer abc", None), ("Basic", None), ("Basic !!!", None),
    ("Basic " + "YWxpY2U=", None),  # "alice" without a colon
    (basic("alice", "s3cret"), ("alice", b"s3cret")), (basic("alice", "a:b"), ("alice", b"a:b")),
    (basic("", ""), ("", b"")), ("basic " + basic("u", "p")[6:], ("u", b"p")),
])
def test_parse_basic_authorization(header, expected):
    assert parse_basic_authorization(header) == expected


class _CountingCheck:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self.lock:
            self.calls += 1
        return bcrypt.checkpw(password, hashed)


def test_basic_auth_answers_and_caches_only_successes():
    check = _CountingCheck()
    auth = BasicAuth({"alice": HASH}, checkpw=check)
    assert auth.check(basic("alice", "s3cret")) is True
    assert auth.check(basic("alice", "s3cret")) is True
    assert check.calls == 1  # the second check came from the cache
    assert auth.check(basic("alice", "wrong")) is False
    assert auth.check(basic("alice", "wrong")) is False
    assert check.calls == 3  # wrong passwords always pay for bcrypt
    assert auth.check(basic("mallory", "s3cret")) is False
    assert check.calls == 4  # unknown users pay for a dummy bcrypt check too
    assert auth.check(None) is False and auth.check("Basic xx") is False
    assert check.calls == 4
    assert auth.check(basic("alice", "s3cret")) is True and check.calls == 4


def test_basic_auth_with_the_real_bcrypt_and_a_2y_hash():
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    auth = BasicAuth({"u": hashed})
    assert auth.check(basic("u", "pw")) and not auth.check(basic("u", "pW"))
    assert auth.bcrypt_checks == 2


def test_64_concurrent_first_checks_run_bcrypt_once():
    check = _CountingCheck()
    slow_hash = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()
    auth = BasicAuth({"alice": slow_hash}, checkpw=check)
    barrier = threading.Barrier(64, timeout=60)
    results: list[bool] = []

    def scrape() -> None:
        barrier.wait()
        results.append(auth.check(basic("alice", "s3cret")))

    threads = [threading.Thread(target=scrape) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [True] * 64
    assert check.calls == 1


@pytest.mark.parametrize(("cert", "allowed", "expected"), [
    ({"subjectAltName": (("DNS", "scraper"),)}, ("scraper",), True),
    ({"subjectAltName": (("DNS", "scraper"), ("IP Address", "10.0.0.1"))}, ("10.0.0.1",), True),
    ({"subjectAltName": (("DNS", "scraper"),)}, ("other",), False),
    ({}, ("scraper",), False),
    (None, ("scraper",), False),
    (None, (), True),
])
def test_peer_san_allowed(cert, allowed, expected):
    assert peer_san_allowed(cert, allowed) is expected


def test_the_documented_example_is_valid():
    import yaml

    from atlas_exporter.web.webconfig import parse_web_config

    folder = Path(__file__).parent / "fixtures" / "webconfig"
    example = (folder / "web-config.example.yml").read_text()
    docs = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    assert example in docs  # the fixture is the example in docs/security.md
    config = parse_web_config(yaml.safe_load(example), "web-config.example.yml", folder)
    assert config.tls is not None and config.tls.client_allowed_sans == ("prometheus-1.example.net",
                                                                          "prometheus-2.example.net")
    assert list(config.basic_auth_users) == ["prometheus"]
    assert dict(config.headers)["X-Frame-Options"] == "deny"


def test_bcrypt_workers_end_when_idle(monkeypatch):
    from atlas_exporter.web import basicauth

    monkeypatch.setattr(basicauth._FairQueue, "IDLE_EXIT", 0.2)
    auth = BasicAuth({"u": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()})
    assert auth.check(basic("u", "x"), "a") is False and auth.check(basic("u", "pw"), "b") is True
    workers = list(auth._queue._threads)
    assert workers and all(w.name.startswith("atlas-bcrypt-") for w in workers)
    deadline = time.monotonic() + 10
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(w.is_alive() for w in workers) and auth._queue._threads == []
    assert auth.check(basic("u", "y"), "a") is False  # workers start again on demand
