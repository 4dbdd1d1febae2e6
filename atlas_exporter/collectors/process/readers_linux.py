"""Readers of Linux `/proc`: small files in one read, a process's identity, files as a process sees them.

`read_proc_file(path)` returns bytes; `read_identity(procfs, pid, user_name)` returns the
`ProcIdentity` used for naming (comm, exe, cmdline, cwd, user, cgroup, and a `ProcessFiles`
reader for package.json-style lookups), or None when the process is gone or a kernel thread;
`current_privilege(procfs)` says what this exporter may read of other processes.

    read_identity("/proc", ProcessId(4312, 123456), UserNames())
        -> ProcIdentity(comm='nginx', exe='/usr/sbin/nginx', cmdline=('nginx: worker process',),
                        user='www-data', cgroup='/system.slice/nginx.service', ppid=4311, ...)
    current_privilege("/proc") -> 'user'
"""

from __future__ import annotations

import os
import pwd
import stat
import time
from collections.abc import Callable
from pathlib import Path

from atlas_exporter.collectors.process.parsers_linux import (
    CLK_TCK,
    PF_KTHREAD,
    ParseError,
    parse_cgroup,
    parse_stat,
    parse_uid,
    privilege_of,
)
from atlas_exporter.model import ProcessId, ProcIdentity, clean_label

EXEC_SETTLE_TRIES = 5
EXEC_SETTLE_SECONDS = 0.002
EXEC_SETTLE_AGE_SECONDS = 5.0


def current_privilege(procfs: Path | str = "/proc") -> str:
    """This process's privilege for reading other processes: 'root', 'capabilities' or 'user'."""
    try:
        status = Path(procfs, "self", "status").read_text()
    except OSError:
        status = ""
    return privilege_of(status, os.geteuid())


def read_proc_file(path: str) -> bytes:
    """The bytes of a small /proc file (one open, one read, one close)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


MAX_NAMING_FILE = 256 * 1024  # package.json files read for naming are at most this large


class ProcessFiles:
    """Reads small files as a process sees them (through `/proc/<pid>/root`), for naming.

    Only a regular file that anyone may read, or that the process's own (non-root) user owns, of
    at most MAX_NAMING_FILE bytes: a FIFO, a device, a link to a root-only file or a huge file is
    None, and nothing is opened for reading before that is known (the file is first opened with
    O_PATH, which never runs a device's open, then reopened through that descriptor).
    """

    __slots__ = ("root", "uid")

    def __init__(self, root: str, uid: int) -> None:
        self.root = root
        self.uid = uid

    def __call__(self, path: str) -> bytes | None:
        if not path.startswith("/") or "\0" in path:
            return None
        try:
            fd = os.open(self.root + path, os.O_PATH | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_NAMING_FILE:
                return None
            # world-readable, or the process's own (non-root) user's: an absolute link inside a
            # container resolves against the exporter's root, so root's own files do not count
            readable = st.st_mode & stat.S_IROTH or (st.st_uid == self.uid != 0 and st.st_mode & stat.S_IRUSR)
            if not readable:
                return None
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            data = os.read(rfd, MAX_NAMING_FILE + 1)
        except OSError:
            return None
        finally:
            os.close(rfd)
        return data if len(data) <= MAX_NAMING_FILE else None


class UserNames:
    """uid -> login name (cleaned to valid UTF-8; the number when the uid has no passwd entry), cached."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}

    def __call__(self, uid: int) -> str:
        name = self._names.get(uid)
        if name is None:
            try:
                name = clean_label(pwd.getpwuid(uid).pw_name)
            except KeyError:
                name = str(uid)
            self._names[uid] = name
        return name


def read_identity(procfs: str, pid: ProcessId, user_name: Callable[[int], str], *,
                  sleep: Callable[[float], None] = time.sleep,
                  since_boot: Callable[[], float] | None = None) -> ProcIdentity | None:
    """Read comm, exe, cwd, cmdline, user and cgroup of a live or zombie process.

    None if it is gone (or its pid was reused) or is a kernel thread (kernel threads belong to
    no application). A zombie keeps its comm, user and cgroup; its exe and cmdline are gone.
    The reads of cmdline, exe and cgroup may block (see `identity_linux`).

    A young live process with no arguments is in the middle of an exec: for a moment the kernel
    shows the new comm and exe while the new arguments are not in place yet (and, just after a
    fork, the parent's comm). A process that started less than `EXEC_SETTLE_AGE_SECONDS` ago
    (`since_boot` is the boot-time clock its start time counts on) is read again in that case, up
    to `EXEC_SETTLE_TRIES` times `EXEC_SETTLE_SECONDS` apart, so that it is not named from half an
    exec (`sh -c 'exec ...'`, `env`, `nohup` exec within milliseconds of the fork).
    """
    ident, mid_exec = _read_identity_once(procfs, pid, user_name)
    if not mid_exec:
        return ident
    now = since_boot() if since_boot is not None else time.clock_gettime(time.CLOCK_BOOTTIME)
    if now - pid.started / CLK_TCK > EXEC_SETTLE_AGE_SECONDS:
        return ident  # an old process that really runs with no arguments
    tries = 1
    while mid_exec and tries < EXEC_SETTLE_TRIES:
        sleep(EXEC_SETTLE_SECONDS)
        ident, mid_exec = _read_identity_once(procfs, pid, user_name)
        tries += 1
    return ident


def _read_identity_once(procfs: str, pid: ProcessId,
                        user_name: Callable[[int], str]) -> tuple[ProcIdentity | None, bool]:
    """One reading of `read_identity`, and whether it looks like the middle of an exec (a live
    process whose cmdline reads empty)."""
    base = f"{procfs}/{pid.pid}"
    try:
        st = parse_stat(read_proc_file(f"{base}/stat"))
    except (OSError, ParseError):
        return None, False
    if st.starttime != pid.started or st.flags & PF_KTHREAD:
        return None, False
    ident = ProcIdentity(comm=st.comm, ppid=st.ppid)
    try:
        exe = os.readlink(f"{base}/exe")
        if exe.endswith(" (deleted)"):
            exe = exe[: -len(" (deleted)")]
        ident.exe = clean_label(exe)  # a path of any bytes: undecodable ones become U+FFFD
    except OSError:
        pass
    try:
        ident.cwd = os.readlink(f"{base}/cwd")
    except OSError:
        pass
    mid_exec = False
    try:
        raw = read_proc_file(f"{base}/cmdline")
        ident.cmdline = tuple(a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0") if raw)
        mid_exec = not raw and st.state not in ("Z", "X")
    except OSError:
        pass
    uid: int | None = None
    try:
        uid = parse_uid(read_proc_file(f"{base}/status").decode("utf-8", "replace"))
        if uid is not None:
            ident.user = user_name(uid)
    except (OSError, ValueError):
        pass
    if uid is not None:
        ident.read_file = ProcessFiles(f"{base}/root", uid)
    try:
        ident.cgroup = parse_cgroup(read_proc_file(f"{base}/cgroup").decode("utf-8", "replace"))
    except OSError:
        pass
    return ident, mid_exec
