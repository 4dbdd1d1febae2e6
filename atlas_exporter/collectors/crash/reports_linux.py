"""Pure parsers of what Linux writes about a crash: core_pattern, systemd-coredump file names,
apport report headers, kernel log records and the `Tgid:` of a task's status.

They take the text (or name) and return what counting needs; no I/O:

    parse_coredump_name("core.nginx.0.9a350d932b254a8d880f502cd4a2ae66.4242.1764118845000000.zst")
        -> CoredumpFile(comm="nginx", uid=0, boot_id="9a350d932b254a8d880f502cd4a2ae66", pid=4242,
                        time=1764118845.0)
    parse_kmsg_record("6,1234,99000000,-;nginx[4242]: segfault at 0 ip ... error 4 in nginx[...]")
        -> KernelCrash(comm="nginx", pid=4242, reason="SIGSEGV", monotonic_seconds=99.0)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime

from atlas_exporter.apps.crashes import OOM_KILL, reason_of_signal
from atlas_exporter.model import clean_label


def parse_core_pattern(text: str) -> str:
    """Name the crash handler that `/proc/sys/kernel/core_pattern` installs."""
    pattern = text.strip()
    if not pattern.startswith("|"):
        return "file"
    program = os.path.basename(pattern[1:].split()[0]) if pattern[1:].split() else ""
    if program == "systemd-coredump":
        return "systemd-coredump"
    if program == "apport":
        return "apport"
    if program.startswith("abrt"):
        return "abrt"
    return f"pipe:{program}" if program else "pipe"


@dataclass(frozen=True, slots=True)
class CoredumpFile:
    """What a systemd-coredump file name says: core.COMM.UID.BOOTID.PID.USEC[.zst|.xz|.lz4]."""

    comm: str
    uid: int
    boot_id: str
    pid: int
    time: float


_COREDUMP_NAME = re.compile(
    r"^core\.(?P<comm>.+)\.(?P<uid>\d+)\.(?P<boot>[0-9a-f]{32})\.(?P<pid>\d+)\.(?P<usec>\d+)"
    r"(?:\.(?:zst|xz|lz4|gz|bz2))?$")
_XESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def parse_coredump_name(name: str) -> CoredumpFile | None:
    """Parse a systemd-coredump file name (fields escaped with \\xNN, read from the right).

    The comm is valid UTF-8: escaped or undecodable bytes that are not UTF-8 become U+FFFD.
    """
    match = _COREDUMP_NAME.match(name)
    if match is None:
        return None
    raw = _XESCAPE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)) if int(m.group(1), 16) >= 0x80
                       else chr(int(m.group(1), 16)), match["comm"])
    comm = clean_label(raw)  # escaped bytes >= 0x80 are surrogate-escaped, then decoded as UTF-8
    return CoredumpFile(comm=comm, uid=int(match["uid"]), boot_id=match["boot"], pid=int(match["pid"]),
                        time=int(match["usec"]) / 1e6)


@dataclass(frozen=True, slots=True)
class ApportReport:
    """The headers of an apport `.crash` file that matter for counting."""

    problem_type: str | None
    executable: str | None
    signal: int | None
    pid: int | None
    time: float | None
    uid: int | None = None  # the real uid of the crashed process (ProcStatus `Uid:`)


_APPORT_NAME = re.compile(r"^(?P<subject>.+)\.(?P<uid>\d+)\.crash$")


def apport_name_executable(name: str) -> str | None:
    """Guess the executable basename from an apport file name (`_usr_bin_foo.1000.crash`).

    The name is valid UTF-8: undecodable bytes of the file name become U+FFFD.
    """
    match = _APPORT_NAME.match(name)
    if match is None:
        return None
    subject = match["subject"]
    return clean_label(subject.rsplit("_", 1)[-1]) or None


def apport_name_uid(name: str) -> int | None:
    """The uid an apport file name claims (`_usr_bin_foo.1000.crash` -> 1000)."""
    match = _APPORT_NAME.match(name)
    return int(match["uid"]) if match is not None else None


def parse_apport_headers(text: str) -> ApportReport:
    """Parse the RFC822-like head of an apport report; binary (base64) values are skipped."""
    fields: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith(" "):
            if current is not None:
                fields[current] += "\n" + line[1:]
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or " " in key:
            current = None
            continue
        value = value.strip()
        if value == "base64":
            current = None
            continue
        current = key
        fields[key] = value
    signal_number = _int_or_none(fields.get("Signal"))
    pid = uid = None
    for status_line in fields.get("ProcStatus", "").splitlines():
        if status_line.startswith("Pid:"):
            pid = _int_or_none(status_line[4:])
        elif status_line.startswith("Uid:"):
            uid = _int_or_none((status_line[4:].split() or [""])[0])
    when = None
    if "Date" in fields:
        try:
            when = datetime.strptime(fields["Date"].strip(), "%a %b %d %H:%M:%S %Y").timestamp()
        except ValueError:
            when = None
    return ApportReport(problem_type=fields.get("ProblemType"), executable=fields.get("ExecutablePath"),
                        signal=signal_number, pid=pid, time=when, uid=uid)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class KernelCrash:
    """A kernel log line about an unhandled fault. `pid` is the faulting thread's id."""

    comm: str
    pid: int
    reason: str
    monotonic_seconds: float


# Each pattern is anchored on the whole line and written twice: with the comm matched as
# short as possible (from the left) and as long as possible (from the right). A comm (15
# bytes, chosen by the program) or a mapping name (the file name after " in ") that holds
# text shaped like the rest of the line makes the two readings differ: such a line is
# ambiguous and never counted.
_SEGFAULT_TAIL = r"\[(?P<pid>\d+)\]: segfault at [0-9a-f]+ ip [0-9a-f]+ sp [0-9a-f]+ error [0-9a-f]+(?: .*)?$"
_TRAPS_TAIL = r"\[(?P<pid>\d+)\] (?P<what>[a-z][a-z0-9 ]*?) ip:[0-9a-f]+ sp:[0-9a-f]+ error:[0-9a-f]+(?: .*)?$"
_FATAL_TAIL = r"\[(?P<pid>\d+)\]: potentially unexpected fatal signal (?P<sig>\d+)\.$"
# the OOM killer: "Out of memory: Killed process 4242 (python3) total-vm:..." (or "Memory cgroup out
# of memory: ...") and "oom-kill:constraint=...,task=python3,pid=4242,uid=0"; the comm is in the middle
_OOM_KILLED_HEAD = r"^(?:Memory cgroup out of memory|Out of memory): Killed process (?P<pid>\d+) \("
_OOM_KILLED_TAIL = r"\)(?: total-vm:.*)?$"
_OOM_KILL_HEAD = r"^oom-kill:.*?,task="
_OOM_KILL_TAIL = r",pid=(?P<pid>\d+),uid=\d+.*$"
_KMSG_PATTERNS = tuple(
    (kind, re.compile(prefix + "(?P<comm>.+?)" + tail), re.compile(prefix + "(?P<comm>.+)" + tail))
    for kind, prefix, tail in (("segfault", "^", _SEGFAULT_TAIL), ("traps", "^traps: ", _TRAPS_TAIL),
                               ("fatal", "^", _FATAL_TAIL), ("oom", _OOM_KILLED_HEAD, _OOM_KILLED_TAIL),
                               ("oom", _OOM_KILL_HEAD, _OOM_KILL_TAIL)))
MAX_KMSG_COMM = 16 * 4  # TASK_COMM_LEN bytes, each at most 4 characters once escaped (\xNN)
_KMSG_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


class AmbiguousLine(ValueError):
    """A kernel crash line whose comm and pid can be read in more than one way."""


def kmsg_escape(comm: bytes) -> str:
    """A comm as /dev/kmsg prints it: control bytes, bytes >= 0x7f and backslash as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in comm)


def kmsg_unescape(text: str) -> str:
    """The comm a /dev/kmsg record names, as valid UTF-8 (its \\xNN escapes decoded as bytes)."""
    if "\\x" not in text:
        return text
    raw = _KMSG_ESCAPE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)) if int(m.group(1), 16) >= 0x80
                           else chr(int(m.group(1), 16)), text)
    return clean_label(raw)


_TRAP_REASONS = (
    ("invalid opcode", "SIGILL"),
    ("int3", "SIGTRAP"),
    ("divide error", "SIGFPE"),
    ("general protection", "SIGSEGV"),
    ("stack segment", "SIGBUS"),
    ("alignment check", "SIGBUS"),
    ("bounds", "SIGSEGV"),
    ("overflow", "SIGSEGV"),
)


def parse_kmsg_record(record: str) -> KernelCrash | None:
    """Parse one /dev/kmsg record (`PRI,SEQ,USEC,FLAGS;message`); None when it is no crash line.

    `comm` is returned as the kernel log prints it (escaped); raises `AmbiguousLine` when the
    comm and pid of a crash line can be read in more than one way (see `_KMSG_PATTERNS`).
    """
    head, sep, rest = record.partition(";")
    if not sep:
        return None
    parts = head.split(",")
    if len(parts) < 3:
        return None
    try:
        priority = int(parts[0])
        usec = int(parts[2])
    except ValueError:
        return None
    if priority >> 3 != 0:  # not the kernel's facility: written by a process into /dev/kmsg
        return None
    message = rest.split("\n", 1)[0]
    for kind, shortest, longest in _KMSG_PATTERNS:
        match = shortest.match(message)
        if match is None:
            continue
        other = longest.match(message)
        if other is None or other.span("comm") != match.span("comm") or len(match["comm"]) > MAX_KMSG_COMM:
            raise AmbiguousLine(f"ambiguous kernel crash line: {message[:200]!r}")
        if kind == "segfault":
            reason = "SIGSEGV"
        elif kind == "traps":
            what = match["what"]
            reason = next((r for key, r in _TRAP_REASONS if key in what), "other")
        elif kind == "oom":
            reason = OOM_KILL
        else:
            reason = reason_of_signal(int(match["sig"]))
        return KernelCrash(comm=match["comm"], pid=int(match["pid"]), reason=reason,
                           monotonic_seconds=usec / 1e6)
    return None


def parse_tgid(status: bytes) -> int | None:
    """The `Tgid:` value of a `/proc/<tid>/status` text."""
    for line in status.splitlines():
        if line.startswith(b"Tgid:"):
            try:
                return int(line[5:])
            except ValueError:
                return None
    return None
