"""Real loopback TCP transfers between two processes, measured by the Linux network source."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sock_diag is Linux only"),
    pytest.mark.slow,
]

from atlas_exporter.collectors.network.owners_linux import find_cgroup2_root  # noqa: E402
from atlas_exporter.collectors.network.source_linux import LinuxNetworkSource  # noqa: E402

PEER = Path(__file__).parent / "fixtures" / "network" / "peer.py"
TIMEOUT = 30.0
SENDER, RECEIVER = f"ans-{os.getpid()}", f"anr-{os.getpid()}"  # unique: test runs may overlap


def comm_of(pid: int) -> str | None:
    """The stand-in for the resolver: an app is named by its comm."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def poll(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Peers:
    """Spawns peer processes and kills every one of them at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, *args: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, str(PEER), *map(str, args)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def peers() -> Iterator[Peers]:
    group = Peers()
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def make_source() -> Iterator[Callable[..., LinuxNetworkSource]]:
    started: list[LinuxNetworkSource] = []

    def make(interval: float) -> LinuxNetworkSource:
        source = LinuxNetworkSource(comm_of, sample_interval=interval, cgroup_root=find_cgroup2_root())
        source.start()
        started.append(source)
        return source

    yield make
    for source in started:
        source.stop()


def line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    text = proc.stdout.readline().strip()
    assert text, f"peer {proc.args} ended early (exit {proc.poll()})"
    return text


def tell(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def totals(source: LinuxNetworkSource, app: str) -> tuple[float, float]:
    return source.app_totals().get(app, (0.0, 0.0))


def within(value: float, expected: int, tolerance: float = 0.01) -> bool:
    return abs(value - expected) <= tolerance * expected


def start_pair(peers: Peers, family: int, first: int, second: int) -> tuple[subprocess.Popen[str], ...]:
    receiver = peers.spawn("recv", RECEIVER, int(family))
    port = int(line(receiver))
    sender = peers.spawn("send", SENDER, int(family), port, first, second)
    assert line(sender) == "sent"
    return receiver, sender


def test_transfer_counted_on_both_ends_and_attributed(peers: Peers, make_source) -> None:
    source = make_source(0.2)
    first, second = 2_000_000, 8_000_000
    receiver, sender = start_pair(peers, socket.AF_INET, first, second)
    poll(lambda: totals(source, SENDER)[1] >= first and totals(source, RECEIVER)[0] >= first,
         "the sampler to see the connection")
    tell(sender)
    assert line(sender) == "done"
    assert int(line(receiver)) == first + second
    poll(lambda: within(totals(source, SENDER)[1], first + second)
         and within(totals(source, RECEIVER)[0], first + second), "the final byte counts")
    sent_tx = totals(source, SENDER)[1]
    received_rx = totals(source, RECEIVER)[0]
    assert within(sent_tx, first + second), sent_tx
    assert within(received_rx, first + second), received_rx
    # the reverse direction carried no payload: only SYN/FIN sequence numbers, far below 1 kB
    assert totals(source, SENDER)[0] < 1000
    assert totals(source, RECEIVER)[1] < 1000


def test_bytes_after_last_sample_of_a_closed_socket_are_counted(peers: Peers, make_source) -> None:
    """Send, pause past the sampling interval, send more and close before the next sample: all of it counts."""
    source = make_source(3600.0)  # the periodic sampler never runs during this test; samples are explicit
    first, second = 1_000_000, 6_000_000
    receiver, sender = start_pair(peers, socket.AF_INET6, first, second)

    def sampled() -> bool:
        source.sample()
        return totals(source, SENDER)[1] >= first and totals(source, RECEIVER)[0] >= first

    poll(sampled, "a sample that sees the connection")
    dumps = source.dumps
    tell(sender)
    assert line(sender) == "done"
    assert int(line(receiver)) == first + second
    poll(lambda: within(totals(source, SENDER)[1], first + second)
         and within(totals(source, RECEIVER)[0], first + second), "destroy notifications")
    assert source.dumps == dumps, "a dump ran; the final bytes must come from destroy notifications alone"
    assert within(totals(source, SENDER)[1], first + second)
    assert within(totals(source, RECEIVER)[0], first + second)


def test_connection_never_sampled_goes_to_listener_app_and_unattributed(peers: Peers, make_source) -> None:
    """A connection opened and closed between samples: the server side is found through its listener's
    port, the client side is unattributed, and nothing is lost."""
    source = make_source(3600.0)
    receiver = peers.spawn("recv", RECEIVER, int(socket.AF_INET))
    port = int(line(receiver))
    source.sample()  # sees the listener
    before_rx, before_tx = source.unattributed()
    size = 3_000_000
    sender = peers.spawn("send", SENDER, int(socket.AF_INET), port, size, 0)
    assert line(sender) == "sent"
    tell(sender)
    assert line(sender) == "done"
    assert int(line(receiver)) == size
    poll(lambda: within(totals(source, RECEIVER)[0], size) and source.unattributed()[1] - before_tx >= size,
         "destroy notifications of both ends")
    assert SENDER not in source.app_totals()
    assert source.unattributed()[1] - before_tx >= size
    assert source.unattributed()[0] >= before_rx


def test_statuses_and_metric_families(make_source) -> None:
    source = make_source(3600.0)
    statuses = {s.name: s for s in source.statuses()}
    assert statuses["network.sock_diag"].active
    assert statuses["network.sock_diag"].privilege == ("root" if os.geteuid() == 0 else "user")
    assert statuses["network.destroy_events"].active
    names = {m.name for m in source.collect(None)}  # type: ignore[arg-type]
    assert {"atlas_app_network_receive_bytes", "atlas_app_network_transmit_bytes",
            "atlas_network_unattributed_receive_bytes", "atlas_network_unattributed_transmit_bytes"} <= names


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_other_network_namespace_is_seen_when_asked(peers: Peers) -> None:
    """A transfer inside a separate network namespace is attributed when all_namespaces is on."""
    script = (
        f"import ctypes,fcntl,socket,struct,sys;ctypes.CDLL(None).prctl(15,b'ann-{os.getpid()}',0,0,0);"
        "fcntl.ioctl(socket.socket(),0x8914,struct.pack('16sH14x',b'lo',1));"  # SIOCSIFFLAGS lo IFF_UP
        "l=socket.socket();l.bind(('127.0.0.1',0));l.listen();"
        "c=socket.create_connection(l.getsockname());s,_=l.accept();"
        "c.sendall(b'x'*500000);n=0\n"
        "while n<500000: n+=len(s.recv(65536))\n"
        "print('ready',flush=True);sys.stdin.readline()"
    )
    proc = subprocess.Popen(["unshare", "-n", sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    peers.procs.append(proc)
    assert line(proc) == "ready"
    comm = comm_of(proc.pid)
    assert comm == f"ann-{os.getpid()}"
    source = LinuxNetworkSource(comm_of, sample_interval=3600.0, all_namespaces=True)
    source.start()
    try:
        poll(lambda: (source.sample(), totals(source, comm)[1] >= 500000)[1], "the other namespace's socket")
        assert any(s.name == "network.namespaces" and s.active for s in source.statuses())
        ns = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
        assert ns in source._namespaces
        counted = totals(source, comm)
        proc.kill()
        proc.wait(timeout=10)

        def forgotten() -> bool:
            source._namespaces_scanned = float("-inf")  # rescan namespaces now
            source.sample()
            return ns not in source._namespaces

        poll(forgotten, "the vanished namespace to be closed")
        assert totals(source, comm) >= counted  # its bytes stay counted
    finally:
        source.stop()


UNPRIVILEGED = r"""
import json, os, select, sys, time
from atlas_exporter.collectors.network.sockdiag_linux import DestroySubscription, SockDiagSocket
port = int(sys.argv[1])
diag, destroy = SockDiagSocket(), DestroySubscription()
mine = [s for s in diag.dump_tcp() if port in (s.sport, s.dport) and s.state == 1]
print(json.dumps({"uid": os.geteuid(), "dump": [[s.uid, s.inode, s.bytes_acked, s.bytes_received] for s in mine]}),
      flush=True)
sys.stdin.readline()
final, deadline = [], time.monotonic() + 20
while len(final) < 2 and time.monotonic() < deadline:
    select.select([destroy], [], [], 0.5)
    final += [[s.inode, s.bytes_acked, s.bytes_received] for s in destroy.read()[0] if port in (s.sport, s.dport)]
print(json.dumps(final), flush=True)
"""


def test_dump_and_destroy_events_work_unprivileged(nobody_python: tuple[list[str], dict[str, str]]) -> None:
    """As nobody, the dump shows root's sockets with their counters and their destroy messages arrive."""
    import json

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.sendall(b"z" * 250_000)
    got = 0
    while got < 250_000:
        got += len(server.recv(65536))
    port = listener.getsockname()[1]
    prefix, env = nobody_python
    proc = subprocess.Popen([*prefix, "-c", UNPRIVILEGED, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd="/", env=env)
    try:
        first = json.loads(line(proc))
        assert first["uid"] == 65534
        acked = sorted(d[2] for d in first["dump"])
        assert len(first["dump"]) == 2 and all(d[0] == 0 and d[1] > 0 for d in first["dump"])  # root's, with inodes
        assert acked[-1] >= 250_000
        for sock in (client, server, listener):
            sock.close()
        tell(proc)
        final = json.loads(line(proc))
        assert len(final) >= 2 and all(f[0] == 0 for f in final)  # the listener may be among them
        assert max(f[1] for f in final) >= 250_000
    finally:
        for sock in (client, server, listener):
            sock.close()
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_failed_dump_is_reported_and_recovered(make_source) -> None:
    source = make_source(3600.0)

    class Broken:
        malformed = 0

        def dump_tcp(self) -> list:
            raise OSError(105, "No buffer space available")

        def close(self) -> None:
            pass

    (space,) = list(source._namespaces.values())
    space.diag = Broken()  # type: ignore[assignment]
    space.last_key = None
    source.sample()
    status = next(s for s in source.statuses() if s.name == "network.sock_diag")
    assert not status.active and "dump failed" in status.reason
    assert source.errors == 1
    # the totals measured so far are still exported, and a fresh socket replaced the broken one
    assert "atlas_network_unattributed_receive_bytes" in {m.name for m in source.collect(None)}  # type: ignore[arg-type]
    assert not isinstance(space.diag, Broken)
    source.sample()
    assert next(s for s in source.statuses() if s.name == "network.sock_diag").active
