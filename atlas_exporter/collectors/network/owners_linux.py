"""Who owns a socket on Linux: the socket inode map from `/proc/<pid>/fd` and the cgroup v2 map.

Returns pids and app names, for example

    SocketInodeMap(Path("/proc")).lookup(9879) == 4312          # socket:[9879] is open in pid 4312
    CgroupApps(Path("/sys/fs/cgroup"), resolver).app_of(1234) == "nginx"

`SystemOwners` is the `OwnerResolver` of a live system: the inode map first, then the cgroup id.
`parse_cgroup2_mount` is pure; the rest reads `/proc` and the cgroup2 tree.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from atlas_exporter.apps.naming_default import unit_of_cgroup
from atlas_exporter.apps.resolver import AppNaming, as_naming
from atlas_exporter.collectors.network.sockdiag_linux import TcpSocketInfo
from atlas_exporter.model import AppOfPid, ProcessId

log = logging.getLogger(__name__)

YOUNG_PROCESS_SECONDS = 2.0
CGROUP_CACHE_SECONDS = 30.0
CGROUP_WALK_SECONDS = 1.0  # an unknown cgroup id walks the cgroup tree at most this often


class SocketInodeMap:
    """Socket inode -> pid, from the `socket:[inode]` links in `/proc/<pid>/fd`, cached.

    `refresh(wanted)` first reads only the fd folders of processes that are new or whose fd count
    (`st_size` of the folder, Linux 6.2+) changed, and walks every process only when an inode is
    still missing, at most once per `full_walk_interval` seconds. Inodes a full walk could not find
    (processes of other users without root, processes that already exited, sockets held only by the
    kernel) are remembered and not searched for again. A socket open in several processes belongs
    to the lowest pid.
    """

    def __init__(self, procfs: Path = Path("/proc"), *, full_walk_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._procfs = str(procfs)
        self._full_walk_interval = full_walk_interval
        self._clock = clock
        self._last_full_walk = float("-inf")
        self._pid_of: dict[int, int] = {}
        self._fd_counts: dict[int, int] = {}
        self._first_seen: dict[int, float] = {}
        self._unresolvable: set[int] = set()
        self._listed: set[int] = set()  # the pids of the last listing
        self.partial_walks = 0
        self.full_walks = 0
        self.denied = 0

    def lookup(self, inode: int) -> int | None:
        return self._pid_of.get(inode)

    def refresh(self, wanted: Iterable[int], *, new_processes_only: bool = False) -> None:
        """Find the pids of the `wanted` inodes (see the class docstring).

        `new_processes_only` reads only the fd folders of processes that appeared since the last
        refresh or are still young: what the quick dumps for new connections can afford.
        """
        missing = {i for i in wanted if i and i not in self._pid_of and i not in self._unresolvable}
        if not missing:
            return
        pids = self._pids()
        if new_processes_only:
            now = self._clock()
            listed, first = self._listed, not self._listed
            for pid in pids:
                if pid not in listed:
                    self._first_seen.setdefault(pid, float("-inf") if first else now)
                if now - self._first_seen.get(pid, float("-inf")) < YOUNG_PROCESS_SECONDS:
                    self._read_fds(pid, missing)
            self._listed = set(pids)
            return
        now = self._clock()
        counts: dict[int, int] = {}
        first_seen: dict[int, float] = {}
        changed: list[int] = []
        for pid in pids:
            try:
                size = os.stat(f"{self._procfs}/{pid}/fd").st_size
            except OSError:
                continue
            counts[pid] = size
            born = first_seen[pid] = self._first_seen.get(pid, now)
            # young processes are read every time: while starting they reuse fd numbers, so their
            # fd count can stay the same across the creation of a socket
            if size == 0 or self._fd_counts.get(pid) != size or now - born < YOUNG_PROCESS_SECONDS:
                changed.append(pid)
        self._fd_counts = counts
        self._first_seen = first_seen
        self._listed = set(pids)
        self.partial_walks += 1
        for pid in changed:
            self._read_fds(pid, missing)
        if missing - self._pid_of.keys() and self._clock() - self._last_full_walk >= self._full_walk_interval:
            self._last_full_walk = self._clock()
            self.full_walks += 1
            changed_set = set(changed)
            for pid in pids:
                if pid not in changed_set:
                    self._read_fds(pid, missing)
            self._unresolvable |= missing - self._pid_of.keys()

    def is_unresolvable(self, inode: int) -> bool:
        return inode in self._unresolvable

    def retain(self, live: set[int]) -> None:
        """Forget inodes that are no longer live sockets."""
        self._pid_of = {i: p for i, p in self._pid_of.items() if i in live}
        self._unresolvable &= live

    def size(self) -> int:
        return len(self._pid_of) + len(self._unresolvable)

    def _pids(self) -> list[int]:
        try:
            return [int(name) for name in os.listdir(self._procfs) if name.isdigit()]
        except OSError:
            return []

    def _read_fds(self, pid: int, missing: set[int]) -> None:
        base = f"{self._procfs}/{pid}/fd"
        try:
            names = os.listdir(base)
        except PermissionError:
            self.denied += 1
            return
        except OSError:
            return
        pid_of = self._pid_of
        for name in names:
            try:
                target = os.readlink(f"{base}/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                try:
                    inode = int(target[8:-1])
                except ValueError:
                    continue
                old = pid_of.get(inode)
                if old is None or pid < old:
                    pid_of[inode] = pid


def find_cgroup2_root(procfs: Path = Path("/proc")) -> Path | None:
    """The cgroup v2 mount point, from `<procfs>/self/mountinfo`; None when there is none."""
    try:
        text = (procfs / "self" / "mountinfo").read_text()
    except OSError:
        return None
    return parse_cgroup2_mount(text)


def parse_cgroup2_mount(mountinfo: str) -> Path | None:
    """The first mount point whose filesystem type is cgroup2 in a mountinfo text."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and right.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(fields[4].replace("\\040", " "))
    return None


class CgroupApps:
    """cgroup v2 id -> app, when every process of that cgroup belongs to the same app.

    The id a socket carries is the inode of its cgroup folder. Ids are resolved by walking the
    cgroup2 tree (at most once per `CGROUP_CACHE_SECONDS` for an unknown id); answers are cached as
    long, and each walk drops the answers of cgroups that no longer exist or that expired, so
    transient cgroups (session scopes, pods) do not pile up. The root cgroup never identifies an app.
    """

    def __init__(self, root: Path | None, naming: AppNaming | AppOfPid,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._root = root
        self._naming = as_naming(naming)
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._walked = float("-inf")
        self._answers: dict[int, tuple[str | None, float]] = {}
        self._root_id = None
        if root is not None:
            try:
                self._root_id = os.stat(root).st_ino
            except OSError:
                self._root = None

    def app_of(self, cgroup_id: int) -> str | None:
        if self._root is None or cgroup_id in (0, 1, self._root_id):
            return None
        now = self._clock()
        cached = self._answers.get(cgroup_id)
        if cached is not None and now - cached[1] < CGROUP_CACHE_SECONDS:
            return cached[0]
        path = self._paths.get(cgroup_id)
        if path is None and now - self._walked >= CGROUP_WALK_SECONDS:
            self._walk(now)
            self._walked = now
            path = self._paths.get(cgroup_id)
        app = self._single_app(path) if path is not None else None
        self._answers[cgroup_id] = (app, now)
        return app

    def _walk(self, now: float) -> None:
        paths: dict[int, str] = {}
        for folder, _dirs, _files in os.walk(str(self._root)):
            try:
                paths[os.stat(folder).st_ino] = folder
            except OSError:
                continue
        self._paths = paths
        self._answers = {cgroup_id: answer for cgroup_id, answer in self._answers.items()
                         if cgroup_id in paths and now - answer[1] < CGROUP_CACHE_SECONDS}

    def size(self) -> int:
        """How many answers are cached."""
        return len(self._answers)

    def _single_app(self, path: str) -> str | None:
        try:
            with open(f"{path}/cgroup.procs") as handle:
                pids = [int(line) for line in handle if line.strip().isdigit()]
        except OSError:
            return None
        apps = {self._naming.app_of_pid(pid) for pid in pids}
        apps.discard(None)
        if len(apps) == 1:
            return apps.pop()
        if not apps and self._root is not None:
            # every process of the cgroup is gone (a short job): a service, scope or container
            # cgroup still says which app it was
            relative = "/" + os.path.relpath(path, self._root)
            if unit_of_cgroup(relative):
                return self._naming.app_of_cgroup(relative)
        return None


@runtime_checkable
class ProcessIdentities(Protocol):
    """A naming service that also names a process by its identity (an `AppResolver`).

    With it a socket's owner is kept as a `ProcessId`, which a reused pid does not match.
    """

    def token_of(self, pid: int) -> ProcessId | None: ...

    def app_of_id(self, pid: ProcessId) -> str | None: ...


class SystemOwners:
    """The `OwnerResolver` of a live system: inode map first, then cgroup id."""

    def __init__(self, inodes: SocketInodeMap, cgroups: CgroupApps | None, naming: AppNaming) -> None:
        self._inodes = inodes
        self._cgroups = cgroups
        self._naming = naming
        self._identities = naming if isinstance(naming, ProcessIdentities) else None
        self._last_pid: int | None = None

    def prepare(self, ns: int, sockets: list[TcpSocketInfo], *, quick: bool = False) -> None:
        """Runs outside the accounts' lock: the fd walks, and the lookups `owner` will repeat.

        Naming a pid (the resolver reads its identity once) and answering a cgroup id (a walk
        of the cgroup tree, then `cgroup.procs`) are slow; done here, their answers are cached
        and `owner`, called under the lock, only looks them up.
        """
        self._inodes.refresh((info.inode for info in sockets), new_processes_only=quick)
        for info in sockets:
            pid = self._inodes.lookup(info.inode) if info.inode else None
            if pid is not None:
                try:
                    if self._naming.app_of_pid(pid) is not None:
                        continue
                except Exception:  # a naming failure is the owner lookup's to report, not this warm-up's
                    log.debug("naming pid %d failed", pid, exc_info=True)
            if self._cgroups is not None and info.cgroup_id:
                self._cgroups.app_of(info.cgroup_id)

    def owner(self, ns: int, info: TcpSocketInfo) -> str | None:
        self._last_pid = None
        if info.inode:
            pid = self._inodes.lookup(info.inode)
            if pid is not None:
                app = self._naming.app_of_pid(pid)
                if app is not None:
                    self._last_pid = pid
                    return app
        if self._cgroups is not None and info.cgroup_id:
            return self._cgroups.app_of(info.cgroup_id)
        return None

    def owner_id(self, ns: int, info: TcpSocketInfo) -> object | None:
        """The process `owner` just found for `info` (its identity, to follow its name), or None."""
        pid = self._last_pid
        if pid is None:
            return None
        if self._identities is not None:
            return self._identities.token_of(pid)
        return pid

    def name_of(self, owner: object) -> str | None:
        """The current name of a socket's owning process; None when it is gone."""
        if isinstance(owner, int):
            return self._naming.app_of_pid(owner)
        assert self._identities is not None and isinstance(owner, ProcessId)  # what `owner_id` gave
        return self._identities.app_of_id(owner)

    def settled(self, ns: int, info: TcpSocketInfo) -> bool:
        return info.inode == 0 or self._inodes.is_unresolvable(info.inode)

