"""`BackgroundLoop`: the one way a collector or output runs work on its own thread.

A loop calls `step()` on a daemon thread, waits `interval` seconds, and repeats until `stop()`.
A step that raises is logged with its traceback (then at most once a minute while it keeps
failing), counted in `errors`, and the loop goes on. A loop whose thread ended without being
stopped is `dead`: the exporter then reports its collector with
`atlas_scrape_collector_success` 0. When the loop is `essential` (the collector's values stop
moving without it) the collector exports nothing more and every data source it reports shows
as off, with the reason, on the status page; a loop that is not essential (one that adds to
values another loop keeps fresh) leaves the collector's other values exported, and the source
reports what it fed as off.

    loop = BackgroundLoop("atlas-hang-watcher", source.check, interval=5.0, log=log)
    loop.start()
    ...
    loop.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

ERROR_LOG_EVERY_SECONDS = 60.0


class BackgroundLoop:
    """Runs `step` every `interval` seconds (a callable: read before each wait) on a daemon thread.

    `interval` 0 suits a step that blocks by itself (a poll with a timeout). After a failed step
    the loop waits at least `error_pause` seconds, so a fault that repeats at once cannot spin.
    With `immediate`, the first step runs at once; otherwise after the first interval.
    """

    def __init__(self, name: str, step: Callable[[], object], *, interval: float | Callable[[], float],
                 log: logging.Logger, immediate: bool = False, error_pause: float = 0.1, essential: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.essential = essential
        self.step = step
        self.interval = interval
        self.immediate = immediate
        self.error_pause = error_pause
        self.errors = 0  # steps that raised
        self.failure: str | None = None  # why the thread ended, when it ended on its own
        self.stopping = threading.Event()
        self._log = log
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._last_logged = float("-inf")
        self._unlogged = 0

    def start(self) -> None:
        """Start the thread; a loop already running is left as is."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.stopping.clear()
        self.failure = None
        thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        thread.start()
        self._thread = thread

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait up to `timeout` seconds for its current step."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the loop is being stopped (for steps that wait)."""
        return self.stopping.wait(seconds)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def dead(self) -> bool:
        """True when the thread was started and has ended without `stop()`."""
        thread = self._thread
        return thread is not None and not thread.is_alive() and not self.stopping.is_set()

    def dead_reason(self) -> str:
        """One sentence for the status page and the log: which thread ended, and why if known."""
        why = f": {self.failure}" if self.failure else ""
        return f"background thread {self.name} has ended{why}"

    def _pause(self) -> float:
        return self.interval() if callable(self.interval) else self.interval

    def _run(self) -> None:
        try:
            if not self.immediate and self.stopping.wait(self._pause()):
                return
            while not self.stopping.is_set():
                try:
                    self.step()
                except Exception:  # a thread boundary: log with context and go on
                    self.errors += 1
                    self._log_failure()
                    if self.stopping.wait(max(self.error_pause, self._pause())):
                        return
                    continue
                if self.stopping.wait(self._pause()):
                    return
        except BaseException as err:  # the thread is ending on its own: say why, once
            self.failure = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            self._log.error("%s", self.dead_reason())

    def _log_failure(self) -> None:
        now = self._clock()
        if now - self._last_logged < ERROR_LOG_EVERY_SECONDS:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more failures since the last report)" if self._unlogged else ""
        self._log.exception("%s: a step failed%s", self.name, more)
        self._last_logged = now
        self._unlogged = 0
