"""Process -> app name, cached per (pid, start time), with the sticky `max_apps` fold.

`AppResolver.app_for(sample)` names a scanned process; `app_of_pid(pid)` names a live pid
for the event watchers (crashes, network). Both are thread-safe. Identities are read
through the injected process source only once per process, and again after an exec
(when comm changes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from atlas_exporter.apps.naming import Namer
from atlas_exporter.model import ProcessId, ProcessSource, ProcSample

OTHER = "other"
MAX_REMEMBERED_FOLDS = 100_000
MAX_WATCHED_PIDS = 4096  # names looked up by watchers for processes the scans have not seen


class AppFold:
    """The cardinality cap: the first `max_apps` names are admitted, later ones become "other".

    Sticky both ways: an admitted name stays admitted until it is released (its app was
    retired), and a folded name stays folded, so no counter moves between series.
    """

    def __init__(self, max_apps: int) -> None:
        self.max_apps = max_apps
        self._admitted: set[str] = set()
        self._folded: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._admitted:
            return name
        if name in self._folded or name == OTHER:
            return OTHER
        if len(self._admitted) < self.max_apps:
            self._admitted.add(name)
            return name
        if len(self._folded) < MAX_REMEMBERED_FOLDS:
            self._folded.add(name)
        return OTHER

    def release(self, names: Iterable[str]) -> None:
        self._admitted.difference_update(names)


class AppResolver:
    """Names processes through a `Namer` and an `AppFold`, reading identities from `source`."""

    def __init__(self, source: ProcessSource, namer: Namer, max_apps: int) -> None:
        self.source = source
        self.namer = namer
        self.fold = AppFold(max_apps)
        self._lock = threading.Lock()
        # ProcessId -> (comm at naming time, app name) of scanned processes; dropped when they exit
        self._cache: dict[ProcessId, tuple[str | None, str]] = {}
        # the same for pids only the watchers asked about, least recently used first, bounded
        self._watched: OrderedDict[ProcessId, tuple[str | None, str]] = OrderedDict()

    def app_for(self, sample: ProcSample) -> str | None:
        """The app of a scanned process; None when it vanished before it could be named."""
        cached = self._cache.get(sample.id)
        if cached is None:
            with self._lock:
                cached = self._watched.pop(sample.id, None)
                if cached is not None:
                    self._cache[sample.id] = cached
        if cached is not None and (sample.comm is None or cached[0] == sample.comm):
            return cached[1]
        return self._resolve(sample.id, sample.comm, scanned=True)

    def app_of_pid(self, pid: int) -> str | None:
        """The app of a live pid, or None when it is gone."""
        token = self.source.start_token(pid)
        if token is None:
            return None
        cached = self._cache.get(token) or self._watched.get(token)
        if cached is not None:
            return cached[1]
        return self._resolve(token, None, scanned=False)

    def _resolve(self, pid: ProcessId, comm: str | None, *, scanned: bool) -> str | None:
        ident = self.source.identity(pid)
        if ident is None:
            return None
        name = self.namer.name(ident)
        with self._lock:
            app = self.fold(name)
            entry = (comm if comm is not None else ident.comm, app)
            if scanned:
                self._cache[pid] = entry
            else:
                self._watched[pid] = entry
                while len(self._watched) > MAX_WATCHED_PIDS:
                    self._watched.popitem(last=False)
        return app

    def forget(self, gone: Iterable[ProcessId]) -> None:
        """Drop cached names of processes that exited."""
        with self._lock:
            for pid in gone:
                self._cache.pop(pid, None)

    def release(self, apps: Iterable[str]) -> None:
        """Free the fold slots of apps that were retired."""
        with self._lock:
            self.fold.release(apps)
