"""CPU cost of the Linux network source with about 1,000 loopback TCP sockets, against the C lower bound.

Usage (Linux, from the repository root; root sees every process's fds):

    python bench/network_bench.py [--pairs 500] [--rounds 30] [--procscan /tmp/procscan]

A child process holds PAIRS loopback connections (2 sockets each). The bench measures, on its own
thread's CPU clock (user + system):
- collect: what one scrape costs the network source (`app_totals()` for the snapshot plus
  `collect()`), which only reads the totals the sampler keeps;
- sampler, idle: one sampler tick when no TCP socket changed (three /proc/net files);
- sampler, active: one tick that dumps and applies every socket (traffic on every connection);
- first sample: the tick that sees every socket for the first time (fd walk to find the owners);
- the dump alone: one IPv4 + IPv6 sock_diag dump with its parse, without the bookkeeping.
It builds and runs bench/procscan.c (or --procscan) in the same run for the C lower
bound of one pass over every process, and prints every figure as a ratio to it.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atlas_exporter.collectors.network.owners_linux import find_cgroup2_root  # noqa: E402
from atlas_exporter.collectors.network.sockdiag_linux import SockDiagSocket  # noqa: E402
from atlas_exporter.collectors.network.source_linux import LinuxNetworkSource  # noqa: E402
from atlas_exporter.model import Snapshot  # noqa: E402

PROCSCAN_C = Path(__file__).resolve().parent / "procscan.c"

HOLDER = r"""
import socket, sys, time
pairs = int(sys.argv[1])
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(1024)
conns = []
for _ in range(pairs):
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    conns.append((client, server))
print("ready", flush=True)
for line in sys.stdin:
    for client, server in conns:   # one small message each way on every connection
        client.send(b"x" * 100); server.send(b"y" * 100)
    for client, server in conns:
        server.recv(4096); client.recv(4096)
    print("sent", flush=True)
"""


def cpu_us(call: Callable[[], object]) -> float:
    start = time.thread_time()
    call()
    return (time.thread_time() - start) * 1e6


def procscan_us(binary: Path) -> tuple[float, int]:
    if not binary.exists():
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(PROCSCAN_C)], check=True)
    out = subprocess.run([str(binary), "50"], capture_output=True, text=True, check=True).stdout
    us = float(re.search(r"us_per_pass=([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    procs = int(re.search(r"procs=(\d+)", out).group(1))  # type: ignore[union-attr]
    return us, procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500, help="loopback connections to hold (2 sockets each)")
    parser.add_argument("--rounds", type=int, default=30, help="measurements per figure (median reported)")
    parser.add_argument("--procscan", type=Path, default=Path("/tmp/procscan"))
    args = parser.parse_args()

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(args.pairs)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline().strip() != "ready":
            raise SystemExit("socket holder failed to start")

        def comm(pid: int) -> str | None:
            try:
                return Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                return None

        source = LinuxNetworkSource(comm, sample_interval=3600.0, cgroup_root=find_cgroup2_root())
        first = cpu_us(source.start)  # opens the sockets and takes the first sample (every owner looked up)
        sockets = source.accounts.live_count()
        snapshot = Snapshot(wall_time=time.time(), monotonic=time.monotonic())
        collect = [cpu_us(lambda: (source.app_totals(), list(source.collect(snapshot))))
                   for _ in range(args.rounds)]
        idle = []
        for _ in range(args.rounds):
            source.sample()  # settle: nothing moves between the next two calls unless others use TCP
            idle.append(cpu_us(source.sample))
        active = []
        for _ in range(args.rounds):
            holder.stdin.write("go\n")
            holder.stdin.flush()
            holder.stdout.readline()
            active.append(cpu_us(source.sample))
        dumps = source.dumps
        diag = SockDiagSocket()
        dump_only = [cpu_us(diag.dump_tcp) for _ in range(args.rounds)]
        diag.close()
        source.stop()
    finally:
        holder.kill()
        holder.wait()

    c_us, procs = procscan_us(args.procscan)
    med = statistics.median
    rows = [
        ("collect per scrape (app_totals + collect)", med(collect)),
        ("sampler tick, idle (no TCP change)", med(idle)),
        ("sampler tick, active (dump + apply every socket)", med(active)),
        ("  of which the sock_diag dump and parse alone", med(dump_only)),
        ("first sample (fd walk for every owner)", first),
    ]
    print(f"sockets tracked: {sockets}  processes: {procs}  dumps: {dumps}  rounds: {args.rounds}")
    print(f"C lower bound (procscan, one pass over {procs} processes): {c_us:.0f} us")
    for label, value in rows:
        print(f"{label:<52} {value:9.0f} us  {value / c_us:6.2f}x C")
    for interval in (15, 60):
        idle_share = med(idle) * interval / c_us
        active_share = med(active) * interval / c_us
        print(f"sampler CPU per {interval} s scrape interval at 1 tick/s: idle {idle_share:.2f}x C,"
              f" all sockets active {active_share:.2f}x C")
    print(f"python {sys.version.split()[0]}, kernel {os.uname().release}, cpus {os.cpu_count()}, "
          f"uid {os.geteuid()}, family {socket.AF_INET}")


if __name__ == "__main__":
    main()
