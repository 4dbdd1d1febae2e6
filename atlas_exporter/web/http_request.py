"""HTTP/1.1 request heads: parsing and the few header values the server acts on. Pure: no I/O.

`parse_head(head)` turns the bytes of a request head (without its blank line) into a `Request`,
or raises `BadRequest(code, text)` with the status to answer:

    parse_head(b"GET /metrics HTTP/1.1\r\nHost: x")   Request(method="GET", target="/metrics", ...)
    parse_head(b"GET /metrics HTTP/2.0")               BadRequest(505, "HTTP version not supported.")
    accepts_gzip("gzip;q=0")                           False
"""

from __future__ import annotations

import re

MAX_REQUEST_LINE = 8192  # bytes, as in most HTTP servers
MAX_HEADER_BYTES = 16384  # all header lines of one request together
HEAD_END = re.compile(rb"\r?\n\r?\n")
DECIMAL = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 414: "URI Too Long", 429: "Too Many Requests", 503: "Service Unavailable", 431:
           "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           505: "HTTP Version Not Supported"}


class Request:
    """One parsed request head: header names are lower case; repeated headers are joined with ", "."""

    __slots__ = ("method", "target", "version", "line", "headers", "keep_alive")

    def __init__(self, method: str, target: str, version: tuple[int, int], line: str,
                 headers: dict[str, str], keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.line = line
        self.headers = headers
        self.keep_alive = keep_alive


class BadRequest(Exception):
    """A request that gets `code` and the one-line `text`, then the connection is closed."""

    def __init__(self, code: int, text: str, line: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.line = line


def parse_head(head: bytes) -> Request:
    """A request head (without the blank line) -> Request; raises BadRequest."""
    lines = re.split(rb"\r?\n", head)
    raw_line = lines[0]
    line = raw_line.decode("latin-1")
    parts = raw_line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise BadRequest(400, "Bad request syntax.", line)
    method_b, target_b, version_b = parts
    version = _VERSION.match(version_b)
    if not _TOKEN.match(method_b) or version is None:
        raise BadRequest(400, "Bad request syntax.", line)
    if version.group(1) != b"1":
        raise BadRequest(505, "HTTP version not supported.", line)
    headers: dict[str, str] = {}
    lengths: set[str] = set()
    for raw in lines[1:]:
        if raw[:1] in (b" ", b"\t"):
            raise BadRequest(400, "Folded header lines are not accepted.", line)
        name_b, sep, value_b = raw.partition(b":")
        if not sep or not _TOKEN.match(name_b):
            raise BadRequest(400, "Bad header line.", line)
        name = name_b.decode("ascii").lower()
        value = value_b.strip(b" \t").decode("latin-1")
        if name == "content-length":
            lengths.add(value)
        headers[name] = f"{headers[name]}, {value}" if name in headers and name != "content-length" else value
    if len(lengths) > 1:
        raise BadRequest(400, "Conflicting Content-Length headers.", line)
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    minor = int(version.group(2))
    keep_alive = "close" not in tokens if minor >= 1 else "keep-alive" in tokens
    return Request(method_b.decode("ascii"), target_b.decode("latin-1"), (1, minor), line, headers, keep_alive)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding value allows gzip (`gzip;q=0` does not)."""
    if not accept_encoding:
        return False
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def one_line(err: BaseException) -> str:
    """An exception as `Type: message` on one line, for a 500 body and its log line."""
    return " ".join(f"{type(err).__name__}: {err}".split())

