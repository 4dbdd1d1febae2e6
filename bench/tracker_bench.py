"""`Tracker.update` alone, in one process: this checkout against another revision's tracker.

    python bench/tracker_bench.py [--procs 1000] [--apps 50] [--passes 200] [--rounds 7] [--rev REV]

Builds a sample stream once: PROCS processes over APPS apps (a parent per app, the rest its
children), with Linux fields. In each pass about a third of the processes use CPU, do I/O and
fault, the rest are idle (same counters), and 1% of the children exit, their parent reaping them
(its reaped-children counters grow), while as many new ones start. Then, in rounds, feeds the
whole stream to a fresh `Tracker` of this checkout and, with `--rev`, one of
`atlas_exporter/apps/tracker.py` at that revision, taking turns pass by pass (who goes first
alternates). Prints CPU microseconds per pass and the ratio this/rev of each round, then the
median ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atlas_exporter.apps import tracker as this_tracker  # noqa: E402
from atlas_exporter.model import ProcessId, ProcSample  # noqa: E402

Pass = list[tuple[ProcSample, str]]


def load_revision(rev: str, folder: str) -> Any:
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:atlas_exporter/apps/tracker.py"],
                          check=True, capture_output=True, text=True).stdout
    path = os.path.join(folder, "tracker_at_rev.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("tracker_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


class _Proc:
    """The cumulative counters of one simulated process."""

    def __init__(self, pid: int, ppid: int, app: str, start: int) -> None:
        self.id = ProcessId(pid, start)
        self.ppid = ppid
        self.app = app
        self.values = {"cpu_user_seconds": 0.01, "cpu_system_seconds": 0.01, "read_bytes": 4096,
                       "written_bytes": 0, "cancelled_write_bytes": 0, "read_ops": 10, "write_ops": 2,
                       "minor_faults": 100, "major_faults": 0, "voluntary_switches": 5, "involuntary_switches": 1,
                       "reaped_cpu_user_seconds": 0.0, "reaped_cpu_system_seconds": 0.0,
                       "reaped_minor_faults": 0, "reaped_major_faults": 0}

    def sample(self) -> ProcSample:
        v = self.values
        return ProcSample(
            id=self.id, ppid=self.ppid, state="S", cpu_user_seconds=v["cpu_user_seconds"],
            cpu_system_seconds=v["cpu_system_seconds"], threads=4, resident_bytes=50_000_000,
            start_time_seconds=1.7e9 + self.id.started / 100, open_fds=20, read_bytes=int(v["read_bytes"]),
            written_bytes=int(v["written_bytes"]), read_ops=int(v["read_ops"]), write_ops=int(v["write_ops"]),
            comm=self.app[:15], reaped_cpu_user_seconds=v["reaped_cpu_user_seconds"],
            reaped_cpu_system_seconds=v["reaped_cpu_system_seconds"], minor_faults=int(v["minor_faults"]),
            major_faults=int(v["major_faults"]), reaped_minor_faults=int(v["reaped_minor_faults"]),
            reaped_major_faults=int(v["reaped_major_faults"]), virtual_bytes=200_000_000,
            cancelled_write_bytes=int(v["cancelled_write_bytes"]), voluntary_switches=int(v["voluntary_switches"]),
            involuntary_switches=int(v["involuntary_switches"]), swap_bytes=0, fd_limit=1024)


def stream(procs: int, apps: int, passes: int, seed: int = 1) -> list[Pass]:
    """`passes` passes of (sample, app) pairs over `procs` processes in `apps` apps."""
    rng = random.Random(seed)
    next_pid = 1000
    parents: list[_Proc] = []
    children: list[_Proc] = []
    for a in range(apps):
        parents.append(_Proc(next_pid, 1, f"app{a}", next_pid))
        next_pid += 1
    for i in range(procs - apps):
        parent = parents[i % apps]
        children.append(_Proc(next_pid, parent.id.pid, parent.app, next_pid))
        next_pid += 1
    by_pid = {p.id.pid: p for p in parents}
    out: list[Pass] = []
    for tick in range(passes):
        for proc in (*parents, *children):
            if rng.random() < 0.33:
                v = proc.values
                v["cpu_user_seconds"] += 0.01
                v["cpu_system_seconds"] += 0.002
                v["read_bytes"] += 4096
                v["written_bytes"] += 8192
                v["read_ops"] += 3
                v["write_ops"] += 2
                v["minor_faults"] += 17
                v["voluntary_switches"] += 9
        for _ in range(max(1, len(children) // 100)):
            child = children.pop(rng.randrange(len(children)))
            parent = by_pid[child.ppid]
            pv, cv = parent.values, child.values
            pv["reaped_cpu_user_seconds"] += cv["cpu_user_seconds"] + cv["reaped_cpu_user_seconds"]
            pv["reaped_cpu_system_seconds"] += cv["cpu_system_seconds"] + cv["reaped_cpu_system_seconds"]
            pv["reaped_minor_faults"] += cv["minor_faults"] + cv["reaped_minor_faults"]
            pv["reaped_major_faults"] += cv["major_faults"] + cv["reaped_major_faults"]
            for key in ("read_bytes", "written_bytes", "read_ops", "write_ops", "cancelled_write_bytes"):
                pv[key] += cv[key]
            children.append(_Proc(next_pid, parent.id.pid, parent.app, next_pid + tick))
            next_pid += 1
        out.append([(p.sample(), p.app) for p in (*parents, *children)])
    return out


def us_per_pass(modules: dict[str, Any], passes: list[Pass]) -> dict[str, float]:
    """CPU microseconds per pass of each module's `Tracker`, fed the same passes in turn.

    The trackers take turns pass by pass (who goes first alternates), so a change in the
    machine's load falls on both alike.
    """
    trackers = {name: module.Tracker() for name, module in modules.items()}
    spent = dict.fromkeys(modules, 0.0)
    order = list(trackers.items())
    clock = time.process_time
    for i, named in enumerate(passes):
        for name, tracker in order if i % 2 else reversed(order):
            start = clock()
            tracker.update(named, float(i))
            spent[name] += clock() - start
    return {name: value / len(passes) * 1e6 for name, value in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--apps", type=int, default=50)
    ap.add_argument("--passes", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rev", help="a git revision to compare with (its apps/tracker.py)")
    args = ap.parse_args()
    passes = stream(args.procs, args.apps, args.passes)
    modules: dict[str, Any] = {"this": this_tracker}
    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as work:
        if args.rev:
            modules["rev"] = load_revision(args.rev, work)
        us_per_pass(modules, passes[:20])  # warm up
        ratios = []
        for _ in range(args.rounds):
            us = us_per_pass(modules, passes)
            line = "  ".join(f"{name} {us[name]:.0f} us/pass" for name in modules)
            if "rev" in us:
                ratios.append(us["this"] / us["rev"])
                line += f"  this/rev {ratios[-1]:.3f}"
            print(line, flush=True)
        if ratios:
            print(f"median this/rev {statistics.median(ratios):.3f} over {len(ratios)} rounds "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
