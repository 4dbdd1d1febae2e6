"""Linux crash watcher: the proc connector, systemd-coredump, apport and kernel log lines.

Emits (sub-collector `crash`):

    atlas_app_crashes_total{app="nginx",reason="SIGSEGV"} 1.0
    atlas_app_last_crash_timestamp_seconds{app="nginx"} 1.764118845e+09
    atlas_crash_source_active{source="proc_connector"} 1.0
    atlas_crash_reports_skipped_total{reason="malformed"} 0.0

Sources, best first; every one that works at start is used, and one crash seen by
several of them counts once (same pid within a time window):
- `proc_connector`: NETLINK_CONNECTOR / CN_IDX_PROC exit events with the wait status
  (root or CAP_NET_ADMIN). Exec and fork events keep pid -> app while processes live.
- `systemd_coredump`: new file names in /var/lib/systemd/coredump (any user may list).
- `apport`: new or rewritten `*.crash` files in /var/crash (names for anyone, headers
  when readable).
- `kernel_log`: `segfault at` / `traps:` lines, and the OOM killer's `Out of memory: Killed
  process N` / `oom-kill:...,pid=N` lines, in /dev/kmsg (CAP_SYSLOG when kernel.dmesg_restrict=1).
- `cgroup_oom`: the `oom_kill` count of each memory cgroup that holds one app's processes
  (`memory.events.local` / `memory.events` on v2, `memory.oom_control` on v1; anyone may read).
An OOM kill is `reason="oom_kill"`, counted once whichever of the last two sources saw it.

Every process exit the proc connector reports is also counted by outcome (only while the proc
connector runs, the one source that sees every exit):

    atlas_app_exits_total{app="etl",outcome="error"} 3.0
Parsers (`parse_proc_events`, `parse_core_pattern`, `parse_coredump_name`,
`parse_apport_headers`, `parse_kmsg_record`) are pure.

Every app name comes from the resolver (`apps/resolver.py`): an exec event is named at once
from the new program (whatever was cached for the pid before), a forked child keeps its
parent's name only until it execs, a process already reaped at exit time is named from what
was read at its exec, a zombie from its comm and cgroup, never from its parent. A kernel-log
line's thread id is mapped to its process (`Tgid` of `/proc/<tid>/status`, or the fork event),
so a crashing thread is one crash of its process. Report file names and log comms are named
through `name_for` (no slot), and a crash is folded into `other` (`max_apps`) only when counted.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client.metrics_core import Metric

from atlas_exporter.apps.crashes import (
    OOM_KILL,
    CrashBook,
    CrashEvent,
    crash_metric_families,
    crash_reason,
    decode_wait_status,
    exit_outcome,
    reason_of_signal,
)
from atlas_exporter.apps.resolver import AppNaming, as_naming, clean_name
from atlas_exporter.collectors.crash.oom_linux import CgroupOomWatcher, MemoryRoot
from atlas_exporter.collectors.process.source_linux import CAP_NET_ADMIN, parse_capabilities, privilege_of
from atlas_exporter.config import Config
from atlas_exporter.model import AppOfPid, ProcIdentity, Snapshot, Source, SourceStatus, clean_label

log = logging.getLogger(__name__)

SOURCE_NAMES = ("proc_connector", "systemd_coredump", "apport", "kernel_log", "cgroup_oom")
# No `too_large` here: an apport report is never skipped for its size, only its head is read.
# `ambiguous`: a kernel crash line whose comm and pid can be read two ways; `comm_mismatch`: a
# kernel crash line whose pid is alive under another comm; `untrusted_owner`: a report file
# owned by neither root nor the user its process ran as; `lost_events`: proc connector events
# the kernel dropped (counted from gaps in its per-CPU sequence numbers).
SKIP_REASONS = ("malformed", "unreadable", "lost_events", "ambiguous", "comm_mismatch", "untrusted_owner")
UNKNOWN_APP = "unknown"
OTHER_APP = "other"  # the label of what has no series of its own (the `max_apps` fold's too)
COREDUMP_DIR = Path("/var/lib/systemd/coredump")
APPORT_DIR = Path("/var/crash")
KMSG = Path("/dev/kmsg")
MAX_CAPTURED = 4096
CAPTURES_PER_NAME = 5  # over the naming budget, this many times as many execs are read (not named)
KMSG_WAIT_SECONDS = 1.0  # how long a gone thread's kernel-log crash waits for its exit event
MAX_KMSG_WAITING = 1024
MAX_REPORT_BYTES = 1024 * 1024  # apport headers are read up to here; a core dump is never read

# --- netlink / proc connector constants (linux/netlink.h, linux/connector.h, linux/cn_proc.h)
NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CNMSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVHDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FOUR = struct.Struct("=iiii")
_EXIT = struct.Struct("=iiII")  # pid, tgid, exit_code, exit_signal

EVENT_NAMES = {0x0: "none", 0x1: "fork", 0x2: "exec", 0x80000000: "exit"}


# ----------------------------------------------------------------------------- parsers


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One proc connector event. For fork, `pid`/`tgid` are the child's, `parent_*` the parent's.

    For `none` (the subscription acknowledgement) `exit_code` carries the error number and
    `ack` the acknowledgement number. `seq` is the sending CPU's (`cpu`) event counter: the
    kernel numbers every event it sends per CPU, so a gap means events were lost.
    """

    what: str
    timestamp_ns: int
    pid: int = 0
    tgid: int = 0
    parent_pid: int = 0
    parent_tgid: int = 0
    exit_code: int = 0
    ack: int = 0
    seq: int = 0
    cpu: int = 0


def parse_proc_events(data: bytes) -> list[ProcEvent]:
    """Decode one netlink datagram from the proc connector.

    Event types other than fork, exec, exit and the acknowledgement come back as `other`,
    with only their sequence number and CPU (see `SequenceGaps`).
    """
    events: list[ProcEvent] = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, _type, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            raise ValueError(f"netlink message length {length} out of range")
        body = offset + _NLMSG.size
        if length >= _NLMSG.size + _CNMSG.size + _EVHDR.size:
            idx, val, cseq, ack, _clen, _cflags = _CNMSG.unpack_from(data, body)
            ev = body + _CNMSG.size
            what, cpu, ts = _EVHDR.unpack_from(data, ev)
            payload = ev + _EVHDR.size
            name = EVENT_NAMES.get(what)
            if (idx, val) == (CN_IDX_PROC, CN_VAL_PROC):
                if name is not None:
                    events.append(_decode_event(name, ts, data, payload, offset + length, ack, cseq, cpu))
                else:  # uid, sid, comm, coredump, ... events: kept only for their sequence number
                    events.append(ProcEvent(what="other", timestamp_ns=ts, seq=cseq, cpu=cpu))
        offset += (length + 3) & ~3
    return events


def _decode_event(name: str, ts: int, data: bytes, payload: int, end: int, ack: int, seq: int,
                  cpu: int) -> ProcEvent:
    def need(size: int) -> None:
        if payload + size > end:
            raise ValueError(f"{name} event truncated")

    if name == "none":
        need(4)
        (err,) = struct.unpack_from("=I", data, payload)
        return ProcEvent(what=name, timestamp_ns=ts, exit_code=err, ack=ack)
    if name == "fork":
        need(_FOUR.size)
        ppid, ptgid, cpid, ctgid = _FOUR.unpack_from(data, payload)
        return ProcEvent(what=name, timestamp_ns=ts, pid=cpid, tgid=ctgid, parent_pid=ppid, parent_tgid=ptgid,
                         seq=seq, cpu=cpu)
    if name == "exec":
        need(8)
        pid, tgid = struct.unpack_from("=ii", data, payload)
        return ProcEvent(what=name, timestamp_ns=ts, pid=pid, tgid=tgid, seq=seq, cpu=cpu)
    need(_EXIT.size)
    pid, tgid, code, _sig = _EXIT.unpack_from(data, payload)
    parent_pid = parent_tgid = 0
    if payload + _EXIT.size + 8 <= end:  # Linux 4.18+: the parent's pid and tgid follow
        parent_pid, parent_tgid = struct.unpack_from("=ii", data, payload + _EXIT.size)
    return ProcEvent(what=name, timestamp_ns=ts, pid=pid, tgid=tgid, exit_code=code,
                     parent_pid=parent_pid, parent_tgid=parent_tgid, seq=seq, cpu=cpu)


class SequenceGaps:
    """Counts proc connector events lost, from gaps in each CPU's event sequence numbers.

    The kernel numbers the events it sends on each CPU (`cn_msg.seq`, per-CPU, 32 bits); when
    the socket's buffer overflows, recv fails once with ENOBUFS (one overrun, any number of
    events) and the numbers skip. The first event seen on a CPU sets its baseline.
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self.lost = 0

    def see(self, cpu: int, seq: int) -> int:
        """Record one event; returns how many events of that CPU were lost just before it."""
        last = self._last.get(cpu)
        self._last[cpu] = seq
        if last is None:
            return 0
        gap = (seq - last - 1) & 0xFFFFFFFF
        if gap >= 1 << 31:  # older than the last one seen (or a repeat): nothing lost
            self._last[cpu] = last
            return 0
        self.lost += gap
        return gap


def listen_message(op: int = PROC_CN_MCAST_LISTEN, ack: int = 0) -> bytes:
    """The netlink datagram that subscribes to (or leaves) the proc connector."""
    payload = struct.pack("=I", op)
    cn = _CNMSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    return _NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


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


# ----------------------------------------------------------------------------- readers


class PidApps:
    """pid -> app for live and recently dead processes, plus thread id -> thread group id.

    Dead entries are kept for `grace_seconds`, so a report that arrives after the
    process has gone (a core file, a kernel line) can still be attributed.
    """

    def __init__(self, grace_seconds: float = 120.0) -> None:
        self.grace_seconds = grace_seconds
        self._apps: dict[int, str] = {}
        self._threads: dict[int, int] = {}
        self._dead: dict[int, float] = {}
        # identities read at exec but not named (over the naming budget): named only if they crash
        self._captured: dict[int, ProcIdentity] = {}

    def learn(self, pid: int, app: str) -> None:
        self._apps[pid] = app
        self._dead.pop(pid, None)

    def tgid_known(self, tid: int) -> int | None:
        return self._threads.get(tid)

    def forget(self, pid: int) -> None:
        """The process changed (exec) and could not be named again: drop its old name."""
        self._apps.pop(pid, None)
        self._captured.pop(pid, None)
        self._dead.pop(pid, None)

    def capture(self, pid: int, ident: ProcIdentity) -> None:
        self._captured[pid] = ident
        if len(self._captured) > MAX_CAPTURED:  # exits lost in an overrun: the oldest go
            del self._captured[next(iter(self._captured))]

    def captured(self, pid: int) -> ProcIdentity | None:
        return self._captured.get(pid)

    def exited(self, pid: int) -> None:
        """A process exit was handled: what was captured for it is not needed any more."""
        self._captured.pop(pid, None)

    def learn_thread(self, tid: int, tgid: int) -> None:
        self._threads[tid] = tgid
        self._dead.pop(tid, None)

    def app(self, pid: int) -> str | None:
        return self._apps.get(pid)

    def tgid(self, tid: int) -> int:
        return self._threads.get(tid, tid)

    def pids(self) -> set[int]:
        """Processes believed alive."""
        return set(self._apps) - set(self._dead)

    def died(self, pid: int, now: float) -> None:
        if pid in self._apps or pid in self._threads:
            self._dead[pid] = now

    def prune(self, now: float) -> None:
        for pid in [p for p, t in self._dead.items() if now - t > self.grace_seconds]:
            del self._dead[pid]
            self._apps.pop(pid, None)
            self._threads.pop(pid, None)


class ProcConnector:
    """A subscribed NETLINK_CONNECTOR socket for proc events (root or CAP_NET_ADMIN)."""

    def __init__(self, ack_timeout: float = 2.0) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 * 1024 * 1024)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            self.sock.bind((0, CN_IDX_PROC))
            self.sock.send(listen_message(PROC_CN_MCAST_LISTEN, ack=0x41544C))
            self.pending: list[ProcEvent] = []
            self._await_ack(ack_timeout)
        except BaseException:
            self.sock.close()
            raise

    def _await_ack(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise PermissionError(errno.EPERM, "no acknowledgement from the proc connector")
            for event in parse_proc_events(self.sock.recv(65536)):
                if event.what == "none" and event.ack == 0x41544C + 1:
                    if event.exit_code:
                        raise OSError(event.exit_code, os.strerror(event.exit_code))
                    return
                if event.what != "none":
                    self.pending.append(event)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[ProcEvent]:
        """The events of one datagram, without blocking.

        Raises BlockingIOError when none is waiting and OSError(ENOBUFS) when the kernel
        dropped events because the reader fell behind.
        """
        events, self.pending = self.pending, []
        if events:
            return events
        return parse_proc_events(self.sock.recv(65536, socket.MSG_DONTWAIT))

    def close(self) -> None:
        try:
            self.sock.send(listen_message(PROC_CN_MCAST_IGNORE))
        except OSError:
            pass
        self.sock.close()


@dataclass(frozen=True, slots=True)
class _FileState:
    mtime_ns: int
    size: int
    uid: int = 0


def read_report_head(path: Path, limit: int) -> tuple[_FileState, str] | None:
    """The first `limit` bytes of a regular report file (decoded with replacement) and its state.

    Opened without following a symlink and without blocking (a FIFO put in the folder cannot
    stall the watcher); anything but a regular file is an OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    return _FileState(st.st_mtime_ns, st.st_size, st.st_uid), b"".join(chunks).decode("utf-8", "replace")


def open_kmsg(path: Path) -> int:
    """Open the kernel log for new records only (non-blocking, positioned at the end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        os.close(fd)
        raise
    return fd


def read_tgid(procfs: Path, tid: int) -> int | None:
    """The thread group (process) id of thread `tid`, from the `Tgid:` line of its status; None when gone."""
    try:
        with open(f"{procfs}/{tid}/status", "rb") as handle:
            text = handle.read(4096)
    except OSError:
        return None
    return parse_tgid(text)


def parse_tgid(status: bytes) -> int | None:
    """The `Tgid:` value of a `/proc/<tid>/status` text."""
    for line in status.splitlines():
        if line.startswith(b"Tgid:"):
            try:
                return int(line[5:])
            except ValueError:
                return None
    return None


def read_kmsg(fd: int) -> Iterator[str]:
    """Every record available now; a record overwritten before it was read is skipped."""
    while True:
        try:
            data = os.read(fd, 8192)
        except BlockingIOError:
            return
        except BrokenPipeError:  # EPIPE: the ring buffer wrapped past our position
            continue
        if not data:
            return
        yield data.decode("utf-8", "replace")


# ----------------------------------------------------------------------------- the source


class LinuxCrashSource:
    """The `crash` sub-collector on Linux: background watcher plus per-app crash counters."""

    name = "crash"

    def __init__(
        self,
        naming: AppNaming | AppOfPid,
        *,
        procfs: Path = Path("/proc"),
        coredump_dir: Path = COREDUMP_DIR,
        report_dirs: Iterable[Path] = (APPORT_DIR,),
        kmsg: Path = KMSG,
        use_connector: bool = True,
        cgroup_roots: list[MemoryRoot] | None = None,
        poll_interval_seconds: float = 2.0,
        rescan_interval_seconds: float = 10.0,
        dedup_window_seconds: float = 30.0,
        names_per_second: float = 200.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.naming = as_naming(naming)
        self.procfs = procfs
        self.coredump_dir = coredump_dir
        self.report_dirs = tuple(report_dirs)
        self.kmsg_path = kmsg
        self.use_connector = use_connector
        self.poll_interval_seconds = poll_interval_seconds
        self.rescan_interval_seconds = rescan_interval_seconds
        self.clock = clock
        self.monotonic = monotonic
        self.book = CrashBook(window_seconds=dedup_window_seconds)
        self.pids = PidApps()
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.overruns = 0  # ENOBUFS from the proc connector socket (each one loses one or more events)
        self._gaps = SequenceGaps()
        self.handler = "unknown"
        self._status: dict[str, SourceStatus] = {}
        self._connector: ProcConnector | None = None
        self._kmsg_fd: int | None = None
        self._cgroup_roots = cgroup_roots
        self._oom: CgroupOomWatcher | None = None
        self._files: dict[Path, _FileState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._last_rescan = float("-inf")
        # kernel-log crashes of threads already gone, waiting for the exit events that map them
        self._kmsg_waiting: list[tuple[float, KernelCrash]] = []
        self._last_poll = float("-inf")
        # naming at exec costs ~0.3 ms; in an exec storm the budget runs out and the
        # rest are named at exit (resolver cache, else the zombie's comm)
        self.names_per_second = names_per_second
        self._name_budget = names_per_second
        self._budget_at = float("-inf")
        self._capture_budget = CAPTURES_PER_NAME * names_per_second
        self._capture_at = float("-inf")

    # -- lifecycle

    def start(self) -> None:
        """Detect every source, take a baseline of existing reports, start the watcher thread."""
        if self._thread is not None:
            return
        self._detect()
        self._stop.clear()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="atlas-crash-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout=10)
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._connector is not None:
            self._connector.close()
            self._connector = None
        if self._kmsg_fd is not None:
            os.close(self._kmsg_fd)
            self._kmsg_fd = None

    def _detect(self) -> None:
        try:
            self.handler = parse_core_pattern((self.procfs / "sys/kernel/core_pattern").read_text())
        except OSError:
            self.handler = "unknown"
        try:
            self_status = (self.procfs / "self" / "status").read_text()
        except OSError:
            self_status = ""
        try:
            capabilities = parse_capabilities(self_status)
        except (IndexError, ValueError):
            self_status, capabilities = "", 0
        privilege = privilege_of(self_status, os.geteuid())  # the words the process sources use
        status: dict[str, SourceStatus] = {}

        reason = ""
        if not self.use_connector:
            reason = "disabled"
        elif not capabilities & (1 << CAP_NET_ADMIN):
            reason = "the proc connector needs root or CAP_NET_ADMIN"
        else:
            try:
                self._connector = ProcConnector()
            except OSError as err:
                reason = f"cannot subscribe to the proc connector: {err.strerror or err}"
        status["proc_connector"] = SourceStatus("proc_connector", self._connector is not None,
                                                privilege if self._connector else "none", reason)

        status["systemd_coredump"] = self._detect_dir("systemd_coredump", [self.coredump_dir], privilege)
        status["apport"] = self._detect_dir("apport", list(self.report_dirs), privilege)

        reason = ""
        try:
            self._kmsg_fd = open_kmsg(self.kmsg_path)
        except PermissionError:
            reason = f"reading {self.kmsg_path} needs CAP_SYSLOG (kernel.dmesg_restrict=1)"
        except OSError as err:
            reason = f"cannot read {self.kmsg_path}: {err.strerror or err}"
        status["kernel_log"] = SourceStatus("kernel_log", self._kmsg_fd is not None,
                                            privilege if self._kmsg_fd is not None else "none", reason)

        oom = CgroupOomWatcher(self._resolve, procfs=self.procfs, roots=self._cgroup_roots, clock=self.monotonic,
                               app_of_cgroup=self._app_of_cgroup)
        reason = ""
        if not oom.available:
            reason = "no memory cgroup hierarchy is mounted"
        else:
            try:
                oom.poll()  # the baseline: kills before the start are not counted
                self._oom = oom
            except OSError as err:
                reason = f"cannot read the memory cgroups: {err.strerror or err}"
        status["cgroup_oom"] = SourceStatus("cgroup_oom", self._oom is not None,
                                            privilege if self._oom is not None else "none", reason)
        self._status = status
        for item in status.values():
            if item.active:
                log.info("crash source %s active", item.name)
            else:
                log.info("crash source %s inactive: %s", item.name, item.reason)

    def _detect_dir(self, name: str, folders: list[Path], privilege: str) -> SourceStatus:
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
                state = self._file_state(entry)
                if state is not None:
                    self._files[Path(entry.path)] = state
        handler_note = f" (core_pattern handler: {self.handler})" if not readable else ""
        return SourceStatus(name, bool(readable), privilege if readable else "none",
                            "; ".join(reasons) + handler_note if not readable else "")

    @staticmethod
    def _file_state(entry: os.DirEntry[str]) -> _FileState | None:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return None
        return _FileState(st.st_mtime_ns, st.st_size, st.st_uid)

    # -- watcher thread

    def _run(self) -> None:
        self._rescan()
        while not self._stop.is_set():
            try:
                self._cycle()
            except Exception:  # the watcher must survive anything one report does
                log.exception("crash watcher cycle failed")
                self._stop.wait(self.poll_interval_seconds)

    def _cycle(self) -> None:
        fds = [self._wake_r]
        if self._connector is not None:
            fds.append(self._connector.fileno())
        if self._kmsg_fd is not None:
            fds.append(self._kmsg_fd)
        timeout = KMSG_WAIT_SECONDS / 4 if self._kmsg_waiting else self.poll_interval_seconds
        ready, _, _ = select.select(fds, [], [], timeout)
        if self._stop.is_set():
            return
        if self._connector is not None and self._connector.fileno() in ready:
            # no batching delay: an exec must be named before a short-lived program is gone
            self._drain_connector()
        if self._kmsg_fd is not None and self._kmsg_fd in ready:
            for record in read_kmsg(self._kmsg_fd):
                self._on_kmsg(record)
        if self._kmsg_waiting:
            self._count_waiting_kmsg()
        now_mono = self.monotonic()
        if not ready or now_mono - self._last_poll >= self.poll_interval_seconds:
            self._last_poll = now_mono
            self._poll_folders()
            self._poll_cgroups()
            if self._connector is None and now_mono - self._last_rescan >= self.rescan_interval_seconds:
                self._rescan()
            self.pids.prune(now_mono)

    def _drain_connector(self) -> None:
        assert self._connector is not None
        for _ in range(4096):
            try:
                events = self._connector.read()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # an overrun; the sequence gaps say how many events
                    self.overruns += 1
                    log.warning("proc connector overrun: the kernel dropped process events (read too slowly)")
                    continue
                raise
            except ValueError:
                self._skip("malformed")
                continue
            for event in events:
                if event.what != "none":
                    lost = self._gaps.see(event.cpu, event.seq)
                    if lost:
                        self._skip("lost_events", lost)
                self._on_proc_event(event)

    def _resolve(self, pid: int, *, exec_: bool = False) -> str | None:
        try:
            return self.naming.app_after_exec(pid) if exec_ else self.naming.app_of_pid(pid)
        except Exception:  # a naming failure must not stop the watcher
            log.debug("naming pid %d failed", pid, exc_info=True)
            return None

    def _on_proc_event(self, event: ProcEvent) -> None:
        if event.what == "fork":
            if event.pid != event.tgid:
                self.pids.learn_thread(event.pid, event.tgid)
                return
            # the same program as its parent until it execs
            app = self.pids.app(event.parent_tgid)
            if app is None and self._take_name_budget():
                app = self._resolve(event.pid)
            if app is not None:
                self.pids.learn(event.pid, app)
        elif event.what == "exec":
            if event.pid != event.tgid:
                return
            # the parent's name no longer applies, whether or not the new program can be named now
            self.pids.forget(event.pid)
            if not self._take_name_budget():
                # an exec storm: keep what only the live process shows, name it if it crashes
                if self._take_capture_budget():
                    self._capture(event.pid)
                return
            app = self._resolve(event.pid, exec_=True)
            if app is not None:
                self.pids.learn(event.pid, app)
        elif event.what == "exit":
            now = self.monotonic()
            if event.pid != event.tgid:  # a thread, not the process
                # its process is known now, even for a thread made before the watcher started: a
                # kernel-log line about the thread, read after it is gone, still counts for the process
                self.pids.learn_thread(event.pid, event.tgid)
                self.pids.died(event.pid, now)
                return
            status = decode_wait_status(event.exit_code)
            reason = crash_reason(status)
            outcome = exit_outcome(status)
            if reason is None and outcome == "success":
                # the common case, kept cheap for exit storms: the app it was learned under, if it
                # has series; a process never learned (an exec storm over the naming budget) is other
                known = self.pids.app(event.pid)
                self.book.record_exit(self._exit_label(known, outcome) if known is not None else OTHER_APP, outcome)
            elif reason is not None or outcome is not None:
                app = self._app_at_exit(event.pid, failed=True)
                if outcome is not None:
                    self.book.record_exit(self._exit_label(app, outcome), outcome)
                if reason is not None:
                    when = self.clock() - max(0.0, now - event.timestamp_ns / 1e9)
                    self._record(CrashEvent(source="proc_connector", time=when, reason=reason, app=app,
                                            pid=event.pid))
            self.pids.exited(event.pid)
            self.pids.died(event.pid, now)

    def _app_at_exit(self, pid: int, *, failed: bool) -> str:
        """The app of a process that just exited: named at its exec (or its parent's if it never
        exec'd), else what the zombie shows.

        Only a failure (a crash, an error code, a signal) is named now when the watcher never
        learned the process, else it takes its comm: exit storms spend none of the naming budget
        that exec events need.
        """
        app = self.pids.app(pid)
        if app is None and failed:
            captured = self.pids.captured(pid)
            app = self._name_captured(captured) if captured is not None else self._resolve(pid)
        return app or self._comm(pid)

    def _capture(self, pid: int) -> None:
        capture = getattr(self.naming, "capture", None)
        if capture is None:
            return
        try:
            ident = capture(pid)
        except Exception:  # a failed read must not stop the watcher
            log.debug("capturing pid %d failed", pid, exc_info=True)
            return
        if ident is not None:
            self.pids.capture(pid, ident)

    def _name_captured(self, ident: ProcIdentity) -> str | None:
        try:
            return self.naming.name_of_identity(ident)  # type: ignore[attr-defined]
        except Exception:  # a naming failure must not stop the watcher
            log.debug("naming a captured identity failed", exc_info=True)
            return None

    def _exit_label(self, app: str, outcome: str) -> str:
        """The `app` label of an exit.

        A failure (`error`, `signal`) gives the app a series of its own, taking a `max_apps` slot
        as a crash does. A successful exit is counted under its app only when the app already has
        a series (the process scan saw it, or it failed before); else under `other`, so that a
        host's many short-lived commands (sh, grep, sed) take no slots.
        """
        if outcome != "success":
            return self.naming.export(app)
        label_if_exported = getattr(self.naming, "label_if_exported", None)
        label = label_if_exported(app) if label_if_exported is not None else self.naming.export(app)
        return label or OTHER_APP

    def _app_of_cgroup(self, cgroup: str) -> str | None:
        try:
            return self.naming.app_of_cgroup(cgroup)
        except Exception:  # a naming failure must not stop the watcher
            log.debug("naming cgroup %s failed", cgroup, exc_info=True)
            return None

    def _poll_cgroups(self) -> None:
        if self._oom is None:
            return
        now = self.clock()
        for app, kills in self._oom.poll():
            for _ in range(kills):
                self._record(CrashEvent(source="cgroup_oom", time=now, reason=OOM_KILL, app=app))

    def _take_capture_budget(self) -> bool:
        now = self.monotonic()
        rate = CAPTURES_PER_NAME * self.names_per_second
        self._capture_budget = min(rate, self._capture_budget + (now - self._capture_at) * rate)
        self._capture_at = now
        if self._capture_budget < 1.0:
            return False
        self._capture_budget -= 1.0
        return True

    def _take_name_budget(self) -> bool:
        now = self.monotonic()
        elapsed = now - self._budget_at
        self._budget_at = now
        self._name_budget = min(self.names_per_second, self._name_budget + elapsed * self.names_per_second)
        if self._name_budget < 1.0:
            return False
        self._name_budget -= 1.0
        return True

    def _comm_bytes(self, pid: int) -> bytes | None:
        """The raw comm of a task (a thread id works too), None when it is gone or unreadable."""
        try:
            fd = os.open(self.procfs / str(pid) / "comm", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            return os.read(fd, 64).rstrip(b"\n")
        except OSError:
            return None
        finally:
            os.close(fd)

    def _comm(self, pid: int) -> str:
        """The name of a process known only by its comm now, else `unknown` (through the resolver).

        Not folded: the exit or crash that asks decides whether it takes a slot (`_exit_label`, `_record`).
        """
        raw = self._comm_bytes(pid) or UNKNOWN_APP
        try:
            return self.naming.name_for(raw)
        except Exception:  # a naming failure must not stop the watcher
            log.debug("naming comm %r failed", raw, exc_info=True)
            return clean_name(raw)

    def _tgid(self, tid: int) -> int | None:
        """The process of a thread id: the fork or exit event's answer, else `/proc/<tid>/status`.

        None when neither knows (the thread is gone and no event named it).
        """
        known = self.pids.tgid_known(tid)
        if known is not None:
            return known
        tgid = read_tgid(self.procfs, tid)
        if tgid is not None and tgid != tid:
            self.pids.learn_thread(tid, tgid)
        return tgid

    def _on_kmsg(self, record: str) -> None:
        try:
            crash = parse_kmsg_record(record)
        except AmbiguousLine as err:
            self._skip("ambiguous")
            log.info("kernel log crash line not counted: %s", err)
            return
        if crash is None:
            return
        # the kernel names the faulting thread: while it still exists, its comm must be the one
        # the line shows, or the line is not about the process that now has this pid
        live_comm = self._comm_bytes(crash.pid)
        if live_comm is not None and kmsg_escape(live_comm) != crash.comm:
            self._skip("comm_mismatch")
            log.info("kernel log crash line not counted: pid %d is %r now, the line says %r",
                     crash.pid, live_comm, crash.comm)
            return
        pid = self._tgid(crash.pid)  # a thread's line counts for its process
        if pid is None and self._connector is not None and len(self._kmsg_waiting) < MAX_KMSG_WAITING:
            # gone already: the exit events of its threads, read next, will say whose thread it was
            self._kmsg_waiting.append((self.monotonic() + KMSG_WAIT_SECONDS, crash))
            return
        self._count_kmsg(crash, pid if pid is not None else crash.pid)

    def _count_waiting_kmsg(self) -> None:
        now = self.monotonic()
        waiting, self._kmsg_waiting = self._kmsg_waiting, []
        for deadline, crash in waiting:
            pid = self.pids.tgid_known(crash.pid)
            if pid is not None or now >= deadline:
                self._count_kmsg(crash, pid if pid is not None else crash.pid)
            else:
                self._kmsg_waiting.append((deadline, crash))

    def _count_kmsg(self, crash: KernelCrash, pid: int) -> None:
        app = self.pids.app(pid) or self._resolve(pid) or self.naming.name_for(kmsg_unescape(crash.comm))
        when = self.clock() - max(0.0, self.monotonic() - crash.monotonic_seconds)
        self._record(CrashEvent(source="kernel_log", time=when, reason=crash.reason, app=app, pid=pid,
                                comm=kmsg_unescape(crash.comm)))

    def _rescan(self) -> None:
        """Learn the app of every live pid (at start, and periodically without the connector).

        The resolver caches names per (pid, start time), so asking again is cheap and
        notices a reused pid. Known pids that are gone are marked dead.
        """
        try:
            entries = os.listdir(self.procfs)
        except OSError:
            return
        now = self.monotonic()
        self._last_rescan = now
        live = set()
        for name in entries:
            if not name.isdigit():
                continue
            pid = int(name)
            live.add(pid)
            app = self._resolve(pid)
            if app is not None:
                self.pids.learn(pid, app)
        for pid in self.pids.pids() - live:
            self.pids.died(pid, now)

    def _poll_folders(self) -> None:
        if self._status.get("systemd_coredump", SourceStatus("", False)).active:
            for path, state in self._new_files([self.coredump_dir]):
                self._on_coredump(path, state)
        if self._status.get("apport", SourceStatus("", False)).active:
            for path, state in self._new_files(self.report_dirs, suffix=".crash"):
                self._on_apport(path, state)

    def _new_files(self, folders: Iterable[Path], suffix: str = "") -> list[tuple[Path, _FileState]]:
        """New or rewritten files in `folders`; files gone from them are forgotten."""
        found = []
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # unlistable now: what was seen there is kept
            present = {Path(entry.path) for entry in entries}
            for path in [p for p in self._files if p.parent == folder and p not in present]:
                del self._files[path]
            for entry in entries:
                if suffix and not entry.name.endswith(suffix):
                    continue
                if entry.is_symlink():
                    continue
                state = self._file_state(entry)
                path = Path(entry.path)
                if state is None:
                    continue
                previous = self._files.get(path)
                self._files[path] = state
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
        self._skip("untrusted_owner")
        log.info("crash report %r not counted: owned by uid %d, its process ran as uid %s",
                 str(path), owner, process_uid)
        return False

    def _on_coredump(self, path: Path, state: _FileState) -> None:
        parsed = parse_coredump_name(path.name)
        if parsed is None:
            if not path.name.startswith(".#"):  # systemd writes a hidden temporary file first
                self._skip("malformed")
            return
        if not self._trusted_owner(path, state.uid, parsed.uid):
            return
        app = self.pids.app(parsed.pid) or self.naming.name_for(parsed.comm)
        self._record(CrashEvent(source="systemd_coredump", time=parsed.time, reason="other", app=app,
                                pid=parsed.pid, comm=parsed.comm))

    def _on_apport(self, path: Path, state: _FileState) -> None:
        guess = apport_name_executable(path.name)
        if guess is None:
            self._skip("malformed")
            return
        name_uid = apport_name_uid(path.name)
        if not self._trusted_owner(path, state.uid, name_uid):
            return
        report: ApportReport | None = None
        try:
            head = read_report_head(path, MAX_REPORT_BYTES)
        except PermissionError:
            head = None  # names are world-visible, contents are not
        except OSError:
            self._skip("unreadable")
            return
        if head is not None:
            opened, text = head
            report = parse_apport_headers(text)
            # the file may have been replaced since it was listed, and a user's own file must
            # not claim, in its content, a process of another user
            claimed = name_uid if report.uid is None or report.uid == name_uid else None
            if not self._trusted_owner(path, opened.uid, claimed):
                return
        if report is not None and report.problem_type not in (None, "Crash"):
            return
        executable = report.executable if report and report.executable else None
        pid = report.pid if report else None
        app = self.pids.app(pid) if pid is not None else None
        if app is None:
            # comm is the first 15 bytes of the executable's name
            comm = os.path.basename(executable)[:15] if executable else guess
            app = self.naming.name_for(comm, exe=executable)
        when = report.time if report and report.time else state.mtime_ns / 1e9
        reason = reason_of_signal(report.signal) if report and report.signal is not None else "other"
        self._record(CrashEvent(source="apport", time=when, reason=reason, app=app, pid=pid))

    def _record(self, event: CrashEvent) -> None:
        # a counted crash gets a series: only then does its app take a `max_apps` slot
        counted = self.book.record_crash(event, self.naming.export)
        log.log(logging.INFO if counted else logging.DEBUG, "crash %s: app=%s pid=%s reason=%s (%s)",
                "counted" if counted else "duplicate", event.app, event.pid, event.reason, event.source)

    def _skip(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    # -- reporting

    def retire(self, apps: Iterable[str]) -> None:
        """Drop the crash and exit counts of apps the scan retired, with their process series."""
        self.book.retire(apps)

    def statuses(self) -> list[SourceStatus]:
        if not self._status:
            return [SourceStatus(name, False, "none", "not started") for name in SOURCE_NAMES]
        return [self._status[name] for name in SOURCE_NAMES]

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stop.is_set():
            raise RuntimeError("the crash watcher thread has ended: crashes are no longer counted")
        with self._lock:
            skipped = dict(self.skipped)
        return crash_metric_families(self.book, self.statuses(), skipped, exits_active=self._connector is not None)


def make_crash_source(config: Config, procfs: Path, naming: AppNaming) -> Source | None:
    """The Linux `crash` sub-collector; extra `crash.report_dirs` are watched like /var/crash."""
    dirs = [APPORT_DIR, *(Path(os.path.expanduser(d)) for d in config.crash.report_dirs)]
    return LinuxCrashSource(naming, procfs=procfs, report_dirs=dirs)
