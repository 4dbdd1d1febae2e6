"""Hostile clients against the real exporter, side by side for several checkouts, in one run.

    python3 bench/hostile_clients.py                       # this checkout only
    python3 bench/hostile_clients.py --ref before=b6ede1b  # and an older commit (a temporary worktree)

Each target runs `python -m atlas_exporter` from its checkout (this interpreter, PYTHONPATH set to
the checkout) on 127.0.0.1 with a free port. Scenarios, each on a fresh exporter:

  plain    2,000 connections (idle / an unfinished request head / half-closed), then 10 scrapes
  tls      2,000 stalled TLS handshakes (nothing / a partial ClientHello), then 10 TLS scrapes
  fds      `ulimit -n 32`, 100 connections held: exporter CPU seconds over 3 s, then one scrape
  flood    wrong passwords for the real user from 24 connections on 9 loopback addresses (bcrypt
           cost 10), then the first real login and a second (cached) one
  smuggle  a GET whose Content-Length body is a second request: how many answers come back

Reported: scrapes that succeeded, their slowest and median time, and the exporter's RSS, threads,
open fds and CPU seconds while the hostile connections are held. Needs Linux (reads /proc), openssl
and bcrypt.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"listening on (https?)://\[?([0-9a-f.:]+)\]?:(\d+)/")
CONNECTIONS = 2000


def _proc(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {"rss_mib": rss / 1024, "threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd")), "cpu": cpu}


class Exporter:
    def __init__(self, checkout: Path, folder: Path, *args: str, ulimit: int | None = None) -> None:
        self.log = folder / f"exporter-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "atlas_exporter", "--web.listen-address", "127.0.0.1:0", *args]
        if ulimit is not None:
            command = ["sh", "-c", f'ulimit -n {ulimit} && exec "$0" "$@"', *command]
        env = dict(os.environ, PYTHONPATH=str(checkout))
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(command, cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while not (found := LISTENING.search(self.log.read_bytes())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"exporter did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.1)
        self.port = int(found.group(3))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def scrape(port: int, context: ssl.SSLContext | None = None, auth: str | None = None,
           timeout: float = 10.0) -> tuple[int | str, float]:
    started = time.monotonic()
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context) if context
            else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout))
    try:
        conn.request("GET", "/metrics", headers={"Authorization": auth} if auth else {})
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    except (OSError, http.client.HTTPException) as err:
        return type(err).__name__, time.monotonic() - started
    finally:
        conn.close()


def _summary(results: list[tuple[int | str, float]]) -> str:
    ok = [t for status, t in results if status == 200]
    failed = sorted({str(status) for status, _ in results if status != 200})
    text = f"{len(ok)}/{len(results)} ok"
    if ok:
        text += f", slowest {max(ok) * 1000:.1f} ms, median {statistics.median(ok) * 1000:.1f} ms"
    if failed:
        text += f", failures: {' '.join(failed)}"
    return text


def _connect(port: int, source: str | None = None) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0) if source else None)


def _hold(exporter: Exporter, stack: ExitStack, kind: str) -> None:
    for i in range(CONNECTIONS):
        try:
            sock = stack.enter_context(_connect(exporter.port))
            if kind == "plain" and i % 3 == 1:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            elif kind == "plain" and i % 3 == 2:
                sock.sendall(b"GET /met")
                sock.shutdown(socket.SHUT_WR)
            elif kind == "tls" and i % 2:
                sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        except OSError:
            pass
    time.sleep(1.0)


def held_scenario(checkout: Path, folder: Path, kind: str, certs: Path) -> str:
    args: list[str] = []
    context = None
    if kind == "tls":
        web = folder / "web-tls.yml"
        web.write_text(f"tls_server_config:\n  cert_file: {certs}/server.crt\n  key_file: {certs}/server.key\n")
        args = ["--web.config.file", str(web)]
        context = ssl.create_default_context(cafile=str(certs / "server.crt"))
    exporter = Exporter(checkout, folder, *args)
    try:
        scrape(exporter.port, context)  # warm up
        idle = _proc(exporter.proc.pid)
        with ExitStack() as stack:
            _hold(exporter, stack, kind)
            held = _proc(exporter.proc.pid)
            results = [scrape(exporter.port, context) for _ in range(10)]
            time.sleep(2.0)
            cpu = _proc(exporter.proc.pid)["cpu"] - held["cpu"]
        return (f"{_summary(results)}; RSS {idle['rss_mib']:.0f} -> {held['rss_mib']:.0f} MiB, threads "
                f"{held['threads']}, fds {held['fds']}, {cpu:.2f} CPU s in the 2 s after")
    finally:
        exporter.stop()


def fds_scenario(checkout: Path, folder: Path) -> str:
    exporter = Exporter(checkout, folder, ulimit=32)
    try:
        with ExitStack() as stack:
            for _ in range(100):
                try:
                    stack.enter_context(_connect(exporter.port))
                except OSError:
                    pass
            time.sleep(1.0)
            before = _proc(exporter.proc.pid)["cpu"]
            time.sleep(3.0)
            spent = _proc(exporter.proc.pid)["cpu"] - before
            result = scrape(exporter.port, timeout=15)
        return f"{spent:.2f} CPU s in 3 s with 100 connections held; then a scrape: {_summary([result])}"
    finally:
        exporter.stop()


def _flood(port: int, stop: threading.Event, source: str, counts: list[int]) -> None:
    while not stop.is_set():
        try:
            with _connect(port, source) as sock:
                reader = sock.makefile("rb")
                while not stop.is_set():
                    token = base64.b64encode(b"alice:" + os.urandom(6).hex().encode())
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + token + b"\r\n\r\n")
                    status = reader.readline()
                    if not status:
                        break
                    length = 0
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    reader.read(length)
                    counts.append(int(status.split()[1]))
        except (OSError, ValueError, IndexError):
            time.sleep(0.01)


def flood_scenario(checkout: Path, folder: Path) -> str:
    import bcrypt

    web = folder / "web-auth.yml"
    web.write_text(f"basic_auth_users:\n  alice: {bcrypt.hashpw(b'right', bcrypt.gensalt(10)).decode()}\n")
    exporter = Exporter(checkout, folder, "--web.config.file", str(web))
    good = "Basic " + base64.b64encode(b"alice:right").decode()
    stop = threading.Event()
    counts: list[int] = []
    sources = [f"127.0.0.{2 + i % 8}" for i in range(16)] + ["127.0.0.10"] * 8
    threads = [threading.Thread(target=_flood, args=(exporter.port, stop, s, counts), daemon=True) for s in sources]
    try:
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        first = scrape(exporter.port, auth=good, timeout=30)
        cached = scrape(exporter.port, auth=good, timeout=30)
        busy = _proc(exporter.proc.pid)
        return (f"first login {first[0]} in {first[1]:.3f} s, cached {cached[0]} in {cached[1]:.3f} s; flood "
                f"answers: {len(counts)} ({counts.count(401)} x 401, {counts.count(429)} x 429); threads "
                f"{busy['threads']}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        exporter.stop()


def smuggle_scenario(checkout: Path, folder: Path) -> str:
    exporter = Exporter(checkout, folder)
    try:
        inner = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        with _connect(exporter.port) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
            sock.settimeout(2.0)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except TimeoutError:
                pass
        codes = re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)
        return f"{len(codes)} answer(s): {' '.join(c.decode() for c in codes)}"
    finally:
        exporter.stop()


def make_certs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "2",
                    "-keyout", "server.key", "-out", "server.crt"], cwd=folder, check=True, capture_output=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", action="append", default=[], metavar="NAME=GITREF",
                        help="also run a commit of this repository (checked out in a temporary worktree)")
    parser.add_argument("--only", default="plain,tls,fds,flood,smuggle", help="comma-separated scenarios")
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    folder = Path(tempfile.mkdtemp(prefix="atlas-hostile-"))
    targets: list[tuple[str, Path]] = []
    worktrees: list[Path] = []
    try:
        for item in args.ref:
            name, _, ref = item.partition("=")
            path = folder / f"worktree-{name}"
            subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=REPO, check=True,
                           capture_output=True)
            worktrees.append(path)
            targets.append((name, path))
        targets.append(("this checkout", REPO))
        certs = make_certs(folder / "certs")
        scenarios = {
            "plain": lambda checkout: held_scenario(checkout, folder, "plain", certs),
            "tls": lambda checkout: held_scenario(checkout, folder, "tls", certs),
            "fds": lambda checkout: fds_scenario(checkout, folder),
            "flood": lambda checkout: flood_scenario(checkout, folder),
            "smuggle": lambda checkout: smuggle_scenario(checkout, folder),
        }
        for scenario in args.only.split(","):
            for name, checkout in targets:
                try:
                    result = scenarios[scenario](checkout)
                except Exception as err:  # a target that breaks is a result too
                    result = f"error: {type(err).__name__}: {err}"
                print(f"{scenario:8} {name:14} {result}", flush=True)
    finally:
        for path in worktrees:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
