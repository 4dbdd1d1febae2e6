"""The one identity service: every `app` label of every source comes from here.

A name is made by the `Namer` from a process's identity, then cleaned (valid UTF-8, no
whitespace or control characters, at most `MAX_NAME_LENGTH` characters) and cached per
process identity (pid, start time). The cache follows the process: an exec (a proc connector
event, or a comm that differs from the one the name was made from) and a move to another
cgroup (re-checked at the first scan of a process a watcher named, then by the scans 1 s, 5 s,
21 s... after naming, then every `CGROUP_RECHECK_SECONDS`) make it read the identity again.
Kernel threads are never named.

The `max_apps` fold gives slots only to apps that are exported, i.e. that get a series:

- `app_for(sample)`: a scanned process (it has process series): named and folded.
- `app_of_pid(pid)`: what a watcher (crash, hang, network) calls a live or zombie pid; the
  name is cleaned but takes no slot. A watcher passes it to `export(name)` when it creates a
  series for it (a crash counted, a hang started, bytes credited).
- `app_for_name(raw, exe=None)` / `app_for_identity(ident)`: a name from a crash report
  or log line whose process is gone (apport, systemd-coredump, kernel log, macOS reports):
  named by the same rules as a live process with that comm, cleaned and folded at once;
  `name_for` / `name_of_identity` name the same way without taking a slot.
- A zombie the scan never saw alive is not named by the scan (its comm is cut to 15
  characters); its exit still reaches the watchers.

When the scan retires an app (no process for `retention_seconds`), its slot is released and
every source drops its series with it (network totals, crash, exit and hang counts: the
`on_retired` hooks), so the app labels of the whole exposition never exceed `max_apps` plus
`other`.
- `app_after_exec(pid)`: the exec event of the proc connector; drops the cached name and
  names the new program at once.

Names beyond the cap go to `other` (sticky, so counters stay monotonic); how many went there
is `AppFold.folded_total` (`atlas_app_names_folded_total`), and the first fold is logged at
warning level. All methods are thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from atlas_exporter.apps.naming import Namer
from atlas_exporter.model import ProcessId, ProcessSource, ProcIdentity, ProcSample

log = logging.getLogger(__name__)

OTHER = "other"
UNKNOWN = "unknown"
MAX_NAME_LENGTH = 128
MAX_REMEMBERED_FOLDS = 100_000
MAX_WATCHED_PIDS = 4096  # names looked up by watchers for processes the scans have not seen
FIRST_CGROUP_RECHECK_SECONDS = 1.0  # a named process's cgroup is read again this long after, then
CGROUP_RECHECK_SECONDS = 60.0  # ... after 4 times as long each time, up to this (launchers move new processes)
MAX_PARENT_DEPTH = 8  # how many ancestors naming one process may name first


def clean_name(raw: str | bytes | None) -> str:
    """An app name safe for a label: valid UTF-8, no whitespace or control characters.

    Bytes are decoded as UTF-8 with U+FFFD for invalid sequences; lone surrogates (from
    `surrogateescape`) become U+FFFD; each run of whitespace or non-printable characters becomes
    one `_`. Empty names are `unknown`.
    """
    if raw is None:
        return UNKNOWN
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    out: list[str] = []
    gap = False
    for ch in raw.strip():
        if "\ud800" <= ch <= "\udfff":
            ch = "\ufffd"
        if ch.isprintable() and not ch.isspace():
            if gap and out:
                out.append("_")
            gap = False
            out.append(ch)
        else:
            gap = True
    name = "".join(out)[:MAX_NAME_LENGTH]
    return name or UNKNOWN


class AppFold:
    """The cardinality cap: the first `max_apps` names are admitted, later ones become "other".

    Sticky both ways: an admitted name stays admitted until it is released (its app was
    retired), and a folded name stays folded, so no counter moves between series.
    """

    def __init__(self, max_apps: int, *, logger: logging.Logger = log) -> None:
        self.max_apps = max_apps
        self.folded_total = 0  # distinct names sent to "other"
        self._admitted: set[str] = set()
        self._folded: set[str] = set()
        self._log = logger

    def __call__(self, name: str) -> str:
        if name in self._admitted:
            return name
        if name in self._folded or name == OTHER:
            return OTHER
        if len(self._admitted) < self.max_apps:
            self._admitted.add(name)
            return name
        self.folded_total += 1
        if self.folded_total == 1:
            self._log.warning("max_apps (%d) reached: app %r and every later new app are counted as %r; "
                              "raise max_apps or group processes with naming rules", self.max_apps, name, OTHER)
        else:
            self._log.debug("app %r folded into %r (max_apps %d)", name, OTHER, self.max_apps)
        if len(self._folded) < MAX_REMEMBERED_FOLDS:
            self._folded.add(name)
        return OTHER

    def is_admitted(self, name: str) -> bool:
        return name in self._admitted

    def admitted(self) -> int:
        return len(self._admitted)

    def release(self, names: Iterable[str]) -> None:
        self._admitted.difference_update(names)


@dataclass(slots=True)
class _Entry:
    """A cached name: the comm and cgroup it was made from, the name, and (scanned) its folded app."""

    comm: str | None
    cgroup: str | None
    name: str
    app: str | None = None  # folded; set once a scan exported the process
    recheck_at: float = 0.0  # monotonic time of the next cgroup check by the scan
    recheck_every: float = FIRST_CGROUP_RECHECK_SECONDS


@runtime_checkable
class AppNaming(Protocol):
    """What a source needs from the identity service (an `AppResolver`, or a test stand-in)."""

    def app_of_pid(self, pid: int) -> str | None: ...

    def app_after_exec(self, pid: int) -> str | None: ...

    def app_for_name(self, raw: str | bytes | None, exe: str | None = None) -> str: ...

    def name_for(self, raw: str | bytes | None, exe: str | None = None) -> str: ...

    def app_of_cgroup(self, cgroup: str) -> str | None: ...

    def export(self, name: str) -> str: ...


class PidNaming:
    """An `AppNaming` over a bare `pid -> name` function, with no fold (tests, simple callers)."""

    def __init__(self, app_of_pid: Callable[[int], str | None]) -> None:
        self._app_of_pid = app_of_pid

    def app_of_pid(self, pid: int) -> str | None:
        name = self._app_of_pid(pid)
        return None if name is None else clean_name(name)

    def app_after_exec(self, pid: int) -> str | None:
        return self.app_of_pid(pid)

    def app_for_name(self, raw: str | bytes | None, exe: str | None = None) -> str:
        return clean_name(raw)

    def name_for(self, raw: str | bytes | None, exe: str | None = None) -> str:
        return clean_name(raw)

    def app_of_cgroup(self, cgroup: str) -> str | None:
        """No namer here: a cgroup names no app."""
        return None

    def export(self, name: str) -> str:
        return name

    def label_if_exported(self, name: str) -> str | None:
        return name


@runtime_checkable
class Probing(Protocol):
    """A process source that reads a live pid's identity, comm and kernel-thread flag in one read (Linux)."""

    def probe(self, pid: int) -> tuple[ProcessId, str, bool] | None: ...


@runtime_checkable
class CgroupReading(Protocol):
    """A process source that reads the cgroup path of a live process (Linux)."""

    def cgroup_of(self, pid: ProcessId) -> str | None: ...


def as_naming(naming: AppNaming | Callable[[int], str | None]) -> AppNaming:
    """An `AppNaming` for a resolver or for a plain `pid -> name` function."""
    if isinstance(naming, AppNaming):
        return naming
    return PidNaming(naming)


class AppResolver:
    """Names processes through a `Namer` and an `AppFold`, reading identities from `source`.

    `source` may also be `Probing` (`probe(pid) -> (ProcessId, comm, is_kernel_thread) | None`,
    one read of the stat file) and `CgroupReading` (`cgroup_of(ProcessId) -> str | None`); without
    them comm and cgroup changes are only seen by the scans.
    """

    def __init__(self, source: ProcessSource, namer: Namer, max_apps: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.namer = namer
        self.fold = AppFold(max_apps)
        self.clock = clock
        self._probe = source.probe if isinstance(source, Probing) else None
        self._cgroup_of = source.cgroup_of if isinstance(source, CgroupReading) else None
        self._lock = threading.Lock()
        # names of scanned processes; dropped when they exit
        self._cache: dict[ProcessId, _Entry] = {}
        # names of processes only the watchers asked about, least recently used first, bounded
        self._watched: OrderedDict[ProcessId, _Entry] = OrderedDict()

    # -- the scan: every process it returns is exported

    def app_for(self, sample: ProcSample) -> str | None:
        """The (folded) app of a scanned process; None when it vanished before it could be named."""
        entry = self._cache.get(sample.id)
        if entry is None:
            if sample.state == "Z":
                # a zombie the scan never saw alive: its comm is all that is left (15 characters,
                # not its app's name); its exit is counted by the watchers, it has no series here
                return None
            with self._lock:
                entry = self._watched.pop(sample.id, None)
                if entry is not None:
                    self._cache[sample.id] = entry
                    entry.recheck_at = 0.0  # named by a watcher: its cgroup is checked at its first scan
        if entry is not None and (sample.comm is None or entry.comm == sample.comm):
            if self._cgroup_of is not None:
                now = self.clock()
                if now >= entry.recheck_at and self._cgroup_changed(sample, entry, now):
                    return self._app_of(self._resolve(sample.id, sample.comm, scanned=True))
            app = entry.app
            if app is None:
                with self._lock:
                    app = entry.app = self.fold(entry.name)
            return app
        return self._app_of(self._resolve(sample.id, sample.comm, scanned=True))

    def _cgroup_changed(self, sample: ProcSample, entry: _Entry, now: float) -> bool:
        assert self._cgroup_of is not None
        cgroup = self._cgroup_of(sample.id)
        entry.recheck_at = now + entry.recheck_every
        entry.recheck_every = min(entry.recheck_every * 4, CGROUP_RECHECK_SECONDS)
        return cgroup is not None and cgroup != entry.cgroup

    def _app_of(self, entry: _Entry | None) -> str | None:
        if entry is None:
            return None
        if entry.app is None:
            with self._lock:
                entry.app = self.fold(entry.name)
        return entry.app

    # -- watchers: names without a slot

    def app_of_pid(self, pid: int) -> str | None:
        """The name of a live (or zombie) pid, cleaned but not folded; None when gone or a kernel thread."""
        token, comm = self._token(pid)
        if token is None:
            return None
        entry = self._cache.get(token) or self._watched.get(token)
        if entry is not None and (comm is None or entry.comm == comm):
            return entry.name
        entry = self._resolve(token, comm, scanned=token in self._cache)
        return entry.name if entry is not None else None

    def app_after_exec(self, pid: int) -> str | None:
        """The name of a pid that has just exec'd: whatever was cached for it is read again."""
        token, comm = self._token(pid)
        if token is None:
            return None
        entry = self._resolve(token, comm, scanned=token in self._cache)
        return entry.name if entry is not None else None

    def app_of_id(self, pid: ProcessId) -> str | None:
        """The current name of a known process, from the cache when it has one (no I/O); None when gone.

        Sockets follow their owner with it: the cache is renewed by exec events, by the scans
        (comm and cgroup changes) and by `app_of_pid`.
        """
        entry = self._cache.get(pid) or self._watched.get(pid)
        if entry is not None:
            return entry.name
        entry = self._resolve(pid, None, scanned=False)
        return entry.name if entry is not None else None

    def capture(self, pid: int) -> ProcIdentity | None:
        """The identity of a live pid, read now and named later (`app_for_identity`), not cached.

        For exec storms: reading costs a fraction of naming, so a watcher can keep what only a live
        process shows (cmdline, exe) and name it only if it crashes.
        """
        token, _comm = self._token(pid)
        return self.source.identity(token) if token is not None else None

    def token_of(self, pid: int) -> ProcessId | None:
        """The identity of a live pid (None when gone or a kernel thread)."""
        return self._token(pid)[0]

    def _token(self, pid: int) -> tuple[ProcessId | None, str | None]:
        if self._probe is not None:
            probed = self._probe(pid)
            if probed is None or probed[2]:
                return None, None
            return probed[0], probed[1]
        return self.source.start_token(pid), None

    # -- names that have no live process, and the fold

    def app_for_name(self, raw: str | bytes | None, exe: str | None = None) -> str:
        """The folded app of a process known only by name (and maybe its executable), e.g. from a report."""
        return self.export(self.name_for(raw, exe))

    def name_for(self, raw: str | bytes | None, exe: str | None = None) -> str:
        """`app_for_name` without the fold: the name, taking no slot (`export` it when it gets a series)."""
        comm = clean_name(raw) if isinstance(raw, bytes) else (raw or "")
        return self.name_of_identity(ProcIdentity(comm=comm, exe=exe or None))

    def name_of_identity(self, ident: ProcIdentity) -> str:
        """The name of an identity read from a report (or captured earlier), not folded."""
        return clean_name(self.namer.name(ident, self.parent_app(ident)))

    def app_for_identity(self, ident: ProcIdentity) -> str:
        """The folded app of an identity read from a report (or captured earlier), not from a live process."""
        return self.export(self.name_of_identity(ident))

    def app_of_cgroup(self, cgroup: str) -> str | None:
        """The name of the app a cgroup path stands for (its processes are gone), not folded."""
        name = self.namer.name(ProcIdentity(comm="", cgroup=cgroup))
        return clean_name(name) if name and name != UNKNOWN else None

    def export(self, name: str) -> str:
        """The label a watcher's series for `name` gets: `name`, or `other` beyond `max_apps` (sticky)."""
        with self._lock:
            return self.fold(name)

    def label_if_exported(self, name: str) -> str | None:
        """`name`'s label when it already has a series (`name`, or `other` when folded), taking no slot; else None."""
        with self._lock:
            if self.fold.is_admitted(name):
                return name
            return OTHER if name == OTHER or name in self.fold._folded else None

    def exported_app_of_pid(self, pid: int) -> str | None:
        """`export(app_of_pid(pid))`: for a source that creates a series as soon as it names a pid."""
        name = self.app_of_pid(pid)
        return None if name is None else self.export(name)

    def folded(self) -> tuple[int, int]:
        """(names folded into `other` so far, max_apps)."""
        return self.fold.folded_total, self.fold.max_apps

    # -- naming

    def parent_app(self, ident: ProcIdentity, depth: int = 0) -> Callable[[], str | None] | None:
        """How the namer asks for the name of a process's parent's app (named first if need be).

        Tree-aware grouping (helpers join their parent, `parent` rules) goes through this; the
        namer calls it only when it needs it. None: no parent to ask about (pid 1 is nobody's
        app parent; at most MAX_PARENT_DEPTH ancestors are named for one process).
        """
        ppid = ident.ppid
        if not ppid or ppid <= 1 or depth >= MAX_PARENT_DEPTH:
            return None

        def ask() -> str | None:
            token, comm = self._token(ppid)
            if token is None:
                return None
            entry = self._cache.get(token) or self._watched.get(token)
            if entry is None or (comm is not None and entry.comm != comm):
                entry = self._resolve(token, comm, scanned=token in self._cache, depth=depth + 1)
            return entry.name if entry is not None else None

        return ask

    def _resolve(self, pid: ProcessId, comm: str | None, *, scanned: bool, depth: int = 0) -> _Entry | None:
        ident = self.source.identity(pid)
        if ident is None:
            return None
        entry = _Entry(comm=comm if comm is not None else ident.comm, cgroup=ident.cgroup,
                       name=clean_name(self.namer.name(ident, self.parent_app(ident, depth))))
        entry.recheck_at = self.clock() + FIRST_CGROUP_RECHECK_SECONDS
        with self._lock:
            if scanned:
                self._cache[pid] = entry
                self._watched.pop(pid, None)
            else:
                self._watched[pid] = entry
                self._watched.move_to_end(pid)
                while len(self._watched) > MAX_WATCHED_PIDS:
                    self._watched.popitem(last=False)
        return entry

    def forget(self, gone: Iterable[ProcessId]) -> None:
        """Drop cached names of processes that exited."""
        with self._lock:
            for pid in gone:
                self._cache.pop(pid, None)

    def release(self, apps: Iterable[str]) -> None:
        """Free the fold slots of apps that were retired."""
        with self._lock:
            self.fold.release(apps)
