"""The snapshot machinery: sharing, and isolation of a process table that fails."""

from __future__ import annotations

import errno
from pathlib import Path

from atlas_exporter.apps.naming import Namer
from atlas_exporter.apps.resolver import AppResolver
from atlas_exporter.apps.tracker import Tracker
from atlas_exporter.collectors.process.source_linux import LinuxProcessSource
from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from atlas_exporter.exporter.snapshot import Snapshotter
from atlas_exporter.model import ProcessId, ProcessScan, ProcIdentity, ProcSample, ReadErrors
from conftest import parse_exposition


class FakeSource:
    reaped_io_in_parent = True

    def __init__(self) -> None:
        self.cpu = 1.0
        self.fail_identity = False
        self.scans = 0

    def scan(self) -> ProcessScan:
        self.scans += 1
        sample = ProcSample(ProcessId(10, 1), 1, "S", self.cpu, 0.0, 1, 4096, 0.0, comm="x")
        return ProcessScan([sample], ReadErrors(), 0.0)

    def identity(self, pid: ProcessId) -> ProcIdentity | None:
        if self.fail_identity:
            raise RuntimeError("identity exploded")
        return ProcIdentity(comm="x")

    def start_token(self, pid: int) -> ProcessId | None:
        return ProcessId(pid, 1)

    def statuses(self) -> list:
        return []


def snapshotter(source: FakeSource, clock: list[float]) -> Snapshotter:
    return Snapshotter(source, AppResolver(source, Namer(), 10), Tracker(),  # type: ignore[arg-type]
                       max_age_seconds=1.0, clock=lambda: clock[0])


def test_scrapes_within_max_age_share_one_snapshot() -> None:
    source, clock = FakeSource(), [0.0]
    snaps = snapshotter(source, clock)
    first = snaps.get()
    clock[0] = 0.5
    assert snaps.get() is first and source.scans == 1
    clock[0] = 1.5
    assert snaps.get() is not first and source.scans == 2


def test_any_failure_while_building_is_isolated_to_the_process_collector() -> None:
    source = FakeSource()
    source.fail_identity = True
    exporter = Exporter(parse_config({}), enabled={"process"}, process_source=source, sources=[])  # type: ignore
    values = parse_exposition(exporter.render_metrics()[0].decode())
    assert values['atlas_scrape_collector_success{collector="process"}'] == 0
    assert "atlas_exporter_build_info" in "".join(values)
    source.fail_identity = False
    exporter.snapshotter.max_age_seconds = 0
    values = parse_exposition(exporter.render_metrics()[0].decode())
    assert values['atlas_scrape_collector_success{collector="process"}'] == 1


def test_process_read_error_other_than_vanishing_is_skipped_not_gone(tmp_path: Path, monkeypatch) -> None:
    from test_fake_proc import fake_proc

    from atlas_exporter.collectors.process import source_linux as process_linux

    procfs = fake_proc(tmp_path / "proc")
    source = LinuxProcessSource(procfs)
    real_read = process_linux.read_proc_file

    def flaky(path: str) -> bytes:
        if path.endswith("/900/stat"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_read(path)

    monkeypatch.setattr(process_linux, "read_proc_file", flaky)
    scan = source.scan()
    assert scan.skipped == frozenset({900})
    assert all(s.id.pid != 900 for s in scan.samples)
    assert scan.errors.vanished == 0


def test_a_pass_where_most_processes_are_unreadable_fails_as_a_whole(tmp_path: Path, monkeypatch) -> None:
    import pytest
    from test_fake_proc import fake_proc

    from atlas_exporter.collectors.process import source_linux as process_linux

    source = LinuxProcessSource(fake_proc(tmp_path / "proc"))

    def broken(path: str) -> bytes:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(process_linux, "read_proc_file", broken)
    with pytest.raises(OSError, match="unreadable"):
        source.scan()
