"""The `--web.config.file`: TLS and basic auth in the Prometheus exporter-toolkit format.

`load_web_config(path)` returns a validated `WebConfig`, or raises `WebConfigError` with one line
that names the file, the key and the problem, for example:

    web.yml: tls_server_config.client_auth_type: must be one of NoClientCert, ...; got 'Verify'
    web.yml: basic_auth_users.alice: not a bcrypt hash (expected $2a$, $2b$ or $2y$ and 60 characters)

`build_ssl_context(tls)` turns the TLS part into a server `ssl.SSLContext`; `BasicAuth` checks an
`Authorization` header against the bcrypt hashes, caching successful checks so that many concurrent
scrapes cost one bcrypt computation, and running the others in a small pool that serves clients
without recent failures first. `bcrypt` is imported only when `basic_auth_users` is set.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hmac
import os
import re
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas_exporter.config import read_regular_file, read_yaml_file

MAX_TLS_FILE_BYTES = 4 * 1024 * 1024  # certificate chains and CA bundles


class WebConfigError(Exception):
    """A web config file that cannot be used; the message is one line: file, key and problem."""


CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Header name -> allowed values (lower case), or None for any single-line string.
ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS_KEYS = {
    "cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
    "client_allowed_sans", "prefer_server_cipher_suites",
}
_HTTP_KEYS = {"headers", "http2"}
# Keys of the exporter-toolkit format that this exporter does not implement, with the reason.
_UNSUPPORTED = {
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "inline CA certificates are not supported; use client_ca_file",
    "tls_server_config.cipher_suites": "not supported (Go cipher suite names); OpenSSL's defaults are used",
    "tls_server_config.curve_preferences": "not supported; OpenSSL's default curves are used",
    "rate_limit": "not supported by atlas-exporter",
}
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
BCRYPT_WORKERS = 2  # threads that run bcrypt: a flood of wrong passwords uses at most this many cores
BCRYPT_PER_CLIENT = 4  # checks one client address may have waiting; more are answered 429
BCRYPT_QUEUE = 256  # checks waiting in all
BCRYPT_MAX_PASSWORD = 72  # bytes of a password that bcrypt uses; the rest is ignored, as in Go's bcrypt
# Only used when there are no users at all (BasicAuth({})): unknown users are checked against the
# costliest of the users' own hashes.
_DUMMY_HASH = "$2b$10$JhzeX2OpGCRXu2TLALvDqe9PVcr1sTw/yTrXMCYvR/qsS2URmex9e"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """`tls_server_config`; file paths are absolute (relative ones are taken from the file's folder)."""

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    client_allowed_sans: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A validated web config: TLS (or None for plain HTTP), extra response headers, basic auth users."""

    source: str = "<web config>"
    tls: TlsConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)  # user -> bcrypt hash


class _Check:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> WebConfigError:
        return WebConfigError(f"{self.source}: {key}: {problem}")

    def mapping(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path or "(top level)", f"must be a mapping, got {_kind(value)}")
        for key in value:
            where = f"{path}.{key}" if path else str(key)
            if where in _UNSUPPORTED:
                raise self.fail(where, _UNSUPPORTED[where])
            if not isinstance(key, str) or key not in allowed:
                hint = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
                raise self.fail(where, "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        return value

    def string(self, raw: dict[str, Any], key: str, path: str) -> str | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{path}.{key}", f"must be a non-empty string, got {_kind(value)}")
        return value

    def boolean(self, raw: dict[str, Any], key: str, path: str, default: bool) -> bool:
        if key not in raw:
            return default
        if not isinstance(raw[key], bool):
            raise self.fail(f"{path}.{key}", f"must be true or false, got {_kind(raw[key])}")
        return raw[key]


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _tls(check: _Check, value: Any, base: Path) -> TlsConfig | None:
    path = "tls_server_config"
    raw = check.mapping(value, path, _TLS_KEYS)
    if value is None:
        return None
    files: dict[str, str | None] = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        text = check.string(raw, key, path)
        files[key] = None if text is None else str(base / os.path.expanduser(text))
    for key in ("cert_file", "key_file"):
        if files[key] is None:
            raise check.fail(f"{path}.{key}", "missing (TLS needs both cert_file and key_file)")
    auth = check.string(raw, "client_auth_type", path) or "NoClientCert"
    if auth not in CLIENT_AUTH_TYPES:
        raise check.fail(f"{path}.client_auth_type",
                         f"must be one of {', '.join(CLIENT_AUTH_TYPES)}; got {auth!r}")
    if auth == "RequireAnyClientCert":
        raise check.fail(f"{path}.client_auth_type", "RequireAnyClientCert is not supported (Python's ssl module "
                         "verifies every client certificate it requires); use RequireAndVerifyClientCert "
                         "with client_ca_file")
    if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and files["client_ca_file"] is None:
        raise check.fail(f"{path}.client_ca_file", f"missing (client_auth_type {auth} needs the CA that signs "
                         "client certificates)")
    if files["client_ca_file"] is not None and auth in ("NoClientCert", "RequestClientCert"):
        raise check.fail(f"{path}.client_ca_file", f"set, but client_auth_type is {auth}, so no client "
                         "certificate is verified (use RequireAndVerifyClientCert)")
    versions: dict[str, str] = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = check.string(raw, key, path) or default
        if version in ("TLS10", "TLS11"):
            raise check.fail(f"{path}.{key}", f"{version} is not supported (insecure); use TLS12 or TLS13")
        if version not in TLS_VERSIONS:
            raise check.fail(f"{path}.{key}", f"must be TLS12 or TLS13; got {version!r}")
        versions[key] = version
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise check.fail(f"{path}.min_version",
                         f"{versions['min_version']} is above max_version {versions['max_version']}")
    sans = raw.get("client_allowed_sans")
    if sans is not None:
        if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
            raise check.fail(f"{path}.client_allowed_sans", "must be a list of non-empty strings")
        if sans and auth != "RequireAndVerifyClientCert":
            raise check.fail(f"{path}.client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert")
    return TlsConfig(
        cert_file=str(files["cert_file"]),
        key_file=str(files["key_file"]),
        client_auth_type=auth,
        client_ca_file=files["client_ca_file"],
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        client_allowed_sans=tuple(sans or ()),
        prefer_server_cipher_suites=check.boolean(raw, "prefer_server_cipher_suites", path, True),
    )


def _headers(check: _Check, value: Any) -> tuple[tuple[str, str], ...]:
    raw = check.mapping(value, "http_server_config", _HTTP_KEYS)
    check.boolean(raw, "http2", "http_server_config", True)  # HTTP/1.1 is always served; accepted for parity
    headers = raw.get("headers")
    if headers is None:
        return ()
    path = "http_server_config.headers"
    if not isinstance(headers, dict):
        raise check.fail(path, f"must be a mapping, got {_kind(headers)}")
    out: list[tuple[str, str]] = []
    for name, text in headers.items():
        if name not in ALLOWED_HEADERS:
            hint = difflib.get_close_matches(str(name), sorted(ALLOWED_HEADERS), n=1, cutoff=0.6)
            raise check.fail(f"{path}.{name}", "this header cannot be configured (allowed: "
                             + ", ".join(ALLOWED_HEADERS) + ")" + (f"; did you mean '{hint[0]}'?" if hint else ""))
        if text is None or text == "":
            continue  # blank means unset, as in the exporter-toolkit
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise check.fail(f"{path}.{name}", f"must be a single-line string, got {_kind(text)}")
        bad = next((c for c in text if ord(c) > 255 or (ord(c) < 32 and c != "\t") or ord(c) == 127), None)
        if bad is not None:
            where = text.index(bad)
            raise check.fail(f"{path}.{name}", f"character {bad!r} (U+{ord(bad):04X}) at position {where + 1} "
                             "cannot be sent in an HTTP header (only Latin-1 text, no control characters; "
                             "straight quotes instead of curly ones)")
        allowed = ALLOWED_HEADERS[name]
        if allowed is not None and text.lower() not in allowed:
            raise check.fail(f"{path}.{name}", f"must be one of {', '.join(allowed)}; got {text!r}")
        out.append((name, text))
    return tuple(out)


def _users(check: _Check, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise check.fail("basic_auth_users", f"must be a mapping of user name to bcrypt hash, got {_kind(value)}")
    users: dict[str, str] = {}
    for user, hashed in value.items():
        if not isinstance(user, str) or not user:
            raise check.fail(f"basic_auth_users.{user}", "user name must be a non-empty string")
        if ":" in user:
            raise check.fail(f"basic_auth_users.{user}", "user name must not contain ':' (basic auth cannot send it)")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            raise check.fail(f"basic_auth_users.{user}",
                             "not a bcrypt hash (expected $2a$, $2b$ or $2y$, a cost of 04-31 and 60 characters)")
        users[user] = hashed
    return users


def parse_web_config(raw: Any, source: str = "<web config>", base_dir: Path | None = None) -> WebConfig:
    """Validate a parsed YAML tree; relative file names are taken from `base_dir`. No file is read."""
    check = _Check(source)
    top = check.mapping(raw, "", _TOP_KEYS)
    base = base_dir if base_dir is not None else Path.cwd()
    return WebConfig(
        source=source,
        tls=_tls(check, top.get("tls_server_config"), base) if "tls_server_config" in top else None,
        headers=_headers(check, top.get("http_server_config")),
        basic_auth_users=_users(check, top.get("basic_auth_users")),
    )


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read, validate and try out a web config file: its certificates are loaded once here.

    bcrypt must be importable when `basic_auth_users` is set.
    """
    name = str(path)
    raw = read_yaml_file(path, WebConfigError)
    config = parse_web_config(raw, name, Path(path).resolve().parent)
    if config.tls is not None:
        build_ssl_context(config.tls, name)
    if config.basic_auth_users:
        _import_bcrypt(name)
    return config


def _import_bcrypt(source: str) -> Any:
    try:
        import bcrypt
    except ImportError:
        raise WebConfigError(f"{source}: basic_auth_users: needs the Python package 'bcrypt' "
                             "(pip install 'atlas-exporter[auth]')") from None
    return bcrypt


def _refuse_password() -> bytes:
    raise WebConfigError("the key file is encrypted with a passphrase; use an unencrypted key readable only "
                         "by the exporter's user")


def build_ssl_context(tls: TlsConfig, source: str = "<web config>") -> ssl.SSLContext:
    """A server `SSLContext` for `tls`; unreadable or mismatched files raise `WebConfigError`."""
    path = "tls_server_config"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    context.options |= ssl.OP_NO_COMPRESSION
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    for key in ("cert_file", "key_file"):
        _readable(getattr(tls, key), source, f"{path}.{key}")
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_password)
    except WebConfigError as err:
        raise WebConfigError(f"{source}: {path}.key_file: {err}") from None
    except (ssl.SSLError, OSError, ValueError) as err:
        raise WebConfigError(f"{source}: {path}.cert_file: cannot use {tls.cert_file} with {tls.key_file}: "
                             f"{_one_line(err)}") from None
    if tls.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        assert tls.client_ca_file is not None
        _readable(tls.client_ca_file, source, f"{path}.client_ca_file")
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError, ValueError) as err:
            raise WebConfigError(f"{source}: {path}.client_ca_file: cannot load {tls.client_ca_file}: "
                                 f"{_one_line(err)}") from None
        context.verify_mode = (ssl.CERT_REQUIRED if tls.client_auth_type == "RequireAndVerifyClientCert"
                               else ssl.CERT_OPTIONAL)
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _readable(name: str, source: str, key: str) -> None:
    """A certificate, key or CA file must be a readable regular file of at most `MAX_TLS_FILE_BYTES`."""
    try:
        read_regular_file(name, MAX_TLS_FILE_BYTES)  # a FIFO or a device is refused, never waited on
    except OSError as err:
        raise WebConfigError(f"{source}: {key}: cannot read {name}: {err.strerror or err}") from None


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def peer_san_allowed(peer_cert: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether a verified peer certificate (`SSLSocket.getpeercert()`) has a SAN in `allowed`."""
    if not allowed:
        return True
    if not peer_cert:
        return False
    wanted = set(allowed)
    return any(value in wanted for _kind_, value in peer_cert.get("subjectAltName", ()))


class _FairQueue:
    """bcrypt checks run by a few daemon threads, clients with the fewest recent failures first.

    A client is an IPv4 address or an IPv6 /64. Each failed check adds one to its client's failure
    score, which halves every `FAILURE_HALF_LIFE` seconds. The next check to run is the oldest one
    of the waiting client with the lowest score, so a real login (no failures) runs as soon as a
    worker is free, however many wrong passwords are waiting; equal scores take turns. Identical
    credentials already waiting share one check. A client with `per_client` checks waiting, or
    `limit` checks waiting in all, is turned away (None).
    """

    FAILURE_HALF_LIFE = 60.0
    IDLE_EXIT = 30.0  # seconds a worker waits for work before it ends
    MAX_CLIENTS = 4096  # failure scores remembered; the oldest are forgotten beyond

    def __init__(self, workers: int, per_client: int, limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.workers = workers
        self.per_client = per_client
        self.limit = limit
        self._clock = clock
        self._cond = threading.Condition()
        self._queues: dict[str, deque[tuple[bytes, Callable[[], bool], Future[bool]]]] = {}
        self._inflight: dict[bytes, Future[bool]] = {}
        self._failures: dict[str, tuple[float, float]] = {}  # client -> (score, when)
        self._waiting = 0
        self._threads: list[threading.Thread] = []
        self.turned_away = 0

    def submit(self, key: bytes, client: str, job: Callable[[], bool]) -> Future[bool] | None:
        with self._cond:
            running = self._inflight.get(key)
            if running is not None:
                return running
            waiting = self._queues.get(client)
            if self._waiting >= self.limit or (waiting is not None and len(waiting) >= self.per_client):
                self.turned_away += 1
                return None
            future: Future[bool] = Future()
            self._inflight[key] = future
            if waiting is None:
                waiting = self._queues[client] = deque()
            waiting.append((key, job, future))
            self._waiting += 1
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._run, name=f"atlas-bcrypt-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
            return future

    def _score(self, client: str, now: float) -> float:
        score, when = self._failures.get(client, (0.0, now))
        return score * 0.5 ** ((now - when) / self.FAILURE_HALF_LIFE)

    def _failed(self, client: str) -> None:
        now = self._clock()
        score = self._score(client, now) + 1.0
        self._failures.pop(client, None)
        self._failures[client] = (score, now)
        while len(self._failures) > self.MAX_CLIENTS:
            del self._failures[next(iter(self._failures))]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queues:
                    if not self._cond.wait(self.IDLE_EXIT) and not self._queues:
                        self._threads.remove(threading.current_thread())  # started again on demand
                        return
                now = self._clock()
                client = min(self._queues, key=lambda c: self._score(c, now))  # ties: the longest waiting
                waiting = self._queues.pop(client)
                key, job, future = waiting.popleft()
                if waiting:
                    self._queues[client] = waiting  # to the back: equal scores take turns
                self._waiting -= 1
            try:
                result = job()
            except Exception:  # a broken check is a failed login, never a dead worker
                result = False
            with self._cond:
                self._inflight.pop(key, None)
                if not result:
                    self._failed(client)
            future.set_result(result)


class BasicAuth:
    """Checks `Authorization: Basic ...` headers against bcrypt hashes; thread-safe.

    A successful check is remembered as an HMAC (under a random per-process key) of the user and
    password, compared with `hmac.compare_digest`, so a repeated scrape costs microseconds instead
    of a bcrypt computation. Other checks run in `BCRYPT_WORKERS` threads, clients with the fewest
    recent failures first (`_FairQueue`), so a flood of wrong passwords uses at most that many cores
    and cannot keep a real login waiting behind it. An unknown user is checked against the most expensive of the
    users' own hashes, so it costs exactly what a wrong password costs. As in bcrypt (and Go's
    x/crypto/bcrypt, which the exporter-toolkit uses), only the first 72 bytes of a password count.
    """

    def __init__(self, users: Mapping[str, str], checkpw: Callable[[bytes, bytes], bool] | None = None,
                 workers: int = BCRYPT_WORKERS) -> None:
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        if checkpw is None:
            checkpw = _import_bcrypt("<web config>").checkpw
        self._checkpw = checkpw
        self._key = secrets.token_bytes(32)
        self._good: dict[str, bytes] = {}
        # Any valid hash of the highest cost: its check costs what a real user's costs.
        self._dummy = max(self._users.values(), key=lambda h: h[4:6], default=_DUMMY_HASH.encode())
        self._queue = _FairQueue(workers, BCRYPT_PER_CLIENT, BCRYPT_QUEUE)
        self._count_lock = threading.Lock()
        self.bcrypt_checks = 0  # how many bcrypt computations ran (for tests and the status page)

    @property
    def turned_away(self) -> int:
        """Checks refused because too many were waiting."""
        return self._queue.turned_away

    def _mac(self, user: str, password: bytes) -> bytes:
        return hmac.new(self._key, user.encode() + b"\0" + password, "sha256").digest()

    def begin(self, header: str | None, client: str = "") -> bool | Future[bool] | None:
        """True or False when known at once (cached, malformed), a Future while bcrypt runs, or None
        when too many checks are waiting (answer 429)."""
        credentials = parse_basic_authorization(header)
        if credentials is None:
            return False
        user, password = credentials
        mac = self._mac(user, password)
        good = self._good.get(user)
        if good is not None and hmac.compare_digest(good, mac):
            return True
        hashed = self._users.get(user)
        return self._queue.submit(mac, client, lambda: self._verify(user, password, hashed, mac))

    def check(self, header: str | None, client: str = "") -> bool:
        """True when `header` (the Authorization value, or None) names a user with the right password."""
        verdict = self.begin(header, client)
        if isinstance(verdict, Future):
            return verdict.result()
        return bool(verdict)

    def _verify(self, user: str, password: bytes, hashed: bytes | None, mac: bytes) -> bool:
        good = self._good.get(user)
        if good is not None and hmac.compare_digest(good, mac):
            return True
        with self._count_lock:
            self.bcrypt_checks += 1
        try:
            ok = self._checkpw(password[:BCRYPT_MAX_PASSWORD], hashed or self._dummy)
        except ValueError:
            ok = False
        if ok and hashed is not None:
            self._good[user] = mac
            return True
        return False


def parse_basic_authorization(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from an `Authorization: Basic` value, or None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token or len(token) > 4096:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
