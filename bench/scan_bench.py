"""The process table scan alone, in one process: this version against another, and with PSS.

    python bench/scan_bench.py [--procs 1000] [--rev GIT_REVISION] [--rounds 5] [--scans 10]

Spawns PROCS idle processes (symlinks to `sleep` under 50 names), then times, in rounds,
`LinuxProcessSource().scan()` of this checkout (default collectors), of this checkout with
`read_pss` (`--collector.smaps`), and, with `--rev`, of `atlas_exporter/collectors/process/source_linux.py`
as it was at that revision. Prints CPU milliseconds per scan and the ratios of each round.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atlas_exporter.collectors.process import source_linux as process_linux  # noqa: E402


def load_revision(rev: str, folder: str) -> object:
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:atlas_exporter/collectors/process/source_linux.py"],
                          check=True, capture_output=True, text=True).stdout
    path = os.path.join(folder, "process_linux_at_rev.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("process_linux_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def cpu_ms_per_scan(source: object, scans: int) -> float:
    start = time.process_time()
    for _ in range(scans):
        source.scan()  # type: ignore[attr-defined]
    return (time.process_time() - start) / scans * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--rev", help="a git revision to compare with (its process_linux.py)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scans", type=int, default=10)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="scan-bench-")
    sleep = shutil.which("sleep") or "/bin/sleep"
    load = []
    try:
        for i in range(args.procs):
            name = os.path.join(work, f"scanapp{i % 50}")
            if not os.path.exists(name):
                os.symlink(sleep, name)
            load.append(subprocess.Popen([name, "3600"]))
        time.sleep(2)
        sources = {"this": process_linux.LinuxProcessSource(),
                   "this+smaps": process_linux.LinuxProcessSource(read_pss=True)}
        if args.rev:
            sources = {"rev": load_revision(args.rev, work).LinuxProcessSource(), **sources}  # type: ignore[attr-defined]
        for source in sources.values():
            source.scan()  # first scans read every limits and status file
        for _ in range(args.rounds):
            ms = {name: cpu_ms_per_scan(source, args.scans) for name, source in sources.items()}
            line = "  ".join(f"{name} {value:.1f} ms" for name, value in ms.items())
            ratios = f"smaps/this {ms['this+smaps'] / ms['this']:.2f}"
            if "rev" in ms:
                ratios = f"this/rev {ms['this'] / ms['rev']:.2f}  " + ratios
            print(f"processes {len([d for d in os.listdir('/proc') if d.isdigit()])}  {line}  {ratios}")
    finally:
        for p in load:
            p.kill()
        for p in load:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
