"""OOM kills per app from cgroup memory counters (no privilege needed).

A cgroup counts the OOM kills of its processes: cgroup v2 `memory.events.local` (or
`memory.events` on kernels before 5.2) and cgroup v1 `memory.oom_control` (Linux 4.13+),
both as an `oom_kill N` line, both world-readable. When every process in a cgroup belongs to
one app, the app "is" that cgroup and a rise of its counter is an OOM kill of that app.
`CgroupOomWatcher.poll()` walks the memory cgroup trees and returns those rises; the crash
source records them as `atlas_app_crashes_total{reason="oom_kill"}`, deduplicated against the
kernel log's `Out of memory: Killed process N` line for the same kill.

Parsers (`parse_memory_mounts`, `parse_oom_kill`) are pure.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OOM_KILL = "oom_kill"
MAX_MEMBERS = 64  # pids read from cgroup.procs to decide a cgroup's app
OWNER_TTL_SECONDS = 10.0  # how long a cgroup's app is trusted before its members are read again
MAX_CGROUPS = 4096  # a walk stops here: a bound on the work per poll


@dataclass(frozen=True, slots=True)
class MemoryRoot:
    """A mounted memory cgroup hierarchy and the file that holds its OOM kill count."""

    path: Path
    version: int  # 1 or 2


def parse_memory_mounts(text: str) -> list[MemoryRoot]:
    """The memory cgroup hierarchies in `/proc/self/mounts` text (v2 mounts, v1 `memory` mounts)."""
    roots: list[MemoryRoot] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount_point = fields[1].replace("\\040", " ")
        if fields[2] == "cgroup2":
            roots.append(MemoryRoot(Path(mount_point), 2))
        elif fields[2] == "cgroup" and "memory" in fields[3].split(","):
            roots.append(MemoryRoot(Path(mount_point), 1))
    return roots


def parse_oom_kill(text: str) -> int | None:
    """The `oom_kill N` count of a `memory.events` or `memory.oom_control` file; None when absent."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == OOM_KILL:
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


@dataclass(slots=True)
class _Cgroup:
    kills: int
    owner: str | None = None
    owner_at: float = float("-inf")


class CgroupOomWatcher:
    """Rises of per-cgroup OOM kill counters, attributed to the app that owns the cgroup.

    `app_of_pid` is the resolver's pid -> app. `app_of_cgroup` names a cgroup whose processes
    were never seen (created and killed between two polls) from its path, as the naming rules
    would name its processes. The first poll only takes the baseline; a cgroup created later
    counts its kills from zero.
    """

    def __init__(self, app_of_pid: Callable[[int], str | None], *, procfs: Path = Path("/proc"),
                 roots: list[MemoryRoot] | None = None, clock: Callable[[], float] | None = None,
                 app_of_cgroup: Callable[[str], str | None] | None = None) -> None:
        self.app_of_pid = app_of_pid
        self.app_of_cgroup = app_of_cgroup
        self.clock = clock or time.monotonic
        if roots is None:
            try:
                roots = parse_memory_mounts((procfs / "self" / "mounts").read_text())
            except OSError:
                roots = []
        # a v2 hierarchy without the memory controller has no memory.events: it is found empty
        self.roots = roots
        self._cgroups: dict[Path, _Cgroup] = {}
        self._primed = False
        self.unattributed = 0  # kills in cgroups shared by several apps (the kernel log may still name them)

    @property
    def available(self) -> bool:
        return bool(self.roots)

    def _counter_file(self, folder: Path, version: int) -> Path | None:
        if version == 1:
            path = folder / "memory.oom_control"
            return path if path.exists() else None
        for name in ("memory.events.local", "memory.events"):
            path = folder / name
            if path.exists():
                return path
        return None

    def _walk(self) -> list[tuple[Path, int]]:
        found: list[tuple[Path, int]] = []
        for root in self.roots:
            stack = [root.path]
            while stack and len(found) < MAX_CGROUPS:
                folder = stack.pop()
                try:
                    with os.scandir(folder) as entries:
                        for entry in entries:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(Path(entry.path))
                except OSError:
                    continue
                if folder != root.path:  # the root cgroup holds everything: never one app's
                    found.append((folder, root.version))
        return found

    def _owner(self, folder: Path, state: _Cgroup, now: float, *, refresh: bool) -> str | None:
        if not refresh and now - state.owner_at < OWNER_TTL_SECONDS:
            return state.owner
        try:
            text = (folder / "cgroup.procs").read_text()
        except OSError:
            return state.owner
        apps = set()
        for word in text.split()[:MAX_MEMBERS]:
            try:
                app = self.app_of_pid(int(word))
            except Exception:  # a bad pid or a naming failure must not stop the watcher
                app = None
            if app is not None:
                apps.add(app)
        if apps:  # an emptied cgroup keeps the app it had
            state.owner = apps.pop() if len(apps) == 1 else None
            state.owner_at = now
        return state.owner

    def _named_by_path(self, folder: Path) -> str | None:
        for root in self.roots:
            if folder.is_relative_to(root.path):
                try:
                    return self.app_of_cgroup("/" + str(folder.relative_to(root.path)))  # type: ignore[misc]
                except Exception:  # a naming failure must not stop the watcher
                    return None
        return None

    def poll(self) -> list[tuple[str, int]]:
        """(app, kills) for every cgroup whose OOM kill count rose since the previous poll."""
        now = self.clock()
        seen: dict[Path, _Cgroup] = {}
        out: list[tuple[str, int]] = []
        for folder, version in self._walk():
            counter = self._counter_file(folder, version)
            if counter is None:
                continue
            try:
                kills = parse_oom_kill(counter.read_text())
            except OSError:
                continue
            if kills is None:
                continue
            state = self._cgroups.get(folder)
            if state is None:
                state = _Cgroup(kills=kills if not self._primed else 0)
            seen[folder] = state
            if kills > state.kills:
                # an owner learned before the kill wins: the killed process may have been its only one
                owner = state.owner if state.owner is not None else self._owner(folder, state, now, refresh=True)
                if owner is None and state.owner_at == float("-inf") and self.app_of_cgroup is not None:
                    owner = self._named_by_path(folder)  # never seen with processes in it
                if owner is None:
                    self.unattributed += kills - state.kills
                    log.debug("OOM kill in %s, which is not one app's cgroup", folder)
                else:
                    out.append((owner, kills - state.kills))
            state.kills = kills  # lower: the cgroup was removed and made again, counting from 0
            self._owner(folder, state, now, refresh=False)
        self._cgroups = seen
        self._primed = True
        return out
