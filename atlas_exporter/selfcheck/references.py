"""The self-check's references: independent readings of the same processes, kept apart from the exporter's code.

Each reference returns pid -> `Reading` for the pids asked for, None where it cannot read a value:

- `PsutilReference`: psutil (its own /proc parsing on Linux, sysctl/libproc in C on macOS);
- `PsReference`: `ps -o pid=,rss=,time=` (plus `nlwp` on Linux, one `ps -M` per process on macOS);
- `parse_nettop_reference(text)`: a plain CSV reader of `nettop` output, pid -> (bytes in, bytes out);
- `reference_report_kind(path)`: a plain reading of a DiagnosticReports file, "crash", "hang" or None.

    parse_ps_rows("  4312  20480 00:01:05 7\n", with_threads=True)
        {4312: Reading(cpu_seconds=65.0, resident_bytes=20971520, threads=7)}
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

MAX_PS_THREAD_CALLS = 48  # macOS: one `ps -M` per process; the threads of further processes are not compared


@dataclass(frozen=True, slots=True)
class Reading:
    """One process as a reference tool sees it; None where that tool cannot read the value."""

    cpu_seconds: float | None = None
    resident_bytes: int | None = None
    threads: int | None = None
    open_fds: int | None = None
    disk_read_bytes: int | None = None
    disk_written_bytes: int | None = None
    virtual_bytes: int | None = None
    start_time: float | None = None  # psutil's create_time: the same before and after means the same process
    name: str | None = None  # psutil's name: the same before and after means it did not exec in between



class Reference(Protocol):
    """A reference tool: its `name`, what `detail` the report shows for it, and its readings of pids."""

    name: str

    @property
    def detail(self) -> str: ...

    def read(self, pids: Iterable[int]) -> dict[int, Reading]: ...


class PsutilReference:
    """psutil's view of a process (its own code: /proc parsing on Linux, sysctl/libproc in C on macOS)."""

    name = "psutil"

    def __init__(self, darwin: bool = sys.platform == "darwin") -> None:
        import psutil

        self._psutil = psutil
        self.darwin = darwin
        self.version = psutil.__version__

    @property
    def detail(self) -> str:
        return f"version {self.version}"

    def read(self, pids: Iterable[int]) -> dict[int, Reading]:
        psutil = self._psutil
        out: dict[int, Reading] = {}
        for pid in pids:
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                continue
            values: dict[str, Any] = {}
            with proc.oneshot():
                for key, get in (
                    ("start_time", lambda p: p.create_time()),
                    ("name", lambda p: p.name()),
                    ("cpu_seconds", lambda p: p.cpu_times().user + p.cpu_times().system),
                    ("resident_bytes", lambda p: p.memory_info().rss),
                    ("threads", lambda p: p.num_threads()),
                    ("open_fds", lambda p: p.num_fds()),
                    ("virtual_bytes", lambda p: p.memory_info().vms),
                    ("disk_read_bytes", None if self.darwin else (lambda p: p.io_counters().read_bytes)),
                    ("disk_written_bytes", None if self.darwin else (lambda p: p.io_counters().write_bytes)),
                ):
                    if get is None:
                        continue
                    try:
                        values[key] = get(proc)
                    except psutil.NoSuchProcess:
                        values = {}
                        break
                    except (psutil.AccessDenied, psutil.ZombieProcess, OSError, AttributeError):
                        continue
            if values:
                out[pid] = Reading(**values)
        return out


def parse_ps_time(text: str) -> float:
    """`ps -o time` as seconds: `[[dd-]hh:]mm:ss` (procps) or `[hh:]mm:ss.cc` (macOS)."""
    text = text.strip()
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return days * 86400 + seconds


def parse_ps_rows(text: str, with_threads: bool) -> dict[int, Reading]:
    """`ps -o pid=,rss=,time=[,nlwp=]` lines -> pid -> Reading (rss in KiB becomes bytes)."""
    out: dict[int, Reading] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != (4 if with_threads else 3) or not parts[0].isdigit():
            continue
        try:
            out[int(parts[0])] = Reading(cpu_seconds=parse_ps_time(parts[2]), resident_bytes=int(parts[1]) * 1024,
                                         threads=int(parts[3]) if with_threads else None)
        except ValueError:
            continue
    return out


def parse_ps_threads(text: str) -> int | None:
    """Threads of one process from macOS `ps -M -p PID`: a header, then one line per thread."""
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) - 1 if len(lines) >= 2 else None


Runner = Callable[[Sequence[str]], str]


def run_command(argv: Sequence[str], timeout: float = 15.0, accept: tuple[int, ...] = (0,)) -> str:
    """Run a command without a shell and return its stdout; OSError when it cannot run or exits otherwise."""
    try:
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"{argv[0]} did not finish within {timeout:g} s") from None
    if done.returncode not in accept:
        first = done.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise OSError(f"{argv[0]} exited with status {done.returncode}" + (f": {first[0]}" if first else ""))
    return done.stdout.decode("utf-8", "replace")


class PsReference:
    """`ps -o pid=,rss=,time=` for the given pids; threads from `nlwp` (Linux) or `ps -M` (macOS)."""

    name = "ps"

    def __init__(self, run: Runner | None = None, darwin: bool = sys.platform == "darwin",
                 ps: str | None = None) -> None:
        # ps exits 1 when a listed pid is gone (procps: when none matched) and still prints the others
        self.run = run or (lambda argv: run_command(argv, accept=(0, 1)))
        self.darwin = darwin
        self.ps = ps or ("/bin/ps" if os.path.exists("/bin/ps") else (shutil.which("ps") or "ps"))

    @property
    def detail(self) -> str:
        return self.ps

    def read(self, pids: Iterable[int]) -> dict[int, Reading]:
        pid_list = sorted(set(pids))
        if not pid_list:
            return {}
        fields = "pid=,rss=,time=" if self.darwin else "pid=,rss=,time=,nlwp="
        selection = [arg for pid in pid_list for arg in ("-p", str(pid))]  # repeated -p: both ps accept it
        text = self.run([self.ps, "-o", fields, *selection])
        rows = parse_ps_rows(text, with_threads=not self.darwin)
        if self.darwin:
            for pid, row in list(rows.items())[:MAX_PS_THREAD_CALLS]:
                try:
                    threads = parse_ps_threads(self.run([self.ps, "-M", "-p", str(pid)]))
                except OSError:
                    threads = None
                rows[pid] = Reading(cpu_seconds=row.cpu_seconds, resident_bytes=row.resident_bytes, threads=threads)
        return rows


def parse_nettop_reference(text: str) -> dict[int, tuple[int, int]]:
    """A plain reader of `nettop -P -L 1 -x -J bytes_in,bytes_out` CSV, kept apart from the exporter's parser.

    pid -> (bytes_in, bytes_out); the last frame wins.
    """
    out: dict[int, tuple[int, int]] = {}
    header: list[str] | None = None
    for record in csv.reader(io.StringIO(text)):
        if "bytes_in" in record and "bytes_out" in record:
            header = record
            out = {}
            continue
        if header is None or len(record) < len(header):
            continue
        shift = len(record) - len(header)  # commas inside a process name
        label = ",".join(record[header.index(""):header.index("") + 1 + shift]) if "" in header else record[0]
        name, _, pid = label.rpartition(".")
        try:
            out[int(pid)] = (int(record[header.index("bytes_in") + shift]),
                             int(record[header.index("bytes_out") + shift]))
        except ValueError:
            continue
    return out



_COUNTED_BUG_TYPES = ("309", "409")


def reference_report_kind(path: Path) -> str | None:
    """What a report file is, by a plain reading: crash (.ips 309/409, .crash), hang (.hang), or None."""
    name = path.name.lower()
    if name.startswith(".") or path.is_symlink() or not path.is_file() or not os.access(path, os.R_OK):
        return None  # neither side can read it
    if name.endswith(".crash"):
        return "crash"
    if name.endswith(".hang"):
        return "hang"
    if not name.endswith(".ips"):
        return None
    try:
        with path.open("rb") as handle:
            header = json.loads(handle.readline(64 * 1024))
    except OSError:
        return None
    except ValueError:
        return "crash?"  # a header that is not JSON: shows up as a report the exporter cannot parse
    return "crash" if isinstance(header, dict) and str(header.get("bug_type")) in _COUNTED_BUG_TYPES else None

