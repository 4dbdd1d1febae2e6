"""The `--web.config.file`, parsed and validated: TLS and basic auth in the Prometheus exporter-toolkit format.

`parse_web_config(tree, source, base_dir)` returns a validated `WebConfig` from a parsed YAML tree,
or raises `WebConfigError` with one line that names the file, the key and the problem, for example:

    web.yml: tls_server_config.client_auth_type: must be one of NoClientCert, ...; got 'Verify'
    web.yml: basic_auth_users.alice: not a bcrypt hash (expected $2a$, $2b$ or $2y$ and 60 characters)

No file is read here: `websettings.load_web_config(path)` reads the file and tries it out,
`tls.build_ssl_context` loads the certificates, `basicauth.BasicAuth` checks passwords.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
        value = raw[key]
        if not isinstance(value, bool):
            raise self.fail(f"{path}.{key}", f"must be true or false, got {_kind(value)}")
        return value


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
