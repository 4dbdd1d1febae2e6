"""Basic auth: `Authorization: Basic ...` headers checked against the web config's bcrypt hashes.

`BasicAuth(users).begin(header, client)` answers True or False at once when it can (a malformed
header, a password that was checked before), a `Future` while bcrypt runs in a worker thread, or None
when too many checks are waiting (the server answers 429). Successful checks are cached, so many
concurrent scrapes cost one bcrypt computation; the others run in a small pool (`_FairQueue`) that
serves clients without recent failures first. `bcrypt` is imported only when there are users.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import ModuleType

from atlas_exporter.web.webconfig import WebConfigError

BCRYPT_WORKERS = 2  # threads that run bcrypt: a flood of wrong passwords uses at most this many cores
BCRYPT_PER_CLIENT = 4  # checks one client address may have waiting; more are answered 429
BCRYPT_QUEUE = 256  # checks waiting in all
BCRYPT_MAX_PASSWORD = 72  # bytes of a password that bcrypt uses; the rest is ignored, as in Go's bcrypt
# Only used when there are no users at all (BasicAuth({})): unknown users are checked against the
# costliest of the users' own hashes.
_DUMMY_HASH = "$2b$10$JhzeX2OpGCRXu2TLALvDqe9PVcr1sTw/yTrXMCYvR/qsS2URmex9e"


def import_bcrypt(source: str) -> ModuleType:
    """The bcrypt module; `WebConfigError` naming `source` when it is not installed."""
    try:
        import bcrypt
    except ImportError:
        raise WebConfigError(f"{source}: basic_auth_users: needs the Python package 'bcrypt' "
                             "(pip install 'atlas-exporter[auth]')") from None
    return bcrypt


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
        return score * math.pow(0.5, (now - when) / self.FAILURE_HALF_LIFE)

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
            checkpw = import_bcrypt("<web config>").checkpw
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
