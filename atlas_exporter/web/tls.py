"""The server's TLS: an `ssl.SSLContext` from a validated `tls_server_config`, and the client SAN check.

`build_ssl_context(tls, source)` loads the certificate, key and client CA once; a file that cannot be
read or used raises `WebConfigError` with one line, for example:

    web.yml: tls_server_config.cert_file: cannot use /etc/atlas/tls.crt with /etc/atlas/tls.key: ...
    web.yml: tls_server_config.key_file: the key file is encrypted with a passphrase; use an unencrypted ...

`peer_san_allowed(cert, allowed)` says whether a verified client certificate carries one of the
`client_allowed_sans`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from atlas_exporter.config import read_regular_file
from atlas_exporter.web.webconfig import TLS_VERSIONS, TlsConfig, WebConfigError

MAX_TLS_FILE_BYTES = 4 * 1024 * 1024  # certificate chains and CA bundles


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
    for key, name in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        _readable(name, source, f"{path}.{key}")
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

