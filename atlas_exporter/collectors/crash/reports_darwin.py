"""Pure parsers of macOS crash and hang reports: `.ips` (JSON), legacy text `.crash`, spindump `.hang`.

Each takes the report's text and returns a `Report` (kind, id, process name and path, bundle id,
pid, reason, time) or raises `ReportError`; the watcher in `source_darwin.py` counts them as

    atlas_app_crashes_total{app="MarkdownEditor",reason="SIGSEGV"} 1.0
    atlas_app_hangs_total{app="RedLemon"} 1.0
    atlas_crash_reports_skipped_total{reason="unknown_type"} 3.0

Formats:
- `.ips`: a one-line JSON header then a JSON body. `bug_type` "309" is a crash and "409"
  (SystemWatchdogCrash, e.g. WindowServer killed by the watchdog) a crash with
  `reason="watchdog"`. Every other type is skipped and counted as `unknown_type`, without
  guessing: "308" (OSFault) is `os_fault_with_payload`, a simulated crash after which
  the process runs on (xnu `bsd/kern/kern_exit.c`), "509" (TerminatingStackshot) is a
  stackshot taken while a process is ended, whose death has its own report, and no source
  documents the hang codes "11"/"12" on macOS ("228" is iOS's runloop hang).
- legacy text `.crash` (macOS 11 and older) and spindump `.hang` reports (hangs).
`.ips` files redact home folders (`/Users/USER/...`); `unredact` puts the owner's home back.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from atlas_exporter.apps.crashes import OTHER, reason_of_name

WATCHDOG = "watchdog"
# bug_type -> fixed crash reason (None: from the report's signal)
CRASH_BUG_TYPES: dict[str, str | None] = {"309": None, "409": WATCHDOG}
REDACTED_HOME = "/Users/USER/"


class ReportError(ValueError):
    """A report file that is not in the format its name promises."""


class UnknownType(ReportError):
    """An `.ips` report of a type that is neither counted as a crash nor as a hang."""


@dataclass(frozen=True, slots=True)
class Report:
    """One crash or hang report, as far as counting needs it."""

    kind: str  # "crash" or "hang"
    report_id: str
    proc_name: str
    proc_path: str | None
    bundle_id: str | None
    pid: int | None
    reason: str  # crashes: signal name or "other"; hangs: "hang"
    time: float | None  # Unix time of the incident


def _ips_time(text: Any) -> float | None:
    """`2022-08-03 20:36:47.00 +0900` (header) or `2022-08-03 20:36:44.3125 +0900` (body)."""
    if not isinstance(text, str):
        return None
    match = re.match(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d+))? ([+-]\d{4})$", text.strip())
    if match is None:
        return None
    try:
        base = datetime.strptime(f"{match[1]} {match[3]}", "%Y-%m-%d %H:%M:%S %z").timestamp()
    except ValueError:
        return None
    return base + (float("0." + match[2]) if match[2] else 0.0)


def ips_bug_type(first_line: str) -> tuple[str, dict[str, Any]]:
    """The `bug_type` (as a string) and the header object of an `.ips` file's first line."""
    try:
        header = json.loads(first_line)
    except ValueError as err:
        raise ReportError(f"header is not JSON: {err}") from None
    if not isinstance(header, dict) or "bug_type" not in header:
        raise ReportError("header has no bug_type")
    return str(header["bug_type"]), header


def parse_ips(text: str) -> Report:
    """Parse an `.ips` report; raises `UnknownType` for a type that is not counted."""
    first, _, body_text = text.partition("\n")
    bug_type, header = ips_bug_type(first)
    if bug_type not in CRASH_BUG_TYPES:
        raise UnknownType(f"bug_type {bug_type[:16]!r} is not counted")
    fixed_reason = CRASH_BUG_TYPES[bug_type]
    body: dict[str, Any] = {}
    if body_text.strip():
        try:
            parsed = json.loads(body_text)
        except ValueError as err:
            if fixed_reason is None:
                raise ReportError(f"crash body is not JSON: {err}") from None
            parsed = {}  # a watchdog report counts from its header alone
        body = parsed if isinstance(parsed, dict) else {}
    elif fixed_reason is None:
        raise ReportError("crash report has no body")
    report_id = header.get("incident_id") or body.get("incident")
    name = body.get("procName") or header.get("app_name") or header.get("name")
    if not isinstance(report_id, str) or not report_id or not isinstance(name, str) or not name:
        raise ReportError("report has no incident id or process name")
    bundle_info = _object(body.get("bundleInfo"))
    bundle_id = bundle_info.get("CFBundleIdentifier") or header.get("bundleID")
    pid = body.get("pid")
    path = body.get("procPath")
    if fixed_reason is not None:
        reason = fixed_reason
    else:
        exception = _object(body.get("exception"))
        termination = _object(body.get("termination"))
        signal_name = exception.get("signal")
        if not signal_name and termination.get("namespace") == "SIGNAL":
            signal_name = _signal_from_indicator(str(termination.get("indicator", "")))
        reason = reason_of_name(signal_name) if isinstance(signal_name, str) else OTHER
    when = _ips_time(body.get("captureTime")) or _ips_time(header.get("timestamp"))
    return Report(kind="crash", report_id=report_id, proc_name=name, proc_path=path if isinstance(path, str) else None,
                  bundle_id=bundle_id if isinstance(bundle_id, str) and bundle_id else None,
                  pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None, reason=reason, time=when)


def _object(value: Any) -> dict[str, Any]:
    """A JSON object field, or an empty one when the report holds anything else there."""
    return value if isinstance(value, dict) else {}


_INDICATORS = {"segmentation fault": "SIGSEGV", "abort trap": "SIGABRT", "bus error": "SIGBUS",
               "illegal instruction": "SIGILL", "floating point exception": "SIGFPE",
               "bad system call": "SIGSYS", "trace/bpt trap": "SIGTRAP"}


def _signal_from_indicator(text: str) -> str | None:
    """`Segmentation fault: 11` -> SIGSEGV (the number is macOS's, so match the words)."""
    lower = text.lower()
    return next((sig for words, sig in _INDICATORS.items() if lower.startswith(words)), None)


_FIELD = re.compile(r"^(?P<key>[A-Za-z][A-Za-z /]*?):\s+(?P<value>.*?)\s*$")


def _text_fields(text: str) -> dict[str, str]:
    """`Key:   value` header lines, first occurrence wins (later blocks repeat keys)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match and match["key"] not in fields:
            fields[match["key"]] = match["value"]
    return fields


def _text_time(text: str | None) -> float | None:
    """`2021-04-03 11:41:44.312 +0900`."""
    if not text:
        return None
    return _ips_time(text)


def _name_and_pid(value: str | None) -> tuple[str | None, int | None]:
    """`CrashingTest [8256]` -> ("CrashingTest", 8256)."""
    if not value:
        return None, None
    match = re.match(r"^(?P<name>.*?)\s*\[(?P<pid>\d+)\]$", value)
    if match is None:
        return value, None
    return match["name"], int(match["pid"])


def _fallback_id(*parts: object) -> str:
    return "sha1:" + hashlib.sha1("|".join(str(p) for p in parts).encode("utf-8", "replace")).hexdigest()


def parse_crash_text(text: str) -> Report:
    """Parse the header of a legacy text `.crash` report."""
    fields = _text_fields(text)
    name, pid = _name_and_pid(fields.get("Process"))
    if not name or "Date/Time" not in fields:
        raise ReportError("not a crash report: no Process or Date/Time")
    signal_name = None
    exception = fields.get("Exception Type", "")
    match = re.search(r"\((SIG[A-Z0-9]+)\)", exception)
    if match:
        signal_name = match[1]
    elif fields.get("Termination Signal"):
        signal_name = _signal_from_indicator(fields["Termination Signal"])
    report_id = fields.get("Incident Identifier") or _fallback_id(name, pid, fields["Date/Time"])
    return Report(kind="crash", report_id=report_id, proc_name=name, proc_path=fields.get("Path"),
                  bundle_id=fields.get("Identifier"), pid=pid, reason=reason_of_name(signal_name),
                  time=_text_time(fields.get("Date/Time")))


def parse_hang_text(text: str) -> Report:
    """Parse the header of a spindump `.hang` report (`Command:`, `PID:`, `Event: hang`)."""
    fields = _text_fields(text)
    name = fields.get("Command")
    if not name or "Date/Time" not in fields:
        raise ReportError("not a hang report: no Command or Date/Time")
    event = fields.get("Event", "hang").lower()
    if "hang" not in event and "unresponsive" not in event:
        raise ReportError(f"spindump event is {event!r}, not a hang")
    pid = None
    if fields.get("PID", "").isdigit():
        pid = int(fields["PID"])
    report_id = fields.get("Incident Identifier") or _fallback_id(name, pid, fields["Date/Time"])
    return Report(kind="hang", report_id=report_id, proc_name=name, proc_path=fields.get("Path"),
                  bundle_id=fields.get("Identifier"), pid=pid, reason="hang", time=_text_time(fields.get("Date/Time")))


class TooLarge(ReportError):
    """A report over the size limit."""


def unredact(path: str | None, home: Path | None) -> str | None:
    """`/Users/USER/x` -> `<home>/x`: `.ips` reports replace the home folder's user name with USER."""
    if path is None or home is None or not path.startswith(REDACTED_HOME):
        return path
    return str(home) + "/" + path[len(REDACTED_HOME):]
