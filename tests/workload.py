"""A process of known resource use, for real-process tests.

usage: workload.py TAG MODE [ARGS...]
It does its work, prints one JSON line with what it measured of itself, then waits until
its stdin closes (so the test can scrape it alive) and exits 0. TAG only names it.
Modes: cpu SECONDS | write BYTES PATH | read PATH | writes COUNT PATH | mem BYTES |
threads N | fds N | fork N SECONDS | sleep
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def burn(seconds: float) -> None:
    start = sum(os.times()[:2])
    x = 0
    while sum(os.times()[:2]) - start < seconds:
        for _ in range(10000):
            x += 1


def main() -> None:
    mode, args = sys.argv[2], sys.argv[3:]
    report: dict[str, object] = {"pid": os.getpid()}
    keep: list[object] = []
    if mode == "cpu":
        burn(float(args[0]))
    elif mode == "write":
        size, path = int(args[0]), args[1]
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(size >> 20):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
    elif mode == "read":
        with open(args[0], "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            report["read"] = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
    elif mode == "writes":
        fd = os.open(args[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for _ in range(int(args[0])):
            os.write(fd, b"x" * 512)
        os.close(fd)
    elif mode == "mem":
        block = bytearray(int(args[0]))
        for i in range(0, len(block), 4096):
            block[i] = 1
        keep.append(block)
    elif mode == "threads":
        stop = threading.Event()
        for _ in range(int(args[0])):
            threading.Thread(target=stop.wait, daemon=True).start()
    elif mode == "fds":
        keep.extend(open(os.devnull) for _ in range(int(args[0])))  # noqa: SIM115 - held open on purpose
    elif mode == "fork":
        for _ in range(int(args[0])):
            pid = os.fork()
            if pid == 0:
                burn(float(args[1]))
                os._exit(0)
            os.waitpid(pid, 0)
    t = os.times()
    report.update(user=t[0], system=t[1], children_user=t[2], children_system=t[3], time=time.time())
    print(json.dumps(report), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
