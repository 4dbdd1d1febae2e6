"""Soak test: many scrapes of the real exporter while short-lived processes come and go.

Starts `python -m atlas_exporter` on a free loopback port, keeps a churn of short-lived child
processes running (spawned without a shell and reaped continuously), scrapes /metrics N times from a
few threads, and reports the exporter's RSS, open fds and threads at the start, middle and end,
plus scrape latency and errors:

    python bench/soak.py --scrapes 10000
    phase     scrapes   rss_kib   fds  threads   spawned  seconds
    start         100     35704    15       10      2059     15.9
    ...

Exit status 1 when a scrape failed or the idle fd count after the run is above the one before.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"listening on https?://\[?([0-9a-f.:]+)\]?:(\d+)/")


def proc_stats(pid: int) -> dict[str, int]:
    """RSS (KiB), open fds and threads of a live process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    return {"rss_kib": fields["VmRSS"], "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": fields["Threads"]}


class Churn:
    """Spawns `rate` short-lived children a second (half exit at once, half sleep `lifetime`) and reaps them."""

    def __init__(self, rate: float, lifetime: float) -> None:
        self.rate = rate
        self.lifetime = lifetime
        self.spawned = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        children: list[subprocess.Popen[bytes]] = []
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                children = [child for child in children if child.poll() is None]
                due = int((time.monotonic() - started) * self.rate)
                while self.spawned < due:
                    argv = ["/bin/true"] if self.spawned % 2 else ["/bin/sleep", str(self.lifetime)]
                    children.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL))
                    self.spawned += 1
                self._stop.wait(0.01)
        finally:
            for child in children:
                child.kill()
                child.wait()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)


def scrape(port: int, conn: http.client.HTTPConnection | None) -> tuple[int, float, http.client.HTTPConnection | None]:
    """One GET /metrics: (status or 0 on a connection error, seconds, the connection to reuse or None)."""
    started = time.perf_counter()
    reuse = conn is not None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0, time.perf_counter() - started, None
    if not reuse:
        conn.close()
    return status, time.perf_counter() - started, conn if reuse else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=4, help="concurrent scrapers")
    parser.add_argument("--rate", type=float, default=50.0, help="short-lived children spawned per second")
    parser.add_argument("--lifetime", type=float, default=0.5, help="seconds the sleeping half of them live")
    parser.add_argument("--keep-alive", action="store_true", help="reuse one connection per scraper")
    parser.add_argument("--snapshot-max-age", type=float, default=0.0,
                        help="snapshot_max_age_seconds for the exporter (0: every scrape takes a fresh snapshot)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("exporter_args", nargs="*", help="extra arguments for the exporter (after --)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="atlas-soak-"))
    config = work / "atlas.yml"
    config.write_text(f"snapshot_max_age_seconds: {args.snapshot_max_age}\n")
    log_path = work / "exporter.log"
    with open(log_path, "wb") as log:
        exporter = subprocess.Popen([sys.executable, "-m", "atlas_exporter", "--web.listen-address", "127.0.0.1:0",
                                     "--config.file", str(config), *args.exporter_args],
                                    cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    churn = Churn(args.rate, args.lifetime)
    try:
        deadline = time.monotonic() + 60
        while not (found := LISTENING.search(log_path.read_bytes())):
            if exporter.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text()[-2000:], file=sys.stderr)
                return 2
            time.sleep(0.1)
        port = int(found.group(2))
        scrape(port, None)
        time.sleep(1.0)
        idle_before = {"phase": "idle", "scrapes": 1, **proc_stats(exporter.pid), "spawned": 0, "seconds": 0.0}
        churn.start()
        rows: list[dict[str, object]] = [idle_before]
        latencies: list[float] = []
        errors = 0
        done = 0
        claimed = 0
        lock = threading.Lock()
        marks = {100: "start", args.scrapes // 2: "middle", args.scrapes: "end"}
        started = time.monotonic()

        def worker() -> None:
            nonlocal done, errors, claimed
            conn = None
            while True:
                with lock:
                    if claimed >= args.scrapes:
                        break
                    claimed += 1
                status, seconds, conn = scrape(port, conn)
                if args.keep_alive and conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    done += 1
                    latencies.append(seconds)
                    if status != 200:
                        errors += 1
                    if done in marks:
                        rows.append({"phase": marks[done], "scrapes": done, **proc_stats(exporter.pid),
                                     "spawned": churn.spawned, "seconds": round(time.monotonic() - started, 1)})
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=worker) for _ in range(args.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        churn.stop()
        time.sleep(1.0)  # let the last connections close
        rows.append({"phase": "idle", "scrapes": done, **proc_stats(exporter.pid), "spawned": churn.spawned,
                     "seconds": round(time.monotonic() - started, 1)})
        latencies.sort()
        result = {
            "scrapes": done, "errors": errors, "workers": args.workers, "keep_alive": args.keep_alive,
            "children_spawned": churn.spawned, "seconds": round(time.monotonic() - started, 1),
            "latency_ms": {q: round(latencies[min(len(latencies) - 1, int(len(latencies) * f))] * 1000, 2)
                           for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
            "phases": rows,
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{'phase':<8}{'scrapes':>9}{'rss_kib':>10}{'fds':>6}{'threads':>9}{'spawned':>10}{'seconds':>9}")
            for row in rows:
                print(f"{row['phase']:<8}{row['scrapes']:>9}{row['rss_kib']:>10}{row['fds']:>6}{row['threads']:>9}"
                      f"{row['spawned']:>10}{row['seconds']:>9}")
            print(f"errors {errors}, children spawned {churn.spawned}, latency ms {result['latency_ms']}, "
                  f"{result['seconds']} s")
        grew = int(rows[-1]["fds"]) > int(rows[0]["fds"])  # type: ignore[call-overload]
        return 1 if errors or grew else 0
    finally:
        churn.stop()
        if exporter.poll() is None:
            exporter.terminate()
            try:
                exporter.wait(15)
            except subprocess.TimeoutExpired:
                exporter.kill()
                exporter.wait()


if __name__ == "__main__":
    raise SystemExit(main())
