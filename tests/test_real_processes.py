"""Real processes of known resource use, measured through the whole exporter.

Each workload (tests/workload.py) reports what it measured of itself; the exporter's
per-app numbers must agree within the stated tolerance. The workload is named by a
configured rule, so each test has an app of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas_exporter.collectors.process.parsers_linux import PAGE_SIZE
from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import parse_exposition

WORKLOAD = Path(__file__).parent / "workload.py"
MIB = 1 << 20
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")


class Workload:
    def __init__(self, mode: str, *args: str) -> None:
        self.app = f"wl-{mode}-{uuid.uuid4().hex[:8]}"
        self.proc = subprocess.Popen([sys.executable, str(WORKLOAD), self.app, mode, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"workload {mode} died: rc={self.proc.poll()}"
        self.report = json.loads(line)

    def finish(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    config = parse_config({"apps": [{"name": "{1}", "cmdline": r"workload\.py (wl-[a-z]+-[0-9a-f]+)"}],
                           "snapshot_max_age_seconds": 0})
    yield Exporter(config, enabled={"process"}, sources=[])


@pytest.fixture
def workloads() -> Iterator[list[Workload]]:
    started: list[Workload] = []
    yield started
    for w in started:
        w.finish()


def scrape(exporter: Exporter) -> dict[str, float]:
    return parse_exposition(exporter.render_metrics()[0].decode())


def value(metrics: dict[str, float], name: str, app: str, extra: str = "") -> float:
    return metrics[f'{name}{{app="{app}"{extra}}}']


def cpu(metrics: dict[str, float], app: str) -> float:
    return (value(metrics, "atlas_app_cpu_seconds_total", app, ',mode="user"')
            + value(metrics, "atlas_app_cpu_seconds_total", app, ',mode="system"'))


def test_cpu_seconds_within_5_percent(exporter: Exporter, workloads: list[Workload]) -> None:
    scrape(exporter)  # the workload starts after the exporter: it must count in full
    w = Workload("cpu", "1.5")
    workloads.append(w)
    truth = w.report["user"] + w.report["system"]
    measured = cpu(scrape(exporter), w.app)
    assert truth >= 1.5
    assert measured == pytest.approx(truth, rel=0.05)


def test_cpu_holds_after_exit(exporter: Exporter, workloads: list[Workload]) -> None:
    w = Workload("cpu", "0.5")
    workloads.append(w)
    before = cpu(scrape(exporter), w.app)
    w.finish()
    after = scrape(exporter)
    assert value(after, "atlas_app_processes", w.app) == 0
    assert cpu(after, w.app) >= before


def test_written_bytes_with_fsync_within_5_percent(exporter: Exporter, workloads: list[Workload],
                                                   tmp_path: Path) -> None:
    size = 48 * MIB
    w = Workload("write", str(size), str(tmp_path / "out.bin"))
    workloads.append(w)
    written = value(scrape(exporter), "atlas_app_disk_written_bytes_total", w.app)
    assert written == pytest.approx(size, rel=0.05)


def test_cold_read_bytes_within_5_percent(exporter: Exporter, workloads: list[Workload], tmp_path: Path) -> None:
    size = 32 * MIB
    path = tmp_path / "in.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    w = Workload("read", str(path))
    workloads.append(w)
    assert w.report["read"] == size
    read = value(scrape(exporter), "atlas_app_disk_read_bytes_total", w.app)
    assert read == pytest.approx(size, rel=0.05)


def test_write_ops_within_5_percent(exporter: Exporter, workloads: list[Workload], tmp_path: Path) -> None:
    count = 4000
    w = Workload("writes", str(count), str(tmp_path / "ops.bin"))
    workloads.append(w)
    ops = value(scrape(exporter), "atlas_app_io_write_ops_total", w.app)
    assert ops == pytest.approx(count, rel=0.05)


def test_resident_memory_threads_fds_exact(exporter: Exporter, workloads: list[Workload]) -> None:
    mem = Workload("mem", str(200 * MIB))
    threads = Workload("threads", "16")
    fds = Workload("fds", "50")
    workloads.extend([mem, threads, fds])
    pid = mem.report["pid"]

    def rss() -> int:  # the kernel's rss in /proc/<pid>/stat, which process-exporter reports too
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[21]) * PAGE_SIZE

    for _ in range(20):  # compare at a moment the kernel's value did not move during the scrape
        before = rss()
        m = scrape(exporter)
        if rss() == before:
            break
    assert value(m, "atlas_app_resident_memory_bytes", mem.app) == before
    assert before >= 200 * MIB
    assert value(m, "atlas_app_threads", threads.app) == 17  # 16 workers and the main thread
    assert value(m, "atlas_app_open_fds", fds.app) == len(os.listdir(f"/proc/{fds.report['pid']}/fd"))
    assert value(m, "atlas_app_open_fds", fds.app) >= 53  # 50 files and stdin, stdout, stderr
    for w in (mem, threads, fds):
        assert value(m, "atlas_app_processes", w.app) == 1


def test_forked_children_cpu_counted_once(exporter: Exporter, workloads: list[Workload]) -> None:
    scrape(exporter)
    w = Workload("fork", "3", "0.4")  # three children burn 0.4 s each and are reaped between scrapes
    workloads.append(w)
    truth = w.report["user"] + w.report["system"] + w.report["children_user"] + w.report["children_system"]
    assert truth >= 1.2
    measured = cpu(scrape(exporter), w.app)
    assert measured == pytest.approx(truth, rel=0.05)
