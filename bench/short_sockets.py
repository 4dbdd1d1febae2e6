"""How much of short curl downloads the network collector cannot attribute to an app.

    python3 bench/short_sockets.py [--small 20] [--large 3] [--scope] [--rate 100mbit]   # as root

Starts the exporter's pipeline (process + network collectors) in this process, a local HTTP
server (`python3 -m http.server`) serving a 1 MiB and a 100 MiB file, and downloads each file with
curl, one download after another. Then it prints, per file size, the bytes curl received, the
bytes the exporter credited to curl's app, and the share left in
`atlas_network_unattributed_receive_bytes_total`. With `--scope`, every curl runs in its own
cgroup v2 scope (`atlas-bench-curl-<n>.scope`, as `systemd-run --scope curl ...` would), the case
where an app is a cgroup. As root it runs in a network namespace of its own (`unshare --net`),
so no other traffic of the host is counted. Run it from a checkout: it measures the
`atlas_exporter` package of that checkout. `--rate` shapes that namespace's loopback with `tc`
(token bucket), as a download from another machine on the network would be paced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from atlas_exporter.config import parse_config  # noqa: E402
from atlas_exporter.exporter.runtime import Exporter  # noqa: E402

MIB = 1024 * 1024


def values(exporter: Exporter) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(exporter.render_metrics()[0].decode()):
        for sample in family.samples:
            out[(sample.name, sample.labels.get("app", ""))] = sample.value
    return out


def cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return Path(left.split()[4])
    return None


def run(size_mib: int, count: int, port: int, scope: bool, curl_app: str, exporter: Exporter) -> dict[str, float]:
    root = cgroup2_root() if scope else None
    before = values(exporter)
    for n in range(count):
        argv = ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/f{size_mib}"]
        folder = None
        if root is not None:
            folder = root / f"atlas-bench-curl-{os.getpid()}-{size_mib}-{n}.scope"
            folder.mkdir()
            argv = ["sh", "-c", f'echo $$ > {folder}/cgroup.procs && exec "$@"', "sh", *argv]
        subprocess.run(argv, check=True)
        if folder is not None:
            for _ in range(100):
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
    time.sleep(3.0)  # destroy events and the last samples
    after = values(exporter)

    def delta(name: str, app: str = "") -> float:
        return after.get((name, app), 0.0) - before.get((name, app), 0.0)

    received = size_mib * MIB * count
    curl_rx = sum(after.get(("atlas_app_network_receive_bytes_total", app), 0.0)
                  - before.get(("atlas_app_network_receive_bytes_total", app), 0.0)
                  for (name, app) in after if name == "atlas_app_network_receive_bytes_total"
                  and (app == curl_app or app.startswith("atlas-bench-curl")))
    unattributed = delta("atlas_network_unattributed_receive_bytes_total")
    return {"received": received, "curl_app": curl_rx, "unattributed": unattributed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=20, help="1 MiB downloads")
    parser.add_argument("--large", type=int, default=3, help="100 MiB downloads")
    parser.add_argument("--scope", action="store_true", help="run each curl in its own cgroup scope")
    parser.add_argument("--rate", default="", help="shape loopback to this rate (tc syntax, e.g. 100mbit)")
    args = parser.parse_args()
    if not shutil.which("curl"):
        sys.exit("curl is not installed")
    if os.geteuid() == 0 and os.environ.get("ATLAS_BENCH_NETNS") != "1" and shutil.which("unshare"):
        # a network namespace of its own: no other TCP traffic of the host in the totals
        os.environ["ATLAS_BENCH_NETNS"] = "1"
        script = "ip link set lo up && exec \"$@\""
        if args.rate:
            script = f"ip link set lo up && tc qdisc add dev lo root tbf rate {args.rate} burst 256kb limit 64mb && " \
                     "exec \"$@\""
        os.execvp("unshare", ["unshare", "--net", "sh", "-c", script, "sh", sys.executable, *sys.argv])
    folder = Path(tempfile.mkdtemp(prefix="atlas-short-"))
    for size in (1, 100):
        with open(folder / f"f{size}", "wb") as handle:
            handle.write(os.urandom(size * MIB))
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"], cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    exporter = Exporter(parse_config({}), enabled={"process", "network"})
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port NNNNN (http://...) ..."
        port = int(line.split(" port ")[1].split()[0])
        exporter.start()
        values(exporter)
        print(f"{'download':>10} {'count':>5} {'received MiB':>13} {'curl app MiB':>13} {'unattributed':>13}")
        for size, count in ((1, args.small), (100, args.large)):
            result = run(size, count, port, args.scope, "curl", exporter)
            share = result["unattributed"] / result["received"] if result["received"] else 0.0
            print(f"{size:>7} MiB {count:>5} {result['received'] / MIB:>13.1f} {result['curl_app'] / MIB:>13.1f} "
                  f"{share:>12.1%}")
    finally:
        exporter.stop()
        server.kill()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
