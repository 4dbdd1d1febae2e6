"""The systemd-coredump and apport report folders: new report files, turned into crash events.

`ReportFolders.poll()` lists /var/lib/systemd/coredump and /var/crash (plus `crash.report_dirs`),
and returns a `CrashEvent` for each new or rewritten report that is trusted (owned by root or
by the user its process ran as); the crash source records them:

    atlas_app_crashes_total{app="tool",reason="other"} 1.0        (a systemd-coredump file name)
    atlas_app_crashes_total{app="crashme",reason="SIGSEGV"} 1.0   (an apport report)
    atlas_crash_reports_skipped_total{reason="untrusted_owner"} 1.0

A core dump is never read; of an apport report only its head (`MAX_REPORT_BYTES`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from atlas_exporter.apps.crashes import CrashEvent, reason_of_signal
from atlas_exporter.apps.resolver import AppNaming
from atlas_exporter.collectors.crash.pids_linux import PidApps
from atlas_exporter.collectors.crash.readers_linux import FileState, file_state, read_report_head
from atlas_exporter.collectors.crash.reports_linux import (
    ApportReport,
    apport_name_executable,
    apport_name_uid,
    parse_apport_headers,
    parse_coredump_name,
)
from atlas_exporter.model import SourceStatus

log = logging.getLogger(__name__)

COREDUMP_DIR = Path("/var/lib/systemd/coredump")
APPORT_DIR = Path("/var/crash")
MAX_REPORT_BYTES = 1024 * 1024  # apport headers are read up to here; a core dump is never read


class ReportFolders:
    """The `systemd_coredump` and `apport` crash sources: report files seen since the start.

    `detect()` takes the baseline (reports already there are not counted) and says which
    folders can be listed; `poll()` returns the crash events of new reports. `skip(reason)`
    counts a report that cannot be used.
    """

    def __init__(self, naming: AppNaming, pids: PidApps, skip: Callable[[str], None], *,
                 coredump_dir: Path = COREDUMP_DIR, report_dirs: Iterable[Path] = (APPORT_DIR,)) -> None:
        self.naming = naming
        self.pids = pids
        self.skip = skip
        self.coredump_dir = coredump_dir
        self.report_dirs = tuple(report_dirs)
        self.files: dict[Path, FileState] = {}
        self.coredump_active = False
        self.apport_active = False

    def detect(self, privilege: str, handler: str) -> tuple[SourceStatus, SourceStatus]:
        """The statuses of `systemd_coredump` and `apport`; what the folders hold now is the baseline."""
        coredump = self._detect_dir("systemd_coredump", [self.coredump_dir], privilege, handler)
        apport = self._detect_dir("apport", list(self.report_dirs), privilege, handler)
        self.coredump_active, self.apport_active = coredump.active, apport.active
        return coredump, apport

    def _detect_dir(self, name: str, folders: list[Path], privilege: str, handler: str) -> SourceStatus:
        readable = []
        reasons = []
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                reasons.append(f"{folder} does not exist")
                continue
            except OSError as err:
                reasons.append(f"cannot list {folder}: {err.strerror or err}")
                continue
            readable.append(folder)
            for entry in entries:
                state = file_state(entry)
                if state is not None:
                    self.files[Path(entry.path)] = state
        handler_note = f" (core_pattern handler: {handler})" if not readable else ""
        return SourceStatus(name, bool(readable), privilege if readable else "none",
                            "; ".join(reasons) + handler_note if not readable else "")

    def poll(self) -> list[CrashEvent]:
        """The crash events of reports new since the last poll; a report that fails is logged and skipped."""
        found: list[tuple[Path, FileState, Callable[[Path, FileState], CrashEvent | None]]] = []
        if self.coredump_active:
            found.extend((path, state, self._on_coredump) for path, state in self._new_files([self.coredump_dir]))
        if self.apport_active:
            found.extend((path, state, self._on_apport)
                         for path, state in self._new_files(self.report_dirs, suffix=".crash"))
        events = []
        for path, state, handle in found:
            try:
                event = handle(path, state)
            except Exception:  # one bad report must not lose the others of this pass
                log.exception("crash report %r could not be read", str(path))
                continue
            if event is not None:
                events.append(event)
        return events

    def _new_files(self, folders: Iterable[Path], suffix: str = "") -> list[tuple[Path, FileState]]:
        """New or rewritten files in `folders`; files gone from them are forgotten."""
        found = []
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # unlistable now: what was seen there is kept
            present = {Path(entry.path) for entry in entries}
            for path in [p for p in self.files if p.parent == folder and p not in present]:
                del self.files[path]
            for entry in entries:
                if suffix and not entry.name.endswith(suffix):
                    continue
                if entry.is_symlink():
                    continue
                state = file_state(entry)
                path = Path(entry.path)
                if state is None:
                    continue
                previous = self.files.get(path)
                self.files[path] = state
                if previous is None or previous.mtime_ns != state.mtime_ns:
                    found.append((path, state))
        return found

    def _trusted_owner(self, path: Path, owner: int, process_uid: int | None) -> bool:
        """A report counts only when root or the user its process ran as owns the file.

        Report folders such as /var/crash are world-writable: anyone can drop a file there
        whose name or content claims a crash of another user's program.
        """
        if owner == 0 or (process_uid is not None and owner == process_uid):
            return True
        self.skip("untrusted_owner")
        log.info("crash report %r not counted: owned by uid %d, its process ran as uid %s",
                 str(path), owner, process_uid)
        return False

    def _on_coredump(self, path: Path, state: FileState) -> CrashEvent | None:
        parsed = parse_coredump_name(path.name)
        if parsed is None:
            if not path.name.startswith(".#"):  # systemd writes a hidden temporary file first
                self.skip("malformed")
            return None
        if not self._trusted_owner(path, state.uid, parsed.uid):
            return None
        app = self.pids.app(parsed.pid) or self.naming.name_for(parsed.comm)
        return CrashEvent(source="systemd_coredump", time=parsed.time, reason="other", app=app,
                          pid=parsed.pid, comm=parsed.comm)

    def _on_apport(self, path: Path, state: FileState) -> CrashEvent | None:
        guess = apport_name_executable(path.name)
        if guess is None:
            self.skip("malformed")
            return None
        name_uid = apport_name_uid(path.name)
        if not self._trusted_owner(path, state.uid, name_uid):
            return None
        report: ApportReport | None = None
        try:
            head = read_report_head(path, MAX_REPORT_BYTES)
        except PermissionError:
            head = None  # names are world-visible, contents are not
        except OSError:
            self.skip("unreadable")
            return None
        if head is not None:
            opened, text = head
            report = parse_apport_headers(text)
            # the file may have been replaced since it was listed, and a user's own file must
            # not claim, in its content, a process of another user
            claimed = name_uid if report.uid is None or report.uid == name_uid else None
            if not self._trusted_owner(path, opened.uid, claimed):
                return None
        if report is not None and report.problem_type not in (None, "Crash"):
            return None
        executable = report.executable if report and report.executable else None
        pid = report.pid if report else None
        app = self.pids.app(pid) if pid is not None else None
        if app is None:
            # comm is the first 15 bytes of the executable's name
            comm = os.path.basename(executable)[:15] if executable else guess
            app = self.naming.name_for(comm, exe=executable)
        when = report.time if report and report.time else state.mtime_ns / 1e9
        reason = reason_of_signal(report.signal) if report and report.signal is not None else "other"
        return CrashEvent(source="apport", time=when, reason=reason, app=app, pid=pid)
