"""Exact accounting with real processes: orphans reaped by a subreaper, cancelled writes.

- A supervisor marks itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), starts a
  launcher, whose child burns 1.5 s of CPU; the launcher exits at the end of the burn, so the
  burner is reparented to the supervisor, which reaps it. The supervisor's reaped-children CPU
  then holds the burner's CPU: it must not count again.
- A writer writes 20 MiB and deletes the file before writeback: the kernel's write_bytes and
  cancelled_write_bytes both hold the 20 MiB, and so must the two counters.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import parse_exposition

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc accounting")
MIB = 1 << 20

SUPERVISOR = r"""
import ctypes, json, os, sys, time
tag = sys.argv[1]
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
burn = ("import os, sys\n"
        "start = sum(os.times()[:2])\n"
        "while sum(os.times()[:2]) - start < 1.5: pass\n"
        "os.write(1, b'x')\n"
        "import time; time.sleep(0.05)\n")
launcher = os.fork()
if launcher == 0:
    os.setsid()
    read, write = os.pipe()
    burner = os.fork()
    if burner == 0:
        os.dup2(write, 1)
        os.execv(sys.executable, [sys.executable, "-c", burn, tag + "-burner"])
    os.close(write)
    os.read(read, 1)  # the burn is done: leave the burner to the subreaper
    os._exit(0)
reaped = 0
while reaped < 2:  # the launcher, then the orphaned burner
    os.wait()
    reaped += 1
t = os.times()
print(json.dumps({"children": t[2] + t[3], "own": t[0] + t[1]}), flush=True)
sys.stdin.read()
"""


def cpu(metrics: dict[str, float], app: str) -> float:
    return sum(metrics.get(f'atlas_app_cpu_seconds_total{{app="{app}",mode="{m}"}}', 0.0) for m in ("user", "system"))


def test_orphan_reaped_by_a_subreaper_counts_its_cpu_once() -> None:
    tag = f"atlas-acct-{uuid.uuid4().hex[:8]}"
    exporter = Exporter(parse_config({"apps": [{"name": "{1}", "cmdline": rf"({tag}-[a-z]+)"}],
                                      "snapshot_max_age_seconds": 0}), enabled={"process"}, sources=[])
    exporter.render_metrics()
    stop = threading.Event()

    def scrape_often() -> None:  # a fast scraper: the burner is seen alive, with its first parent
        while not stop.is_set():
            exporter.render_metrics()
            stop.wait(0.25)

    scraper = threading.Thread(target=scrape_often)
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, tag, f"{tag}-supervisor"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    scraper.start()
    try:
        assert proc.stdout is not None
        report = json.loads(proc.stdout.readline())
        time.sleep(0.5)
    finally:
        stop.set()
        scraper.join()
    try:
        m = parse_exposition(exporter.render_metrics()[0].decode())
        supervisor, burner = cpu(m, f"{tag}-supervisor"), cpu(m, f"{tag}-burner")
        assert report["children"] >= 1.5  # the supervisor's reaped-children CPU holds the burn
        # the burner was seen burning; what it used after its last scan counts for its reaper
        assert burner >= report["children"] - 0.5
        # every CPU second once: the supervisor's own plus its children's, not the burn twice
        assert supervisor + burner == pytest.approx(report["own"] + report["children"], abs=0.1)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


WRITER = r"""
import json, os, sys
def io():
    return {k: int(v) for k, v in (line.split(": ") for line in open("/proc/self/io").read().splitlines())}
path = sys.argv[1]
before = io()
with open(path, "wb") as f:
    for _ in range(20):
        f.write(os.urandom(1 << 20))
os.unlink(path)  # long before the 30 s writeback: the dirty pages are cancelled
after = io()
print(json.dumps({k: after[k] - before[k] for k in ("write_bytes", "cancelled_write_bytes")}), flush=True)
sys.stdin.read()
"""


def test_writes_deleted_before_writeback_are_counted_as_cancelled(tmp_path: Path) -> None:
    tag = f"atlas-acct-{uuid.uuid4().hex[:8]}-writer"
    exporter = Exporter(parse_config({"apps": [{"name": "{1}", "cmdline": rf"({tag})"}],
                                      "snapshot_max_age_seconds": 0}), enabled={"process"}, sources=[])
    data = Path(__file__).resolve().parent.parent / f".{tag}.tmp"  # on the disk, not a tmpfs
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data), tag], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        truth = json.loads(proc.stdout.readline())
        m = parse_exposition(exporter.render_metrics()[0].decode())
        written = m[f'atlas_app_disk_written_bytes_total{{app="{tag}"}}']
        cancelled = m[f'atlas_app_disk_cancelled_write_bytes_total{{app="{tag}"}}']
        assert truth["write_bytes"] >= 20 * MIB and truth["cancelled_write_bytes"] >= 19 * MIB
        # the exporter counts the whole process (its start-up too): at least the truth, close to it
        assert truth["write_bytes"] <= written <= truth["write_bytes"] + MIB
        assert truth["cancelled_write_bytes"] <= cancelled <= truth["cancelled_write_bytes"] + MIB
        assert written - cancelled < 2 * MIB  # net written: almost nothing reached the disk
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        data.unlink(missing_ok=True)


PARENT_IGNORING_SIGCHLD = r"""
import json, os, signal, subprocess, sys
def write_bytes():
    return int(next(l for l in open("/proc/self/io") if l.startswith("write_bytes:")).split()[1])
tag, path = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel, never by us
child_code = ("import os, sys\n"
              "with open(sys.argv[1], 'wb') as f:\n"
              "    f.write(os.urandom(8 << 20)); f.flush(); os.fsync(f.fileno())\n"
              "print('written', flush=True)\n"
              "sys.stdin.read()\n")
child = subprocess.Popen([sys.executable, "-c", child_code, path + ".child", tag + "-child"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print("child written", flush=True)
sys.stdin.readline()  # the test has seen the child alive
child.stdin.close()
while os.path.exists(f"/proc/{child.pid}"):  # auto-reaped: gone without a wait()
    os.sched_yield()
sys.stdin.readline()  # the test has seen the child gone
with open(path, "wb") as f:
    f.write(os.urandom(4 << 20)); f.flush(); os.fsync(f.fileno())
print(json.dumps({"own_write_bytes": write_bytes()}), flush=True)
sys.stdin.read()
"""


def test_auto_reaped_child_never_swallows_the_parents_own_writes() -> None:
    tag = f"atlas-acct-{uuid.uuid4().hex[:8]}"
    exporter = Exporter(parse_config({"apps": [{"name": "{1}", "cmdline": rf"({tag}-[a-z]+)"}],
                                      "snapshot_max_age_seconds": 0}), enabled={"process"}, sources=[])
    data = Path(__file__).resolve().parent.parent / f".{tag}.tmp"
    proc = subprocess.Popen([sys.executable, "-c", PARENT_IGNORING_SIGCHLD, tag, str(data), f"{tag}-parent"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "child written"
        seen = parse_exposition(exporter.render_metrics()[0].decode())
        assert seen[f'atlas_app_disk_written_bytes_total{{app="{tag}-child"}}'] >= 8 * MIB
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(0.5)
        exporter.render_metrics()  # the child is gone: a reap credit for the parent
        proc.stdin.write("go\n")
        proc.stdin.flush()
        truth = json.loads(proc.stdout.readline())
        m = parse_exposition(exporter.render_metrics()[0].decode())
        parent = m[f'atlas_app_disk_written_bytes_total{{app="{tag}-parent"}}']
        assert truth["own_write_bytes"] >= 4 * MIB
        assert parent == pytest.approx(truth["own_write_bytes"], abs=MIB)  # its own 4 MiB, not eaten
        assert m[f'atlas_app_disk_written_bytes_total{{app="{tag}-child"}}'] >= 8 * MIB
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        for leftover in (data, Path(f"{data}.child")):
            leftover.unlink(missing_ok=True)
