"""A web config file put to use: `load_web_config(path)` for the command line, `ServerSettings` for the server.

`load_web_config("web.yml")` reads and validates the file and tries it out (loads its certificates,
imports bcrypt when there are users), raising `WebConfigError` with one line. `server_settings(config)`
builds what the server applies to new connections and requests, and what a reload replaces: the
TLS context, the client SAN allow-list, the basic auth checker and the extra response headers.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from atlas_exporter.config import read_yaml_file
from atlas_exporter.web.basicauth import BasicAuth, import_bcrypt
from atlas_exporter.web.tls import build_ssl_context
from atlas_exporter.web.webconfig import WebConfig, WebConfigError, parse_web_config


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
        import_bcrypt(name)
    return config


class ServerSettings:
    """What a reload can change: TLS context, SAN allow-list, basic auth, extra headers (as bytes)."""

    __slots__ = ("context", "allowed_sans", "auth", "headers")

    def __init__(self, context: ssl.SSLContext | None, allowed_sans: tuple[str, ...], auth: BasicAuth | None,
                 headers: tuple[tuple[str, str], ...]) -> None:
        self.context = context
        self.allowed_sans = allowed_sans
        self.auth = auth
        self.headers = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)


def server_settings(web_config: WebConfig | None) -> ServerSettings:
    """The settings for `web_config` (None: plain HTTP, no auth); raises `WebConfigError`."""
    if web_config is None:
        return ServerSettings(None, (), None, ())
    context = build_ssl_context(web_config.tls, web_config.source) if web_config.tls is not None else None
    auth = BasicAuth(web_config.basic_auth_users) if web_config.basic_auth_users else None
    sans = web_config.tls.client_allowed_sans if web_config.tls is not None else ()
    return ServerSettings(context, sans, auth, web_config.headers)
