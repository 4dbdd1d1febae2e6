"""The blocking-read guard for process identities: reads that may hang run on reader threads.

A read of `/proc/<pid>/cmdline` (or `exe`, `cgroup`) blocks while the process's memory map lock
is held, for as long as the holder keeps it. `IdentityReader.identity(pid)` returns the
`ProcIdentity` the read gives, or None when the process is gone or its read did not finish
within the caller's deadline; the read goes on, and a later call returns its result.

    reader = IdentityReader(read_identity_of)       # read: ProcessId -> ProcIdentity | None
    reader.begin_pass()                             # the scanning thread, before naming its pass
    reader.read_ahead(scan.samples)                 # the new processes, read in one batch
    reader.identity(ProcessId(4312, 123456))        # -> ProcIdentity(comm='nginx', ...) or None
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

from atlas_exporter.model import ProcessId, ProcIdentity, ProcSample

log = logging.getLogger(__name__)

IDENTITY_DEADLINE_SECONDS = 1.0  # one process's identity reads, before it is left for the next pass
# the same for a watcher thread (crash, network, hang) naming a pid: off the scrape path, so it can
# wait out a loaded machine; an answer it gives up on (a rename at exec) would be lost
IDENTITY_WATCHER_DEADLINE_SECONDS = 5.0
IDENTITY_PASS_BUDGET_SECONDS = 2.0  # waiting in one scan pass, from the first read that timed out
IDENTITY_GRACE_SECONDS = 0.02  # a read's wait once the pass budget is spent (an unblocked read takes ~0.1 ms)
IDENTITY_READER_THREADS = 16  # readers stuck on a blocking /proc file each hold one
MAX_PENDING_IDENTITIES = 1024


_CLAIM = threading.Lock()


class _Job:
    """One identity read handed to a reader thread."""

    __slots__ = ("done", "result", "fn", "arg", "claimed")

    def __init__(self, fn: Callable[[ProcessId], ProcIdentity | None], arg: ProcessId) -> None:
        self.fn = fn
        self.arg = arg
        self.done = threading.Event()
        self.result: ProcIdentity | None = None
        self.claimed = False

    def claim(self) -> bool:
        """True for the one caller that gets to run this job."""
        with _CLAIM:
            if self.claimed:
                return False
            self.claimed = True
            return True

    def run(self) -> None:
        try:
            self.result = self.fn(self.arg)
        except Exception:  # a reader thread must survive anything one process does
            log.debug("identity read of pid %d failed", self.arg.pid, exc_info=True)
        finally:
            self.done.set()


class _Batch:
    """The identities of one scan's new processes, read in order by one reader thread.

    One hand-off per batch instead of one per process: a reader that has to win the GIL
    back from busy threads for every single process costs about 1 ms each. A job the batch
    has not reached yet can be claimed and run apart when the batch is stuck on a read.
    """

    STALLED_SECONDS = 0.2

    def __init__(self, jobs: list[_Job]) -> None:
        self.jobs = jobs
        self.current_since: float | None = None
        self.finished = threading.Event()

    def stalled(self) -> bool:
        since = self.current_since
        return since is not None and time.monotonic() - since > self.STALLED_SECONDS

    def run(self) -> None:
        try:
            for job in self.jobs:
                if job.claim():
                    self.current_since = time.monotonic()
                    job.run()
        finally:
            self.current_since = None
            self.finished.set()


class DeadlineReader:
    """Runs reads that may block (cmdline, exe, cgroup of a process whose memory lock is held) on
    daemon threads, so the caller can stop waiting. A thread stuck in a read stays stuck, so up to
    `max_threads` are started; when all are stuck, new reads wait in the queue.
    """

    def __init__(self, max_threads: int = IDENTITY_READER_THREADS) -> None:
        self.max_threads = max_threads
        self._queue: queue.SimpleQueue[_Job | _Batch] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def can_start(self) -> bool:
        """Whether a job submitted now can start at once (a thread is idle or may be added)."""
        with self._lock:
            return self._idle > 0 or self._threads < self.max_threads

    def submit(self, job: _Job | _Batch) -> None:
        with self._lock:
            if self._idle == 0 and self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name="atlas-identity-reader", daemon=True).start()
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._queue.get()
            with self._lock:
                self._idle -= 1
            job.run()



class _PassState(threading.local):
    """The scanning thread's view of its pass: whether it is naming one, and its shared deadline."""

    active: bool = False
    deadline: float | None = None  # set once a read of the pass has timed out


class IdentityReader:
    """Reads process identities with `read` on `DeadlineReader` threads and waits for each at most a deadline.

    The caller waits up to `deadline_seconds` when it is the thread that scanned (a scrape holding the
    snapshot lock), `watcher_deadline_seconds` otherwise (a watcher, off the scrape path). In a scan
    pass, once one read has timed out, the waits of the pass end `pass_budget_seconds` after that
    read began. A read still running then is not waited for again: the process is named in a later
    pass, once it has finished. `timeouts` counts the reads that were not waited out.
    """

    def __init__(self, read: Callable[[ProcessId], ProcIdentity | None], *,
                 deadline_seconds: float = IDENTITY_DEADLINE_SECONDS,
                 watcher_deadline_seconds: float = IDENTITY_WATCHER_DEADLINE_SECONDS,
                 pass_budget_seconds: float = IDENTITY_PASS_BUDGET_SECONDS) -> None:
        self.read = read
        self.deadline_seconds = deadline_seconds
        self.watcher_deadline_seconds = watcher_deadline_seconds
        self.pass_budget_seconds = pass_budget_seconds
        self.timeouts = 0  # processes not named in time (named in a later pass)
        self._reader = DeadlineReader()
        self._pending: dict[ProcessId, _Job] = {}
        self._pending_lock = threading.Lock()
        self._batched: dict[ProcessId, _Job] = {}  # this scan's new processes, read ahead by `_batch`
        self._batch: _Batch | None = None
        self._seen_ids: set[ProcessId] = set()
        self._pass = _PassState()

    def begin_pass(self) -> None:
        """Called by the scanning thread as a pass starts: the identities it asks for next share one budget."""
        self._pass.active = True
        self._pass.deadline = None

    def identity(self, pid: ProcessId) -> ProcIdentity | None:
        """The identity of a process, or None when it is gone or could not be read in time."""
        with self._pending_lock:
            pending = self._pending.pop(pid, None)
            batched = self._batched.pop(pid, None)
        if pending is not None and not pending.done.is_set():
            with self._pending_lock:
                self._pending[pid] = pending
            return None
        if pending is not None:
            return pending.result
        batch = self._batch
        if batched is not None:
            job = batched  # read already, or about to be, by this scan's batch
            can_start = True
        else:
            job = _Job(self.read, pid)
            job.claimed = True
            can_start = self._reader.can_start()
            self._reader.submit(job)
        in_pass = self._pass.active  # named by the thread that scanned
        # a watcher is off the scrape path: it waits longer, and still never for ever
        wait = self.deadline_seconds if in_pass else self.watcher_deadline_seconds
        if not can_start:
            wait = 0.0  # every reader is stuck: the read waits in the queue
        started = time.monotonic()
        pass_deadline = self._pass.deadline
        if in_pass and pass_deadline is not None:  # a read of this pass already timed out
            wait = min(wait, max(IDENTITY_GRACE_SECONDS, pass_deadline - started))
        deadline = started + wait
        apart = batched is None or batch is None
        while True:
            if job.done.is_set():
                return job.result
            if not apart and batch is not None and batch.stalled() and job.claim():
                self._reader.submit(job)  # the batch is stuck on another process: read this one apart
                apart = True
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # while the batch runs, wait for all of it: one wake-up, not one GIL hand-off per process
            event = job.done if apart or batch is None or batch.finished.is_set() else batch.finished
            event.wait(min(left, _Batch.STALLED_SECONDS))
        if in_pass and self._pass.deadline is None:
            # from the first read that blocks, the rest of the pass shares one budget: a crowd of
            # blocked processes costs a scrape this long, not one deadline each
            self._pass.deadline = started + self.pass_budget_seconds
        self.timeouts += 1
        log.debug("pid %d could not be named within %.2fs: named in a later pass", pid.pid, wait)
        with self._pending_lock:
            self._pending[pid] = job
            while len(self._pending) > MAX_PENDING_IDENTITIES:
                self._pending.pop(next(iter(self._pending)))
        return None

    def read_ahead(self, samples: Iterable[ProcSample]) -> None:
        """Start reading the identities of the processes this scan sees for the first time.

        They are the ones the resolver is about to ask for; one reader reads them all, in the
        order the resolver asks. A read ahead that nobody asks for (the process was named by
        a watcher already) is dropped at the next scan.
        """
        seen = self._seen_ids
        ids = [sample.id for sample in samples]
        new = [pid for pid in ids if pid not in seen]
        self._seen_ids = set(ids)
        if not new:
            with self._pending_lock:
                self._batched = {}
            return
        jobs = [_Job(self.read, pid) for pid in new]
        batch = _Batch(jobs)
        with self._pending_lock:
            self._batched = {job.arg: job for job in jobs}
            self._batch = batch
        self._reader.submit(batch)
