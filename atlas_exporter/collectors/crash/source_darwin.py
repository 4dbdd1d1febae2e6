"""macOS crash and hang reports: a DiagnosticReports folder watcher.

Emits (sub-collector `crash`):

    atlas_app_crashes_total{app="MarkdownEditor",reason="SIGSEGV"} 1.0
    atlas_app_last_crash_timestamp_seconds{app="MarkdownEditor"} 1.7797831e+09
    atlas_app_hangs_total{app="RedLemon"} 1.0
    atlas_crash_source_active{source="diagnostic_reports"} 1.0
    atlas_crash_reports_skipped_total{reason="unknown_type"} 3.0

It polls `/Library/Logs/DiagnosticReports` and the DiagnosticReports folder of the user it
runs as; as root (a LaunchDaemon, whose HOME is /var/root) also every user's
`/Users/<user>/Library/Logs/DiagnosticReports`, found again at each poll so new users are
picked up. Each folder comes with its `Retired/`, plus `crash.report_dirs`. The folders
it could list are in its status (`SourceStatus.details`), for the status page.
Reports are read here and parsed by `reports_darwin.py` (`.ips`, legacy `.crash`, spindump `.hang`).
The app is named through the naming rules from an identity built out of the report:
procName, procPath and the bundle's display name. `.ips` files redact home folders
(`/Users/USER/...`), so the display name comes first from the bundle id (`bundleInfo`
`CFBundleIdentifier`, or the header's `bundleID`) through the `BundleNamer` the process
source shares, which remembers the display name of every bundle the live naming read;
else from the bundle's Info.plist at the path with `USER` replaced by the owner of the
folder the report was found in; else from the bundle folder name. So a crash and the
app's CPU series carry the same `app`.
Each report counts once, across restarts too: the ids of seen reports are kept in
`crash.state_file` (default `~/.atlas_agent/state/crash_reports_seen.json`). Symlinks are
never followed; malformed or oversized reports are skipped and counted. On the first run
without a state file, reports already present are remembered but not counted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from atlas_exporter.apps.crashes import OTHER, CrashBook, CrashEvent
from atlas_exporter.collectors.crash.metrics import crash_metric_families
from atlas_exporter.collectors.crash.reports_darwin import (
    CRASH_BUG_TYPES,
    Report,
    ReportError,
    TooLarge,
    UnknownType,
    ips_bug_type,
    parse_crash_text,
    parse_hang_text,
    parse_ips,
    unredact,
)
from atlas_exporter.collectors.process.bundles_darwin import BundleNamer, shared_bundle_namer
from atlas_exporter.config import Config
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.model import ProcIdentity, Snapshot, Source, SourceStatus

if TYPE_CHECKING:
    from atlas_exporter.apps.resolver import AppResolver

log = logging.getLogger(__name__)

SOURCE_NAME = "diagnostic_reports"
SKIP_REASONS = ("malformed", "too_large", "unreadable", "unknown_type")
EXTENSIONS = (".ips", ".crash", ".hang")
MAX_REPORT_BYTES = 8 * 1024 * 1024  # an .ips crash body is parsed whole up to this size
TEXT_HEAD_BYTES = 64 * 1024  # text reports: only the header is read
DEFAULT_STATE_FILE = "~/.atlas_agent/state/crash_reports_seen.json"
STATE_KEEP_SECONDS = 60 * 86400.0  # macOS deletes reports after 14 days
USER_FOLDER = "Library/Logs/DiagnosticReports"
DEFAULT_FOLDERS = ("~/" + USER_FOLDER, "/" + USER_FOLDER)
USERS_ROOT = Path("/Users")

Naming = Callable[[ProcIdentity], str]


def read_report(path: Path, max_bytes: int = MAX_REPORT_BYTES) -> Report:
    """Read and parse one report file without following symlinks.

    Raises `UnknownType` (an `.ips` type that is not counted), ReportError (malformed),
    OSError (unreadable) or `TooLarge`.
    """
    suffix = path.suffix.lower()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if suffix == ".ips":
            first = handle.readline(64 * 1024)
            bug_type, _header = ips_bug_type(first.decode("utf-8", "replace"))
            if bug_type not in CRASH_BUG_TYPES:
                raise UnknownType(f"bug_type {bug_type[:16]!r} is not counted")
            if os.fstat(handle.fileno()).st_size > max_bytes:
                raise TooLarge(f"larger than {max_bytes} bytes")
            rest = handle.read(max_bytes + 1)
            return parse_ips((first + rest).decode("utf-8", "replace"))
        head = handle.read(TEXT_HEAD_BYTES).decode("utf-8", "replace")
    if suffix == ".crash":
        return parse_crash_text(head)
    return parse_hang_text(head)


class SeenReports:
    """Report ids already counted, persisted as JSON so a restart does not count them again."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.ids: dict[str, float] = {}
        self.existed = False
        self.error = ""

    def load(self) -> None:
        if self.path is None:
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            self.error = f"cannot read state file {self.path}: {err}"
            log.warning("%s; starting with an empty list", self.error)
            return
        self.existed = True
        seen = raw.get("seen") if isinstance(raw, dict) else None
        if isinstance(seen, dict):
            self.ids = {k: float(v) for k, v in seen.items() if isinstance(k, str) and isinstance(v, (int, float))}

    def __contains__(self, report_id: str) -> bool:
        return report_id in self.ids

    def add(self, report_id: str) -> None:
        self.ids[report_id] = self.clock()

    def save(self) -> None:
        if self.path is None:
            return
        horizon = self.clock() - STATE_KEEP_SECONDS
        self.ids = {k: v for k, v in self.ids.items() if v >= horizon}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".seen-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": 1, "seen": self.ids}, handle)
            os.replace(tmp, self.path)
            self.error = ""
        except OSError as err:
            if not self.error:
                log.warning("cannot write state file %s: %s", self.path, err)
            self.error = f"cannot write state file {self.path}: {err.strerror or err}"


def report_folders(extra: Iterable[str] = (), home: str | None = None) -> list[Path]:
    """The default DiagnosticReports folders with their `Retired/`, then `extra` ones."""
    folders: list[Path] = []
    for name in (*DEFAULT_FOLDERS, *extra):
        if home is not None and name.startswith("~"):
            name = home + name[1:]
        base = Path(os.path.expanduser(name))
        for folder in (base, base / "Retired"):
            if folder not in folders:
                folders.append(folder)
    return folders


def user_report_folders(users_root: Path = USERS_ROOT) -> list[tuple[Path, Path]]:
    """(folder, home) for each `<users_root>/<user>/Library/Logs/DiagnosticReports` and its `Retired/`.

    Only homes that hold such a folder are listed; an unreadable `users_root` gives none.
    """
    found: list[tuple[Path, Path]] = []
    try:
        homes = sorted(e.name for e in os.scandir(users_root) if not e.name.startswith("."))
    except OSError:
        return found
    for user in homes:
        home = users_root / user
        base = home / USER_FOLDER
        if base.is_dir():
            found.extend(((base, home), (base / "Retired", home)))
    return found


def _has_symlink(path: Path, below: Path) -> bool:
    """Whether any component of `path` under `below` is a symlink (a user could point it anywhere)."""
    try:
        return os.path.realpath(path) != os.path.join(os.path.realpath(below), os.path.relpath(path, below))
    except (OSError, ValueError):
        return True


def default_naming() -> Naming:
    """The naming rules of an empty config, with bundle display names from Info.plist."""
    from atlas_exporter.apps.naming import Namer
    from atlas_exporter.collectors.process.bundles_darwin import BundleNamer

    return naming_with_bundles(Namer(()).name, BundleNamer().name_for_exe)


def naming_with_bundles(name: Naming, bundle_of: Callable[[str | None], str | None]) -> Naming:
    """Wrap a naming callable so an identity from a report gets its bundle name from the exe path."""
    def naming(ident: ProcIdentity) -> str:
        if ident.bundle is None and ident.exe:
            ident = ProcIdentity(comm=ident.comm, exe=ident.exe, cmdline=ident.cmdline, user=ident.user,
                                 cgroup=ident.cgroup, bundle=bundle_of(ident.exe))
        return name(ident)

    return naming


class DarwinCrashSource:
    """The `crash` sub-collector on macOS: polls the report folders on a background loop.

    `all_users` (default: running as root) adds every user's folder under `users_root`.
    `bundles` names bundles by id and path; by default the process source's shared one.
    """

    name = "crash"

    def __init__(
        self,
        naming: Naming,
        *,
        folders: Iterable[Path] | None = None,
        state_file: Path | None = None,
        poll_interval_seconds: float = 10.0,
        max_report_bytes: int = MAX_REPORT_BYTES,
        clock: Callable[[], float] = time.time,
        all_users: bool | None = None,
        users_root: Path = USERS_ROOT,
        home: Path | None = None,
        bundles: BundleNamer | None = None,
    ) -> None:
        self.naming = naming
        self.folders = list(folders) if folders is not None else report_folders()
        self.all_users = os.geteuid() == 0 if all_users is None else all_users
        self.users_root = users_root
        self.home = home if home is not None else Path(os.path.expanduser("~"))
        self.bundles = bundles if bundles is not None else shared_bundle_namer()
        self.seen = SeenReports(state_file, clock)
        self.poll_interval_seconds = poll_interval_seconds
        self.max_report_bytes = max_report_bytes
        self.clock = clock
        self.book = CrashBook()
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self._files: dict[Path, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._loop = BackgroundLoop("atlas-crash-reports", self.poll, interval=lambda: self.poll_interval_seconds,
                                    log=log)
        self.loops: Sequence[BackgroundLoop] = (self._loop,)
        self._readable: list[Path] = []
        self._reasons: list[str] = []
        self._started = False

    def start(self) -> None:
        """Load the seen ids, take the first inventory, then poll every `poll_interval_seconds` on the loop."""
        if self._started:
            return
        self._started = True
        self.seen.load()
        self.poll(count=self.seen.existed or self.seen.path is None)
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=10)
        self._started = False

    def current_folders(self) -> list[tuple[Path, Path | None]]:
        """(folder, home of its owner or None) to poll now: the fixed ones, then every user's as root."""
        homes = {self.home / USER_FOLDER, self.home / USER_FOLDER / "Retired"}
        folders: list[tuple[Path, Path | None]] = [(f, self.home if f in homes else None) for f in self.folders]
        if self.all_users:
            known = set(self.folders)
            folders.extend((f, home) for f, home in user_report_folders(self.users_root) if f not in known)
        return folders

    def watched_folders(self) -> list[str]:
        """The folders the last poll could list, for the status page."""
        with self._lock:
            return [str(f) for f in self._readable]

    def _list(self) -> list[tuple[os.DirEntry[str], Path | None]]:
        entries: list[tuple[os.DirEntry[str], Path | None]] = []
        readable: list[Path] = []
        reasons: list[str] = []
        for folder, home in self.current_folders():
            try:
                if folder.is_symlink() or (home is not None and self.all_users
                                           and folder.is_relative_to(self.users_root)
                                           and _has_symlink(folder, self.users_root)):
                    reasons.append(f"{folder} is or passes through a symlink, not followed")
                    continue
                found = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            except OSError as err:
                reasons.append(f"cannot list {folder}: {err.strerror or err}")
                continue
            readable.append(folder)
            entries.extend((e, home) for e in found
                           if e.name.lower().endswith(EXTENSIONS) and not e.name.startswith("."))
        with self._lock:
            self._readable, self._reasons = readable, reasons
        return entries

    def poll(self, count: bool = True) -> int:
        """One pass over the folders; returns how many new reports were counted.

        With `count=False` new reports are only remembered (the first run's inventory).
        """
        counted = 0
        changed = False
        present: set[Path] = set()
        for entry, home in self._list():
            path = Path(entry.path)
            try:
                if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            present.add(path)
            key = (st.st_mtime_ns, st.st_size)
            if self._files.get(path) == key:
                continue
            self._files[path] = key
            try:
                report = read_report(path, self.max_report_bytes)
            except TooLarge:
                self._skip("too_large", path)
                continue
            except UnknownType as err:
                self._skip("unknown_type", path, err, level=logging.DEBUG)
                continue
            except ReportError as err:
                self._skip("malformed", path, err)
                continue
            except OSError as err:
                self._skip("unreadable", path, err)
                continue
            except Exception:  # one bad report must not lose the others of this pass
                log.exception("crash report %s could not be read", path)
                continue
            if report.report_id in self.seen:
                continue
            self.seen.add(report.report_id)
            changed = True
            if count and self._count(report, home):
                counted += 1
        self._files = {p: k for p, k in self._files.items() if p in present}
        if changed or (self.seen.path is not None and not self.seen.existed):
            self.seen.save()
            self.seen.existed = self.seen.existed or not self.seen.error
        return counted

    def identity(self, report: Report, home: Path | None = None) -> ProcIdentity:
        """The identity the naming rules see for a report found in the folder of `home`'s owner.

        The bundle's display name comes from its id (what the live naming read), else from
        its Info.plist at the unredacted path, else from its folder name.
        """
        exe = unredact(report.proc_path, home)
        bundle = self.bundles.name_for_bundle_id(report.bundle_id) if report.bundle_id else None
        if bundle is None and exe and ".." not in exe.split("/"):  # the path is the report writer's text
            bundle = self.bundles.name_for_exe(exe)
        return ProcIdentity(comm=report.proc_name, exe=exe, bundle=bundle)

    def _count(self, report: Report, home: Path | None = None) -> bool:
        try:
            app = self.naming(self.identity(report, home))
        except Exception:  # a naming failure (a bundle, a rule) must not lose the report
            log.debug("naming failed for %s", report.proc_name, exc_info=True)
            try:
                app = self.naming(ProcIdentity(comm=report.proc_name))  # still through the one resolver
            except Exception:
                log.debug("naming failed again for %s", report.proc_name, exc_info=True)
                app = OTHER
        if report.kind == "hang":
            self.book.record_hang(app)
            log.info("hang report: app=%s pid=%s", app, report.pid)
            return True
        when = report.time if report.time is not None else self.clock()
        log.info("crash report: app=%s pid=%s reason=%s", app, report.pid, report.reason)
        return self.book.record_crash(CrashEvent(source=SOURCE_NAME, time=when, reason=report.reason, app=app,
                                                 pid=report.pid, comm=report.proc_name))

    def _skip(self, reason: str, path: Path, err: object = "", level: int = logging.INFO) -> None:
        log.log(level, "skipped crash report %s (%s) %s", path, reason, err)
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def statuses(self) -> list[SourceStatus]:
        if not self._started:
            return [SourceStatus(SOURCE_NAME, False, "none", "not started")]
        with self._lock:
            readable, reasons = list(self._readable), list(self._reasons)
        active = bool(readable)
        if not active:
            reasons.insert(0, "no report folder is readable")
        if self.seen.error:
            reasons.append(self.seen.error)
        privilege = "root" if os.geteuid() == 0 else "user"
        return [SourceStatus(SOURCE_NAME, active, privilege if active else "none", "; ".join(reasons),
                             details=tuple(f"watching {f}" for f in readable))]

    def retire(self, apps: Iterable[str]) -> None:
        """Drop the crash and hang counts of apps the scan retired, with their process series."""
        self.book.retire(apps)

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        with self._lock:
            skipped = dict(self.skipped)
        return crash_metric_families(self.book, self.statuses(), skipped, hang_apps=snapshot.apps)


def make_crash_source(config: Config, procfs: Path, resolver: AppResolver) -> Source | None:
    """The macOS `crash` sub-collector over the DiagnosticReports folders and `crash.report_dirs`.

    Reports are named by the resolver (`app_for_identity`: the naming rules, cleaning and the
    `max_apps` fold), as every app label is; the identity carries the bundle's display name
    (see `DarwinCrashSource.identity`). As root it also watches every user's folder under /Users.
    """
    state = Path(os.path.expanduser(config.crash.state_file or DEFAULT_STATE_FILE))
    return DarwinCrashSource(resolver.app_for_identity, folders=report_folders(config.crash.report_dirs),
                             state_file=state)
