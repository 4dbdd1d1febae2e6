"""The Linux network source's loops, namespaces and retirement, with fake netlink subscriptions."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from atlas_exporter.collectors.network.sockdiag_linux import TcpSocketInfo
from atlas_exporter.collectors.network.source_linux import LinuxNetworkSource
from atlas_exporter.exporter.collector import AtlasCollector
from atlas_exporter.model import Snapshot

NS = 4026531840


def sock(cookie: int, acked: int, received: int, inode: int = 0) -> TcpSocketInfo:
    return TcpSocketInfo(socket.AF_INET, 1, 40000, 80, b"\x7f\0\0\1", 0, inode, cookie, acked, received, None)


class FakeDestroy:
    """A destroy subscription on a pipe: each byte written wakes the listener, and `read` plays the next step."""

    malformed = 0

    def __init__(self, steps: list[Callable[[], tuple[list[TcpSocketInfo], int]]]) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)  # like a netlink read after poll: never waits
        self.steps = steps
        self.closed = False

    def fileno(self) -> int:
        return self._read_fd

    def wake(self) -> None:
        os.write(self._write_fd, b"x")

    def read(self) -> tuple[list[TcpSocketInfo], int]:
        try:
            os.read(self._read_fd, 1)
        except BlockingIOError:
            pass
        return self.steps.pop(0)()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)


class FakeDiag:
    malformed = 0

    def close(self) -> None:
        pass


class FakeSpace:
    """Stands in for `NetNamespace`: what the listener and the namespace scan touch."""

    def __init__(self, ns: int, destroy: FakeDestroy | None) -> None:
        self.ns = ns
        self.diag = FakeDiag()
        self.destroy = destroy
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self.destroy is not None:
            self.destroy.close()


def fails(error: BaseException) -> Callable[[], tuple[list[TcpSocketInfo], int]]:
    def step() -> tuple[list[TcpSocketInfo], int]:
        raise error
    return step


def gives(*sockets: TcpSocketInfo, overflows: int = 0) -> Callable[[], tuple[list[TcpSocketInfo], int]]:
    return lambda: (list(sockets), overflows)


def poll(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Callable[[FakeDestroy], LinuxNetworkSource]]:
    """A source whose only namespace has the given fake destroy subscription, with its listener loop running."""
    made: list[tuple[LinuxNetworkSource, FakeSpace]] = []

    def make(destroy: FakeDestroy) -> LinuxNetworkSource:
        source = LinuxNetworkSource(lambda pid: None, procfs=tmp_path, euid=1000)
        space = FakeSpace(NS, destroy)
        source._namespaces[NS] = space  # type: ignore[assignment]
        source.listener.start()
        made.append((source, space))
        return source

    yield make
    for source, space in made:
        source.listener.stop()
        space.close()


def destroy_status(source: LinuxNetworkSource):
    return next(s for s in source.statuses() if s.name == "network.destroy_events")


def test_listener_counts_an_error_and_keeps_reading_destroy_events(listening) -> None:
    destroy = FakeDestroy([fails(RuntimeError("a bug in a parser")), gives(sock(1, 500, 7))])
    source = listening(destroy)
    destroy.wake()
    poll(lambda: source.errors == 1, "the error to be counted")
    destroy.wake()
    poll(lambda: source.unattributed() == (7.0, 500.0), "the next destroy message to be applied")
    assert source.listener.running and not source.listener.dead
    status = destroy_status(source)
    assert status.active and status.reason == ""


class ThreadKilled(BaseException):
    """Not an `Exception`: the listener's boundary lets it end the thread."""


class NoSnapshots:
    def get(self) -> Snapshot:
        return Snapshot(wall_time=time.time(), monotonic=time.monotonic())


def test_listener_that_ended_reports_destroy_events_inactive_and_success_0(listening) -> None:
    destroy = FakeDestroy([fails(ThreadKilled())])
    source = listening(destroy)
    source._opened = True  # as after start(): the totals are exported
    collector = AtlasCollector(NoSnapshots(), [source])  # type: ignore[arg-type]
    statuses = {s.name: s for s in collector.statuses()}
    assert statuses["network.destroy_events"].active
    destroy.wake()
    poll(lambda: source.listener.dead, "the listener loop to end")
    assert source.listener in source.loops
    statuses = {s.name: s for s in collector.statuses()}
    assert not statuses["network.destroy_events"].active
    assert "atlas-network-destroy has ended" in statuses["network.destroy_events"].reason
    assert statuses["network.destroy_events"].privilege == "none"
    assert statuses["network.sock_diag"].active, "the sampler still counts"
    assert not source.destroy_active()
    families = list(collector.collect())
    success = next(m for m in families if m.name == "atlas_scrape_collector_success")
    assert [(s.labels["collector"], s.value) for s in success.samples] == [("network", 0)]
    names = {m.name for m in families}
    assert "atlas_network_destroy_events_lost" not in names
    assert {"atlas_app_network_receive_bytes", "atlas_network_unattributed_transmit_bytes"} <= names, \
        "the byte counters the sampler keeps fresh stay exported"


def namespace_scan(tmp_path: Path, destroy: FakeDestroy) -> tuple[LinuxNetworkSource, FakeSpace]:
    """A root source with one other namespace that has vanished from the (empty) fake /proc."""
    source = LinuxNetworkSource(lambda pid: None, procfs=tmp_path, all_namespaces=True, euid=0)
    space = FakeSpace(NS, destroy)
    source._namespaces[NS] = space  # type: ignore[assignment]
    source.accounts.apply_dump(NS, [sock(1, 10, 0, inode=5)])
    assert source.accounts.live_count() == 1
    return source, space


def test_vanished_namespace_is_closed_and_forgotten_when_its_last_read_fails(tmp_path: Path) -> None:
    source, space = namespace_scan(tmp_path, FakeDestroy([fails(OSError(105, "No buffer space available"))]))
    source._scan_namespaces()
    assert space.closed and NS not in source._namespaces
    assert source.accounts.live_count() == 0
    assert source.errors == 1


def test_vanished_namespace_is_closed_even_when_applying_its_last_messages_raises(tmp_path: Path) -> None:
    source, space = namespace_scan(tmp_path, FakeDestroy([fails(RuntimeError("unexpected"))]))
    with pytest.raises(RuntimeError):
        source._scan_namespaces()  # the sampler's boundary counts and logs it
    assert space.closed and NS not in source._namespaces
    assert source.accounts.live_count() == 0


def test_vanished_namespace_gets_its_last_bytes_and_lost_events(tmp_path: Path) -> None:
    source, space = namespace_scan(tmp_path, FakeDestroy([gives(sock(1, 30, 4), overflows=2)]))
    source._scan_namespaces()
    assert space.closed
    assert source.unattributed() == (4.0, 30.0)
    assert source.lost_events == 2


def apply_sample(source: LinuxNetworkSource, sockets: list) -> None:
    """What the sampler does with one dump: apply it under the lock, then publish it to scrapes."""
    with source._lock:
        source._apply_retired()
        source.accounts.apply_dump(NS, sockets)
        source._publish()


def test_retire_drops_an_apps_totals_and_a_returning_app_starts_from_zero(tmp_path: Path) -> None:
    for pid, inode in ((10, 1001), (20, 1002)):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        os.symlink(f"socket:[{inode}]", tmp_path / str(pid) / "fd" / "3")
    names = {10: "web", 20: "db"}
    source = LinuxNetworkSource(names.get, procfs=tmp_path, euid=0)
    apply_sample(source, [sock(1, 100, 10, inode=1001), sock(2, 0, 5, inode=1002)])
    assert source.app_totals() == {"web": (10.0, 100.0), "db": (5.0, 0.0)}
    source.retire(["web", "never-seen"])
    assert source.app_totals() == {"db": (5.0, 0.0)}
    assert source.unattributed() == (0.0, 0.0)  # retired bytes do not move elsewhere
    apply_sample(source, [sock(1, 150, 10, inode=1001), sock(2, 0, 5, inode=1002)])
    assert source.app_totals() == {"web": (0.0, 50.0), "db": (5.0, 0.0)}
