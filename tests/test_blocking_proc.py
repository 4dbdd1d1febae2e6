"""A /proc read that blocks never holds up a scrape.

Reading /proc/<pid>/cmdline waits while the process's memory map lock is held; here the same
is made certain with a fake procfs whose `cmdline` is a FIFO (an open for reading blocks until a
writer comes). The scrape answers in time without that process, which is named in a later pass
once its read finishes. The network source answers scrapes while its owner lookups are slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_fake_proc import fake_proc, write_proc

from atlas_exporter.collectors.network.source_linux import LinuxNetworkSource
from atlas_exporter.collectors.process.source_linux import LinuxProcessSource
from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import REPO, parse_exposition

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux procfs layout")


def _blocking_procfs(tmp_path: Path) -> tuple[Path, Path]:
    procfs = fake_proc(tmp_path / "proc")
    fifo = procfs / "900" / "cmdline"  # python3 /srv/etl/etl.py: named "etl" from its cmdline
    fifo.unlink()
    os.mkfifo(fifo)
    return procfs, fifo


def _release(fifo: Path, content: bytes) -> None:
    """Be the writer the blocked reader waits for."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


def test_a_blocked_cmdline_read_does_not_hold_up_the_scrape(tmp_path: Path) -> None:
    procfs, fifo = _blocking_procfs(tmp_path)
    source = LinuxProcessSource(procfs)
    exporter = Exporter(parse_config({"snapshot_max_age_seconds": 0}), procfs=procfs, enabled={"process"},
                        process_source=source, sources=[], platform_name="linux")
    try:
        for _ in range(3):  # every scrape in time; the blocked read is not waited for again
            started = time.monotonic()
            values = parse_exposition(exporter.render_metrics()[0].decode())
            assert time.monotonic() - started < source.identities.pass_budget_seconds + 1.5
            assert values['atlas_app_processes{app="nginx"}'] == 3  # everyone else is named
            assert not any('app="etl"' in key for key in values)
        assert source.identities.timeouts == 1
        assert "could not be named" in source.statuses()[0].reason
        _release(fifo, b"python3\0/srv/etl/etl.py\0")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the read finishes on its thread; the next pass uses it
            values = parse_exposition(exporter.render_metrics()[0].decode())
            if values.get('atlas_app_processes{app="etl"}') == 1:
                break
            time.sleep(0.1)
        assert values.get('atlas_app_processes{app="etl"}') == 1, sorted(values)
    finally:
        try:
            _release(fifo, b"")
        except OSError:
            pass


def test_a_watcher_gives_up_and_gets_the_answer_later(tmp_path: Path) -> None:
    """A watcher (crash, network) naming a pid whose read blocks: its deadline, then the answer on a later ask."""
    procfs, fifo = _blocking_procfs(tmp_path)
    source = LinuxProcessSource(procfs)
    source.identities.watcher_deadline_seconds = 0.5
    pid = source.start_token(900)
    assert pid is not None
    started = time.monotonic()
    assert source.identity(pid) is None
    assert time.monotonic() - started < source.identities.watcher_deadline_seconds + 0.5
    assert source.identity(pid) is None  # still blocked: not waited for twice
    assert time.monotonic() - started < source.identities.watcher_deadline_seconds + 0.5
    _release(fifo, b"python3\0/srv/etl/etl.py\0")
    deadline = time.monotonic() + 10
    ident = None
    while ident is None and time.monotonic() < deadline:
        time.sleep(0.05)
        ident = source.identity(pid)
    assert ident is not None and ident.cmdline == ("python3", "/srv/etl/etl.py")


def test_many_blocked_processes_share_one_budget(tmp_path: Path) -> None:
    procfs = fake_proc(tmp_path / "proc")
    fifos = []
    for pid in range(2000, 2006):
        write_proc(procfs, pid, comm=f"stuck{pid}", start=3000 + pid)
        (procfs / str(pid) / "cmdline").unlink()
        os.mkfifo(procfs / str(pid) / "cmdline")
        fifos.append(procfs / str(pid) / "cmdline")
    source = LinuxProcessSource(procfs)
    exporter = Exporter(parse_config({"snapshot_max_age_seconds": 0}), procfs=procfs, enabled={"process"},
                        process_source=source, sources=[], platform_name="linux")
    try:
        started = time.monotonic()
        values = parse_exposition(exporter.render_metrics()[0].decode())
        spent = time.monotonic() - started
        # six blocked reads at 1 s each would be 6 s: one budget of 2 s from the first one
        assert spent < source.identities.pass_budget_seconds + 1.5, spent
        assert values['atlas_app_processes{app="nginx"}'] == 3
        assert not any("stuck" in key for key in values)
    finally:
        for fifo in fifos:
            _release(fifo, b"")


@pytest.mark.slow
def test_once_over_a_procfs_with_a_blocking_file_finishes(tmp_path: Path) -> None:
    procfs, fifo = _blocking_procfs(tmp_path)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "atlas_exporter", "--once", "--path.procfs", str(procfs),
                             "--no-collector.network", "--no-collector.crash", "--no-collector.hang"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert 'atlas_app_processes{app="nginx"} 3.0' in result.stdout
    assert "Traceback" not in result.stderr


class _SlowOwners:
    """Owner lookups that take long (a cgroup tree walk, a blocked /proc read) for the test's port."""

    def __init__(self, seconds: float, port: int) -> None:
        self.seconds = seconds
        self.port = port
        self.calls = 0

    def prepare(self, ns, sockets, **options) -> None:
        pass

    def owner(self, ns, info) -> str | None:
        if self.port not in (info.sport, info.dport):
            return None  # other sockets on this shared machine: quick
        self.calls += 1
        time.sleep(self.seconds)
        return "slow-app"

    def settled(self, ns, info) -> bool:
        return True


@pytest.mark.slow
def test_network_scrapes_do_not_wait_for_owner_lookups() -> None:
    """Real TCP sockets whose owners take 0.3 s each to find: scrapes read the last totals at once."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    source = LinuxNetworkSource(lambda pid: None, sample_interval=0.2)
    slow = _SlowOwners(0.3, server.getsockname()[1])
    source._owners = slow  # type: ignore[assignment]
    source.accounts._resolver = slow
    clients = []
    source.start()
    stop = threading.Event()
    waits: list[float] = []

    def scrape() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            source.app_totals()
            source.unattributed()
            list(source.collect(None))  # type: ignore[arg-type]
            source.statuses()
            source.retire(["gone-app"])
            waits.append(time.monotonic() - t0)
            time.sleep(0.01)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(8):  # new sockets: each needs an owner lookup
            client = socket.create_connection(server.getsockname())
            peer, _ = server.accept()
            client.sendall(b"x" * 1000)
            peer.recv(1000)
            clients += [client, peer]
        deadline = time.monotonic() + 60
        while source.app_totals().get("slow-app", (0, 0))[1] < 8 * 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.app_totals().get("slow-app", (0, 0))[1] >= 8 * 1000
        assert slow.calls >= 8  # the sampler spent seconds in owner lookups meanwhile
    finally:
        stop.set()
        scraper.join()
        source.stop()
        for sock in (server, *clients):
            sock.close()
    # before, a scrape waited for the whole dump's lookups (17 sockets x 0.3 s: about 5 s); the
    # bound leaves room for a loaded machine's scheduling
    assert len(waits) > 50 and max(waits) < 1.0, (len(waits), max(waits))
