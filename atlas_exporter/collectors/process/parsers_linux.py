"""Pure parsers of Linux `/proc` text: `stat`, `io`, `status`, `limits`, `smaps_rollup`, `cgroup`, `/proc/stat`.

Each takes the text (bytes or str) of one file and returns plain values or raises `ParseError`
(a ValueError); none of them reads a file. `sample_from_stat` is the scan's hot path: it turns
`/proc/<pid>/stat` into a `ProcSample` in base units (seconds, bytes), or None for a kernel
thread.

    parse_stat(b"4312 (nginx: worker) S 4311 ... 123456 110968832 2813 ...")
        -> ProcStat(comm='nginx: worker', state='S', ppid=4311, ..., starttime=123456, rss_pages=2813)
    parse_io(b"rchar: 52428925\n...read_bytes: 4096\nwrite_bytes: 52453376\ncancelled_write_bytes: 0\n")
        -> ProcIO(read_bytes=4096, write_bytes=52453376, cancelled_write_bytes=0, syscr=53, syscw=1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

from atlas_exporter.model import ProcessId, ProcSample

PF_KTHREAD = 0x00200000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# capability bit numbers (linux/capability.h)
CAP_DAC_READ_SEARCH = 2
CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19


class ParseError(ValueError):
    """A /proc file whose text is not in the expected format."""


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of `/proc/<pid>/stat` the exporter uses (times in clock ticks, rss in pages)."""

    comm: str
    state: str
    ppid: int
    flags: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    num_threads: int
    starttime: int
    rss_pages: int
    minflt: int = 0
    cminflt: int = 0
    majflt: int = 0
    cmajflt: int = 0
    vsize: int = 0


class ProcIO(NamedTuple):
    """`/proc/<pid>/io`: storage bytes and read/write system calls."""

    read_bytes: int
    write_bytes: int
    cancelled_write_bytes: int
    syscr: int
    syscw: int


def split_stat(text: bytes) -> tuple[bytes, list[bytes]]:
    """The comm and the fields after it (state first); the comm may hold spaces and ')'."""
    open_paren = text.find(b"(")
    close_paren = text.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ParseError("stat: no '(comm)' field")
    fields = text[close_paren + 2:].split(None, 22)
    if len(fields) < 22:
        raise ParseError(f"stat: {len(fields) + 2} fields, expected at least 24")
    return text[open_paren + 1:close_paren], fields


def parse_stat(text: bytes | str) -> ProcStat:
    """Parse `/proc/<pid>/stat`."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    comm, fields = split_stat(text)
    try:
        return ProcStat(
            comm=comm.decode("utf-8", "replace"),
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            flags=int(fields[6]),
            utime=int(fields[11]),
            stime=int(fields[12]),
            cutime=int(fields[13]),
            cstime=int(fields[14]),
            num_threads=int(fields[17]),
            starttime=int(fields[19]),
            rss_pages=int(fields[21]),
            minflt=int(fields[7]),
            cminflt=int(fields[8]),
            majflt=int(fields[9]),
            cmajflt=int(fields[10]),
            vsize=int(fields[20]),
        )
    except ValueError as err:
        raise ParseError(f"stat: {err}") from None


def sample_from_stat(pid: int, text: bytes, btime: float) -> ProcSample | None:
    """A `ProcSample` straight from `/proc/<pid>/stat` text (the scan's hot path); None for kernel threads."""
    comm, f = split_stat(text)
    try:
        if int(f[6]) & PF_KTHREAD:
            return None
        starttime = int(f[19])
        return ProcSample.from_stat(ProcessId(pid, starttime), int(f[1]), f[0].decode("ascii", "replace"),
                                    int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK, int(f[17]), int(f[21]) * PAGE_SIZE,
                                    btime + starttime / CLK_TCK, comm.decode("utf-8", "replace"),
                                    int(f[13]) / CLK_TCK, int(f[14]) / CLK_TCK, int(f[7]), int(f[9]), int(f[8]),
                                    int(f[10]), int(f[20]))
    except ValueError as err:
        raise ParseError(f"stat: {err}") from None


_IO_KEYS = {b"read_bytes:": 0, b"write_bytes:": 1, b"cancelled_write_bytes:": 2, b"syscr:": 3, b"syscw:": 4}


def parse_io(text: bytes | str) -> ProcIO:
    """Parse `/proc/<pid>/io` ("key: value" lines); every field the exporter uses must be there."""
    if isinstance(text, str):
        text = text.encode()
    tokens = text.split()
    if len(tokens) >= 14 and tokens[4] == b"syscr:" and tokens[8] == b"read_bytes:" and tokens[12] == (
            b"cancelled_write_bytes:"):  # the kernel's fixed layout
        try:
            return ProcIO(int(tokens[9]), int(tokens[11]), int(tokens[13]), int(tokens[5]), int(tokens[7]))
        except ValueError:
            pass
    values = [-1] * 5
    for i in range(0, len(tokens) - 1, 2):
        slot = _IO_KEYS.get(tokens[i])
        if slot is not None:
            try:
                values[slot] = int(tokens[i + 1])
            except ValueError:
                raise ParseError(f"io: bad value for {tokens[i].decode(errors='replace')}") from None
    if min(values) < 0:
        raise ParseError("io: missing fields")
    return ProcIO(*values)


class StatusCounters(NamedTuple):
    """What a pass needs from `/proc/<pid>/status`: the main thread's context switches and VmSwap."""

    voluntary_switches: int | None
    involuntary_switches: int | None
    swap_bytes: int | None  # None for a zombie or a kernel without the line


def _status_number(text: bytes, key: bytes) -> int | None:
    at = text.find(key)
    if at < 0:
        return None
    end = text.find(b"\n", at + len(key))
    words = text[at + len(key):end if end >= 0 else len(text)].split()
    try:
        return int(words[0]) if words else None
    except ValueError:
        raise ParseError(f"status: bad value for {key.decode()}") from None


def parse_status_counters(text: bytes | str) -> StatusCounters:
    """Context switches and VmSwap from `/proc/<pid>/status` (a missing line is None)."""
    if isinstance(text, str):
        text = text.encode()
    swap = _status_number(text, b"\nVmSwap:")
    return StatusCounters(_status_number(text, b"\nvoluntary_ctxt_switches:"),
                          _status_number(text, b"\nnonvoluntary_ctxt_switches:"),
                          None if swap is None else swap * 1024)


def parse_nofile_limit(text: bytes | str) -> int | None:
    """The soft `Max open files` limit from `/proc/<pid>/limits`; None when unlimited or absent."""
    if isinstance(text, str):
        text = text.encode()
    at = text.find(b"Max open files")
    if at < 0:
        return None
    end = text.find(b"\n", at)
    words = text[at + len(b"Max open files"):end if end >= 0 else len(text)].split()
    if not words or words[0] == b"unlimited":
        return None
    try:
        value = int(words[0])
    except ValueError:
        raise ParseError("limits: bad Max open files line") from None
    return value if value > 0 else None


def parse_pss(text: bytes | str) -> int | None:
    """Proportional set size in bytes from `/proc/<pid>/smaps_rollup` (None without a Pss line)."""
    if isinstance(text, str):
        text = text.encode()
    value = _status_number(b"\n" + text, b"\nPss:")
    return None if value is None else value * 1024


def parse_btime(text: str) -> float:
    """Boot time (Unix seconds) from `/proc/stat`."""
    for line in text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ParseError("stat: no btime line")


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path (the `0::` line) of `/proc/<pid>/cgroup`, else the systemd v1 path."""
    fallback = None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
        if ":name=systemd:" in line:
            fallback = line.split(":", 2)[2]
    return fallback


def parse_uid(status_text: str) -> int | None:
    """The real uid from `/proc/<pid>/status`."""
    for line in status_text.splitlines():
        if line.startswith("Uid:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def parse_capabilities(status_text: str) -> int:
    """The effective capability mask (`CapEff`) from `/proc/<pid>/status`."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split()[1], 16)
            except (IndexError, ValueError):
                return 0
    return 0


def privilege_of(status_text: str, euid: int) -> str:
    """'root', 'capabilities' (ptrace/read-search granted) or 'user'."""
    if euid == 0:
        return "root"
    caps = parse_capabilities(status_text)
    if caps & (1 << CAP_SYS_PTRACE) or caps & (1 << CAP_DAC_READ_SEARCH):
        return "capabilities"
    return "user"
