"""`atlas-exporter --self-check`: compare what the exporter reads with independent tools.

Fixtures test the parsers; only the real machine can say whether the kernel fills in what
the parsers expect. The self-check reads the process table the way the exporter does (the
same process source and naming rules), picks the apps that used the most CPU over a few
seconds plus the app of its own process, and compares their readings with:

- psutil (both platforms): CPU seconds, resident and virtual bytes, threads, open fds, and
  on Linux storage read and written bytes;
- `ps -o pid=,rss=,time=` (and `nlwp` on Linux, `ps -M` thread lines on macOS): the
  processes of each app, resident bytes, CPU seconds, threads;
- on macOS, a second `nettop` run parsed by a separate plain CSV reader (the app's byte
  totals), and a plain listing of the DiagnosticReports folders (crash and hang reports
  present, against what the watcher's parsers accept).

Every reference is read just before and just after the exporter's reading, and the
exporter's value must lie within that range widened by the quantity's tolerance
(`TOLERANCES`). Values the exporter leaves absent while a reference can read them count as
disagreements; values no reference can read (another user's process, unprivileged) are not
compared. It prints one table (app, quantity, exporter, reference, difference, verdict), a
line per data source saying whether it was used and why not, and returns 0 when every row
agrees, 1 otherwise. Nothing here needs root or writes a file.

This module runs the check; the references are in `references`, the tolerances,
result and report in `report`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from atlas_exporter.apps.naming import Namer
from atlas_exporter.apps.resolver import AppResolver
from atlas_exporter.config import Config
from atlas_exporter.model import ProcessScan, ProcessSource, ProcSample
from atlas_exporter.selfcheck.references import (
    PsReference,
    PsutilReference,
    Reading,
    Reference,
    parse_nettop_reference,
    reference_report_kind,
    run_command,
)
from atlas_exporter.selfcheck.report import TOLERANCES, Result, Row, SourceLine, privilege_word, render

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 3.0
DEFAULT_TOP_APPS = 5
MAX_PIDS_PER_APP = 64  # a browser with hundreds of helpers is compared on its 64 biggest


@dataclass(slots=True)
class AppPids:
    app: str
    pids: list[int]
    is_self: bool = False


class SelfCheck:
    """Runs the comparison. Every outside dependency is injectable; the defaults are the real machine."""

    def __init__(self, source: ProcessSource, namer: Namer, *, max_apps: int = 500,
                 psutil_reference: Reference | None = None, ps_reference: Reference | None = None,
                 nettop: Callable[[], str] | None = None, exporter_nettop: Callable[[], str] | None = None,
                 report_folders: Callable[[], list[tuple[Path, Path | None]]] | None = None,
                 darwin: bool = sys.platform == "darwin", interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
                 top: int = DEFAULT_TOP_APPS, sleep: Callable[[float], None] = time.sleep,
                 own_pid: int | None = None, include: Iterable[str] = ()) -> None:
        self.source = source
        self.resolver = AppResolver(source, namer, max_apps)
        self.psutil_reference = psutil_reference
        self.ps_reference = ps_reference
        self.nettop = nettop
        self.exporter_nettop = exporter_nettop or nettop
        self.report_folders = report_folders
        self.darwin = darwin
        self.interval_seconds = interval_seconds
        self.top = top
        self.sleep = sleep
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.include = tuple(include)  # apps compared whether or not they are among the top

    # the exporter's side

    def _by_app(self, scan: ProcessScan) -> dict[str, list[ProcSample]]:
        apps: dict[str, list[ProcSample]] = {}
        for sample in scan.samples:
            app = self.resolver.app_for(sample)
            if app is not None:
                apps.setdefault(app, []).append(sample)
        return apps

    def choose(self, first: ProcessScan, second: ProcessScan) -> list[AppPids]:
        """The `top` apps by CPU used between two scans (among readable processes), the `include`d ones,
        then this process's app."""
        before = {s.id: (s.cpu_user_seconds or 0.0) + (s.cpu_system_seconds or 0.0) for s in first.samples}
        used: dict[str, float] = {}
        apps = self._by_app(second)
        for app, samples in apps.items():
            for s in samples:
                if s.cpu_user_seconds is None and s.cpu_system_seconds is None:
                    continue
                now = (s.cpu_user_seconds or 0.0) + (s.cpu_system_seconds or 0.0)
                used[app] = used.get(app, 0.0) + max(0.0, now - before.get(s.id, now))
        own = next((app for app, samples in apps.items() if any(s.id.pid == self.own_pid for s in samples)), None)
        chosen = [a for a in sorted(used, key=lambda a: (-used[a], a)) if a != own][: self.top]
        chosen += [a for a in self.include if a in apps and a not in chosen and a != own]
        result = []
        for app in chosen:
            samples = sorted(apps[app], key=lambda s: -(s.resident_bytes or 0))[:MAX_PIDS_PER_APP]
            result.append(AppPids(app, [s.id.pid for s in samples]))
        if own is not None:
            result.append(AppPids(own, [s.id.pid for s in apps[own]][:MAX_PIDS_PER_APP], is_self=True))
        return result

    def run(self) -> Result:
        result = Result()
        try:
            first = self.source.scan()
            self.sleep(self.interval_seconds)
            second = self.source.scan()
        except OSError as err:
            result.errors.append(f"cannot read the process table: {err}")
            return result
        statuses = "; ".join(f"{s.name}: {'active' if s.active else 'off'} as {s.privilege or '?'}"
                             + (f" ({s.reason})" if s.reason else "") for s in self.source.statuses())
        result.sources.append(SourceLine("exporter process source", True,
                                         f"{len(second.samples)} processes read; {statuses}"))
        chosen = self.choose(first, second)
        pids = sorted({p for a in chosen for p in a.pids})
        references: list[Reference] = [r for r in (self.psutil_reference, self.ps_reference) if r is not None]
        before: dict[str, dict[int, Reading]] = {}
        failed: dict[str, str] = {}
        for ref in references:
            try:
                before[ref.name] = ref.read(pids)
            except OSError as err:
                failed[ref.name] = str(err)
        try:
            third = self.source.scan()
        except OSError as err:
            result.errors.append(f"cannot read the process table: {err}")
            return result
        after: dict[str, dict[int, Reading]] = {}
        for ref in references:
            if ref.name in failed:
                continue
            try:
                after[ref.name] = ref.read(pids)
            except OSError as err:
                failed[ref.name] = str(err)
        samples = scanned = {s.id.pid: s for s in third.samples}
        if "psutil" in before:
            # pids are reused quickly on a busy machine: compare only processes psutil saw with the same
            # start time before and after the exporter's reading (so the exporter read that process too),
            # and under the same name (a process in the middle of an exec is briefly unreadable)
            same = {pid for pid, b in before["psutil"].items()
                    if b.start_time is not None and pid in after["psutil"]
                    and (after["psutil"][pid].start_time, after["psutil"][pid].name) == (b.start_time, b.name)}
            samples = {pid: s for pid, s in samples.items() if pid in same}
        for ref in references:
            if ref.name in failed:
                result.sources.append(SourceLine(ref.name, False, failed[ref.name]))
            else:
                result.sources.append(SourceLine(ref.name, True, ref.detail))
        if self.psutil_reference is None:
            result.sources.append(SourceLine("psutil", False, "not installed"))
        for app in chosen:
            label = f"{app.app} (self)" if app.is_self else app.app
            if "ps" in before:
                # chosen pids were alive at the second scan: one the third scan has must be in ps before or after
                result.rows.append(self._processes_row(label, app.pids, scanned, before["ps"], after["ps"]))
            for ref_name, quantities in (
                ("psutil", ("cpu_seconds", "resident_bytes", "virtual_bytes", "threads", "open_fds",
                            *(() if self.darwin else ("disk_read_bytes", "disk_written_bytes")))),
                ("ps", ("cpu_seconds", "resident_bytes", "threads")),
            ):
                if ref_name not in before:
                    continue
                for quantity in quantities:
                    row = self._compare(label, quantity, ref_name, app.pids, samples, before[ref_name],
                                        after[ref_name])
                    if row is not None:
                        result.rows.append(row)
        if self.darwin:
            self._network(chosen, result)
            self._reports(result)
        else:
            result.sources.append(SourceLine("nettop", False, "macOS only; Linux network bytes come from sock_diag "
                                             "and have no independent per-process reference"))
            result.sources.append(SourceLine("DiagnosticReports", False, "macOS only"))
        return result

    def _processes_row(self, label: str, pids: list[int], samples: dict[int, ProcSample],
                       before: dict[int, Reading], after: dict[int, Reading]) -> Row:
        counted = [p for p in pids if p in samples]
        alive = sum(1 for p in counted if p in before or p in after)
        return Row(label, "processes (ps)", len(counted), alive, alive, alive, TOLERANCES["processes"])

    def _compare(self, label: str, quantity: str, ref_name: str, pids: list[int], samples: dict[int, ProcSample],
                 before: dict[int, Reading], after: dict[int, Reading]) -> Row | None:
        exporter = low = high = 0.0
        compared = absent = 0
        for pid in pids:
            sample = samples.get(pid)
            b, a = before.get(pid), after.get(pid)
            if sample is None or b is None or a is None:
                continue  # started or ended during the check
            rb, ra = getattr(b, quantity), getattr(a, quantity)
            if rb is None or ra is None:
                continue  # the reference cannot read it either
            value = exporter_value(sample, quantity)
            if value is None:
                absent += 1
                continue
            compared += 1
            exporter += value
            low += min(rb, ra)
            high += max(rb, ra)
        if not compared and not absent:
            return None
        key = "cpu_seconds_ps" if quantity == "cpu_seconds" and ref_name == "ps" else quantity
        name = f"{quantity} ({ref_name})"
        if absent:
            return Row(label, name, None, (low + high) / 2, low, high, TOLERANCES[key],
                       note=f"absent from the exporter for {absent} process(es) {ref_name} can read")
        return Row(label, name, exporter, (low + high) / 2, low, high, TOLERANCES[key], processes=compared)

    def _network(self, chosen: list[AppPids], result: Result) -> None:
        if self.nettop is None or self.exporter_nettop is None:
            result.sources.append(SourceLine("nettop", False, "not found"))
            return
        from atlas_exporter.collectors.network.source_darwin import parse_nettop_csv

        try:
            ref_before = parse_nettop_reference(self.nettop())
            frame = parse_nettop_csv(self.exporter_nettop())
            ref_after = parse_nettop_reference(self.nettop())
        except OSError as err:
            result.sources.append(SourceLine("nettop", False, str(err)))
            return
        if frame is None:
            result.sources.append(SourceLine("nettop", False, "no bytes_in/bytes_out header in its output"))
            return
        result.sources.append(SourceLine("nettop", True, f"{len(frame.rows)} processes with network rows"))
        for app in chosen:
            label = f"{app.app} (self)" if app.is_self else app.app
            for index, direction in ((0, "receive"), (1, "transmit")):
                pids = [p for p in app.pids if p in frame.rows and p in ref_before and p in ref_after]
                if not pids:
                    continue
                exporter = sum((frame.rows[p].bytes_in, frame.rows[p].bytes_out)[index] for p in pids)
                low = sum(min(ref_before[p][index], ref_after[p][index]) for p in pids)
                high = sum(max(ref_before[p][index], ref_after[p][index]) for p in pids)
                result.rows.append(Row(label, f"network_{direction}_bytes (nettop)", exporter, (low + high) / 2, low,
                                       high, TOLERANCES["network_bytes"]))

    def _reports(self, result: Result) -> None:
        if self.report_folders is None:
            result.sources.append(SourceLine("DiagnosticReports", False, "no folders to check"))
            return
        from atlas_exporter.collectors.crash.reports_darwin import ReportError
        from atlas_exporter.collectors.crash.source_darwin import read_report

        listed = 0
        denied: list[str] = []
        for folder, _home in self.report_folders():
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                continue
            except OSError as err:
                denied.append(f"{folder}: {err.strerror or err}")
                continue
            listed += 1
            reference = parsed = 0
            for name in names:
                path = folder / name
                kind = reference_report_kind(path)
                if kind is None:
                    continue
                reference += 1
                try:
                    read_report(path)
                    parsed += 1
                except (ReportError, OSError):
                    pass
            if reference or parsed:
                result.rows.append(Row(str(folder), "crash and hang reports", parsed, reference, reference, reference,
                                       TOLERANCES["reports"]))
        detail = f"{listed} folder(s) listed"
        if denied:
            detail += "; cannot list " + ", ".join(denied)
        result.sources.append(SourceLine("DiagnosticReports", listed > 0, detail))


def exporter_value(sample: ProcSample, quantity: str) -> float | None:
    """The exporter's reading of one quantity from one process sample."""
    if quantity == "cpu_seconds":
        if sample.cpu_user_seconds is None and sample.cpu_system_seconds is None:
            return None
        return (sample.cpu_user_seconds or 0.0) + (sample.cpu_system_seconds or 0.0)
    if quantity == "resident_bytes":
        return sample.resident_bytes
    if quantity == "threads":
        return sample.threads
    if quantity == "open_fds":
        return sample.open_fds
    if quantity == "virtual_bytes":
        return sample.virtual_bytes
    if quantity == "disk_read_bytes":
        return sample.read_bytes
    if quantity == "disk_written_bytes":
        return sample.written_bytes
    raise KeyError(quantity)


def build(config: Config, procfs: Path, *, interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
          process_source: ProcessSource | None = None) -> SelfCheck:
    """A self-check over this machine's real process source and reference tools."""
    from atlas_exporter import platform

    darwin = platform.IS_DARWIN
    source = process_source or platform.build_process_source(procfs)
    try:
        psutil_ref: PsutilReference | None = PsutilReference(darwin)
    except ImportError:
        psutil_ref = None
    nettop = exporter_nettop = folders = None
    if darwin:
        from atlas_exporter.collectors.crash.source_darwin import DarwinCrashSource, report_folders
        from atlas_exporter.collectors.network.source_darwin import NETTOP, NETTOP_ARGS

        command = NETTOP if os.path.exists(NETTOP) else shutil.which("nettop")
        if command:
            def nettop() -> str:
                return run_command([command, *NETTOP_ARGS], timeout=config.network.nettop_timeout_seconds * 2)
            exporter_nettop = nettop
        crash = DarwinCrashSource(Namer(config.apps).name, folders=report_folders(config.crash.report_dirs),
                                  state_file=None)
        folders = crash.current_folders
    return SelfCheck(source, Namer(config.apps), max_apps=config.max_apps, psutil_reference=psutil_ref,
                     ps_reference=PsReference(darwin=darwin), nettop=nettop, exporter_nettop=exporter_nettop,
                     report_folders=folders, darwin=darwin, interval_seconds=interval_seconds)


def main(config: Config, procfs: Path, out: TextIO | None = None, *,
         interval_seconds: float | None = None) -> int:
    """Run the self-check on this machine and print its report; 0 when everything agrees."""
    from atlas_exporter import platform

    check = build(config, procfs, interval_seconds=DEFAULT_INTERVAL_SECONDS if interval_seconds is None
                  else interval_seconds)
    result = check.run()
    render(result, out or sys.stdout, platform_name=platform.PLATFORM_NAME, privilege=privilege_word())
    return 0 if result.ok else 1

