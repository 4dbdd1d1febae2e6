"""Readers of crash evidence on Linux: report file heads, /dev/kmsg records, a task's comm and Tgid.

Each opens without following symlinks or blocking where a hostile file could stall the
watcher, and returns raw text or bytes for the parsers in `reports_linux.py`:

    read_report_head(Path("/var/crash/_usr_bin_foo.1000.crash"), 1 << 20) -> (FileState(...), "ProblemType: Crash\n...")
    read_kmsg(fd) -> "6,1234,99000000,-;foo[4242]: segfault at 0 ..."
    read_tgid(Path("/proc"), 4250) -> 4242
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from atlas_exporter.collectors.crash.reports_linux import parse_tgid


@dataclass(frozen=True, slots=True)
class FileState:
    """What a report file's stat says: a new mtime means a new or rewritten report; `uid` its owner."""

    mtime_ns: int
    size: int
    uid: int = 0


def file_state(entry: os.DirEntry[str]) -> FileState | None:
    """The state of a listed folder entry (not following a symlink); None when it is gone."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return FileState(st.st_mtime_ns, st.st_size, st.st_uid)


def read_report_head(path: Path, limit: int) -> tuple[FileState, str] | None:
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
    return FileState(st.st_mtime_ns, st.st_size, st.st_uid), b"".join(chunks).decode("utf-8", "replace")


def open_kmsg(path: Path) -> int:
    """Open the kernel log for new records only (non-blocking, positioned at the end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        os.close(fd)
        raise
    return fd


def read_comm(procfs: Path, pid: int) -> bytes | None:
    """The raw comm of a task (a thread id works too), None when it is gone or unreadable."""
    try:
        fd = os.open(procfs / str(pid) / "comm", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, 64).rstrip(b"\n")
    except OSError:
        return None
    finally:
        os.close(fd)


def read_tgid(procfs: Path, tid: int) -> int | None:
    """The thread group (process) id of thread `tid`, from the `Tgid:` line of its status; None when gone."""
    try:
        with open(f"{procfs}/{tid}/status", "rb") as handle:
            text = handle.read(4096)
    except OSError:
        return None
    return parse_tgid(text)


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
