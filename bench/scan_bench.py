"""The process table scan alone: this checkout against another revision, and with PSS.

    python bench/scan_bench.py [--procs 1000] [--rev GIT_REVISION] [--rounds 5] [--scans 10]

Spawns PROCS idle processes (symlinks to `sleep` under 50 names), then times, in rounds,
`LinuxProcessSource().scan()` of this checkout (default collectors), of this checkout with
`read_pss` (`--collector.smaps`), and, with `--rev`, of the `atlas_exporter` package as it was
at that revision (`git archive`, so any layout of `collectors/process/` works). Each variant
scans in its own worker process; each round times every variant, in alternating order. Prints CPU milliseconds
per scan and the ratios of each round.
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

REPO = Path(__file__).resolve().parent.parent


def worker(root: str, read_pss: bool) -> None:
    """Scan with the package under `root`: one line in ("N") -> N scans -> CPU ms per scan out."""
    sys.path.insert(0, root)
    from atlas_exporter.collectors.process.source_linux import LinuxProcessSource

    source = LinuxProcessSource(read_pss=read_pss)
    source.scan()  # the first scan reads every limits and status file
    print("ready", flush=True)
    for line in sys.stdin:
        scans = int(line)
        start = time.process_time()
        for _ in range(scans):
            source.scan()
        print((time.process_time() - start) / scans * 1e3, flush=True)


class Worker:
    def __init__(self, root: Path, read_pss: bool) -> None:
        args = [sys.executable, __file__, "--worker", str(root)] + (["--pss"] if read_pss else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def cpu_ms_per_scan(self, scans: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{scans}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def export_revision(rev: str, folder: str) -> Path:
    """The `atlas_exporter` package at `rev`, unpacked under `folder`."""
    root = Path(folder, "rev")
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "atlas_exporter"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--rev", help="a git revision to compare with (its atlas_exporter package)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scans", type=int, default=10)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--pss", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.pss)
        return
    work = tempfile.mkdtemp(prefix="scan-bench-")
    sleep = shutil.which("sleep") or "/bin/sleep"
    load = []
    workers: dict[str, Worker] = {}
    try:
        for i in range(args.procs):
            name = os.path.join(work, f"scanapp{i % 50}")
            if not os.path.exists(name):
                os.symlink(sleep, name)
            load.append(subprocess.Popen([name, "3600"]))
        time.sleep(2)
        if args.rev:
            workers["rev"] = Worker(export_revision(args.rev, work), False)
        workers["this"] = Worker(REPO, False)
        workers["this+smaps"] = Worker(REPO, True)
        for i in range(args.rounds):
            order = list(workers) if i % 2 == 0 else list(reversed(workers))  # no variant always goes first
            timed = {name: workers[name].cpu_ms_per_scan(args.scans) for name in order}
            ms = {name: timed[name] for name in workers}
            line = "  ".join(f"{name} {value:.1f} ms" for name, value in ms.items())
            ratios = f"smaps/this {ms['this+smaps'] / ms['this']:.2f}"
            if "rev" in ms:
                ratios = f"this/rev {ms['this'] / ms['rev']:.2f}  " + ratios
            print(f"processes {len([d for d in os.listdir('/proc') if d.isdigit()])}  {line}  {ratios}")
    finally:
        for w in workers.values():
            w.close()
        for p in load:
            p.kill()
        for p in load:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
