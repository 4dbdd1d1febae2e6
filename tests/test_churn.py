"""Process churn of hundreds of exits a second during scrapes: no failure, counters never go down."""

from __future__ import annotations

import os
import re
import sys
import threading
import time

import pytest

from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import parse_exposition

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")]
COUNTER = re.compile(r"^atlas_\w+_total\{")


def churn(stop: threading.Event, spawned: list[int]) -> None:
    """Spawn /bin/true as fast as possible (no shell) and reap each child it spawned."""
    live: list[int] = []
    while not stop.is_set() or live:
        if not stop.is_set():
            for _ in range(20):
                live.append(os.posix_spawn("/bin/true", ["true"], {}))
                spawned[0] += 1
        live = [pid for pid in live if os.waitpid(pid, os.WNOHANG)[0] == 0]
        time.sleep(0.01)


def test_counters_stay_monotonic_under_churn() -> None:
    exporter = Exporter(parse_config({"snapshot_max_age_seconds": 0, "hang": {"check_interval_seconds": 0.2},
                                      "network": {"sample_interval_seconds": 0.2}}))
    exporter.start()
    stop = threading.Event()
    spawned = [0]
    worker = threading.Thread(target=churn, args=(stop, spawned), daemon=True)
    worker.start()
    previous: dict[str, float] = {}
    scrapes = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 6:
            values = parse_exposition(exporter.render_metrics()[0].decode())
            scrapes += 1
            for collector in ("process", "network", "crash", "hang"):
                assert values[f'atlas_scrape_collector_success{{collector="{collector}"}}'] == 1
            for key, value in values.items():
                if COUNTER.match(key) and key in previous:
                    assert value >= previous[key], f"{key} went down: {previous[key]} -> {value}"
            previous = values
    finally:
        stop.set()
        worker.join(timeout=10)
        exporter.stop()
    rate = spawned[0] / (time.monotonic() - started)
    assert scrapes >= 20
    assert rate >= 200, f"only {rate:.0f} processes a second: the test did not churn hard enough"
