"""BackgroundLoop: steps repeat, a failing step is logged and counted, a dead thread fails its collector."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

from atlas_exporter.exporter.collector import AtlasCollector
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.model import Snapshot, SourceStatus
from conftest import wait_for

log = logging.getLogger("test-loop")


def test_steps_repeat_until_stopped() -> None:
    calls: list[float] = []
    loop = BackgroundLoop("t-repeat", lambda: calls.append(time.monotonic()), interval=0.01, log=log,
                          immediate=True)
    loop.start()
    wait_for(lambda: len(calls) >= 5, timeout=5, interval=0.01, message="five steps")
    loop.stop()
    seen = len(calls)
    time.sleep(0.05)
    assert len(calls) == seen, "a stopped loop ran again"
    assert not loop.running and not loop.dead


def test_a_failing_step_is_counted_logged_once_and_the_loop_goes_on(caplog) -> None:
    calls = 0

    def step() -> None:
        nonlocal calls
        calls += 1
        raise OSError("disk on fire")

    loop = BackgroundLoop("t-fail", step, interval=0.0, log=log, immediate=True, error_pause=0.01)
    with caplog.at_level(logging.WARNING, logger="test-loop"):
        loop.start()
        wait_for(lambda: calls >= 5, timeout=5, interval=0.01, message="five failed steps")
        loop.stop()
    assert loop.errors >= 5 and not loop.dead
    reports = [r for r in caplog.records if "t-fail: a step failed" in r.getMessage()]
    assert len(reports) == 1, "a repeating failure must not flood the log"
    assert reports[0].exc_info is not None, "the first failure is logged with its traceback"


def test_a_thread_that_ends_on_its_own_is_dead_with_its_reason() -> None:
    def step() -> None:
        raise SystemExit("watcher gave up")

    loop = BackgroundLoop("t-dead", step, interval=0.0, log=log, immediate=True)
    loop.start()
    wait_for(lambda: loop.dead, timeout=5, interval=0.01, message="the loop to die")
    assert "t-dead has ended" in loop.dead_reason() and "watcher gave up" in loop.dead_reason()


def test_the_first_step_waits_one_interval_unless_immediate() -> None:
    ran = threading.Event()
    loop = BackgroundLoop("t-delay", ran.set, interval=0.3, log=log)
    loop.start()
    assert not ran.wait(0.1)
    assert ran.wait(2.0)
    loop.stop()


class LoopingSource:
    """A sub-collector with one background loop, as the crash, hang and network sources have."""

    name = "fake"

    def __init__(self, step) -> None:
        self.loops = [BackgroundLoop("atlas-fake-watcher", step, interval=0.0, log=log, immediate=True)]

    def start(self) -> None:
        for loop in self.loops:
            loop.start()

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()

    def statuses(self) -> list[SourceStatus]:
        return [SourceStatus(name="fake-events", active=True, privilege="root")]

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        return []


class FixedSnapshots:
    scan_error = None

    def get(self) -> Snapshot:
        return Snapshot(wall_time=time.time(), monotonic=time.monotonic())


def success_of(collector: AtlasCollector, name: str) -> float | None:
    for family in collector.collect():
        if family.name == "atlas_scrape_collector_success":
            for sample in family.samples:
                if sample.labels["collector"] == name:
                    return sample.value
    return None


def test_a_dead_loop_sets_success_0_and_turns_its_sources_off_on_the_status_page(caplog) -> None:
    alive = LoopingSource(lambda: time.sleep(0.01))
    collector = AtlasCollector(FixedSnapshots(), [alive])  # type: ignore[arg-type]
    alive.start()
    try:
        assert success_of(collector, "fake") == 1
        assert collector.statuses()[0].active
    finally:
        alive.stop()

    def die() -> None:
        raise SystemExit("unrecoverable")

    dying = LoopingSource(die)
    collector = AtlasCollector(FixedSnapshots(), [dying])  # type: ignore[arg-type]
    dying.start()
    wait_for(lambda: dying.loops[0].dead, timeout=5, interval=0.01, message="the loop to die")
    with caplog.at_level(logging.ERROR, logger="atlas_exporter.exporter.collector"):
        assert success_of(collector, "fake") == 0
        assert success_of(collector, "fake") == 0
    reports = [r for r in caplog.records
               if r.name == "atlas_exporter.exporter.collector" and "atlas-fake-watcher has ended" in r.getMessage()]
    assert len(reports) == 1, "a dead loop is logged once, not at every scrape"
    [status] = collector.statuses()
    assert status.name == "fake-events" and not status.active
    assert "atlas-fake-watcher has ended" in status.reason and "unrecoverable" in status.reason
    dying.stop()
    assert success_of(collector, "fake") == 1, "a loop stopped on purpose is not dead"


def test_a_dead_loop_that_is_not_essential_keeps_the_other_values_exported() -> None:
    """A loop that only adds to values another loop keeps fresh: success 0, the source's families still out."""

    class Partial(LoopingSource):
        def __init__(self) -> None:
            super().__init__(die)
            self.loops[0].essential = False

        def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
            from prometheus_client.core import GaugeMetricFamily
            return [GaugeMetricFamily("atlas_fake_value", "Still measured.", value=1)]

    def die() -> None:
        raise SystemExit("listener gave up")

    partial = Partial()
    collector = AtlasCollector(FixedSnapshots(), [partial])  # type: ignore[arg-type]
    partial.start()
    wait_for(lambda: partial.loops[0].dead, timeout=5, interval=0.01, message="the loop to die")
    families = {f.name for f in collector.collect()}
    assert "atlas_fake_value" in families
    assert success_of(collector, "fake") == 0
    assert collector.statuses()[0].active, "the source itself says what the dead loop fed"
    partial.stop()
