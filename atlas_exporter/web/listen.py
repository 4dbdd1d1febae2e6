"""The listening socket: `--web.listen-address` parsed, resolved and bound, Go's `net.Listen` style.

`parse_listen_address("127.0.0.1:9858")` gives ("127.0.0.1", 9858); `":9858"` means every interface
(IPv6 dual-stack where available). Every problem raises `ServerError` with one line, like Go's:

    listen tcp 127.0.0.1:9858: address already in use
    listen tcp: address 9858: missing port in address
    listen tcp: lookup nosuchhost: name or service not known
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from atlas_exporter.web.http_request import DECIMAL

BACKLOG = 1024


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
    if not DECIMAL.fullmatch(port_text) or not 0 <= int(port_text) <= 65535:
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


def resolve(listen_address: str) -> tuple[socket.AddressFamily, tuple[Any, ...], bool]:
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



def listen(listen_address: str, family: socket.AddressFamily, sockaddr: tuple[Any, ...],
           dual_stack: bool) -> socket.socket:
    """A socket bound to `sockaddr` (from `resolve(listen_address)`) and listening; raises `ServerError`."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise ServerError(f"listen tcp {listen_address}: {_bind_reason(err)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError as err:
        sock.close()
        raise ServerError(f"listen tcp {listen_address}: {_bind_reason(err)}") from None
    return sock
