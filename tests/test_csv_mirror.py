"""CSV mirror: format, ranking, per-second math, rotation and faults, on hand-built snapshots."""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from atlas_exporter.config import Config, CsvOptions, parse_config
from atlas_exporter.model import AppView, Looping, Snapshot
from atlas_exporter.outputs.csv_mirror import (
    CORE_BURNER_PERCENT,
    HEADER,
    CsvError,
    CsvFile,
    CsvMirror,
    build_rows,
    format_timestamp,
    make_csv_mirror,
)

EXACT_HEADER = ("timestamp,app_name,pid,cpu_percent,memory_mb,threads,network_bytes_sent,network_bytes_recv,"
                "disk_read_ops,disk_write_ops,open_files")
MIB = 1024 * 1024


def app(name: str, cpu: float = 0.0, mem_mib: float | None = 10.0, **kw: object) -> AppView:
    fields: dict[str, object] = dict(name=name, processes=1, threads=3, oldest_pid=100, open_fds=7,
                                     cpu_user_seconds_total=cpu, cpu_system_seconds_total=0.0,
                                     resident_bytes=None if mem_mib is None else int(mem_mib * MIB),
                                     read_ops_total=0.0, write_ops_total=0.0,
                                     network_receive_bytes_total=0.0, network_transmit_bytes_total=0.0)
    fields.update(kw)
    return AppView(**fields)  # type: ignore[arg-type]


def snap(mono: float, *apps: AppView, wall: float = 1_764_000_000.0) -> Snapshot:
    return Snapshot(wall_time=wall + mono, monotonic=mono, apps={a.name: a for a in apps})


class Feed:
    """A stand-in for the exporter's snapshot machinery: returns prepared snapshots in order."""

    def __init__(self, *snapshots: Snapshot) -> None:
        self.snapshots = list(snapshots)
        self.calls = 0

    def __call__(self) -> Snapshot:
        self.calls += 1
        return self.snapshots.pop(0)


def options(path: Path, **kw: object) -> CsvOptions:
    return replace(CsvOptions(enabled=True, path=str(path)), **kw)  # type: ignore[arg-type]


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def mirror_for(path: Path, *snapshots: Snapshot, **kw: object) -> CsvMirror:
    return CsvMirror(options(path, **kw), Feed(*snapshots), fsync=False)


def metric_values(mirror: CsvMirror) -> dict[str, float]:
    out = {}
    for family in mirror.collect(snap(0.0)):
        for sample in family.samples:
            out[sample.name] = sample.value
    return out


# -- format -------------------------------------------------------------------------------------

def test_header_is_exact_and_rows_have_eleven_fields(tmp_path: Path) -> None:
    path = tmp_path / "app_resources.csv"
    apps0 = [app(f"app{i}", cpu=i) for i in range(4)]
    apps1 = [app(f"app{i}", cpu=i * 2) for i in range(4)]
    mirror = mirror_for(path, snap(0, *apps0), snap(10, *apps1), snap(20, *apps1))
    assert mirror.write_interval() == 0  # primes
    assert not path.exists()
    assert mirror.write_interval() == 4
    assert mirror.write_interval() == 4
    raw = path.read_bytes()
    assert raw.startswith(EXACT_HEADER.encode() + b"\r\n")
    assert raw.count(EXACT_HEADER.encode()) == 1
    assert raw.endswith(b"\r\n")
    rows = read_rows(path)
    assert tuple(rows[0]) == HEADER
    assert len(rows) == 9
    assert all(len(r) == 11 for r in rows)


def test_names_with_commas_and_quotes_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    names = ['Code Helper (Plugin), "beta"', "plain", 'quote"only', "new\nline"]
    mirror = mirror_for(path, snap(0, *[app(n) for n in names]), snap(5, *[app(n, cpu=1) for n in names]))
    mirror.write_interval()
    assert mirror.write_interval() == 4
    assert sorted(r[1] for r in read_rows(path)[1:]) == sorted(names)


def test_timestamp_is_utc_iso_seconds() -> None:
    wall = 1_764_118_923.75
    text = format_timestamp(wall)
    assert text.endswith("+00:00") and "." not in text
    assert datetime.fromisoformat(text).timestamp() == int(wall)


def test_values_and_units(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    before = app("db", cpu=10.0, cpu_system_seconds_total=2.0, network_transmit_bytes_total=1000.0,
                 network_receive_bytes_total=50.0, read_ops_total=7.0, write_ops_total=100.0)
    after = app("db", cpu=13.0, cpu_system_seconds_total=4.0, mem_mib=512.5, threads=41, oldest_pid=4312,
                open_fds=88, network_transmit_bytes_total=9000.0, network_receive_bytes_total=250.0,
                read_ops_total=27.0, write_ops_total=160.0)
    mirror = mirror_for(path, snap(100.0, before), snap(110.0, after, wall=1_764_000_000.0))
    mirror.write_interval()
    mirror.write_interval()
    (row,) = read_rows(path)[1:]
    seconds = 10.0
    assert row[0] == format_timestamp(1_764_000_000.0 + 110.0)
    assert row[1:3] == ["db", "4312"]
    assert float(row[3]) == pytest.approx((3.0 + 2.0) / seconds * 100)  # 50 % of one core
    assert float(row[4]) == pytest.approx(512.5)
    assert row[5] == "41"
    assert float(row[6]) == pytest.approx(8000.0 / seconds)
    assert float(row[7]) == pytest.approx(200.0 / seconds)
    assert float(row[8]) == pytest.approx(20.0 / seconds)
    assert float(row[9]) == pytest.approx(60.0 / seconds)
    assert row[10] == "88"


def test_unmeasurable_values_are_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    unknown = dict(mem_mib=None, oldest_pid=None, open_fds=None, network_transmit_bytes_total=None,
                   network_receive_bytes_total=None, read_ops_total=None, write_ops_total=None)
    mirror = mirror_for(path, snap(0, app("mac", cpu=1, **unknown)), snap(4, app("mac", cpu=2, **unknown)))
    mirror.write_interval()
    mirror.write_interval()
    (row,) = read_rows(path)[1:]
    assert row[2] == "" and row[4] == "" and row[6:] == ["", "", "", "", ""]
    assert float(row[3]) == pytest.approx(25.0)
    assert row[5] == "3"


def test_value_known_only_now_is_empty_but_new_app_counts_from_zero() -> None:
    prev = snap(0, app("io", read_ops_total=None))
    cur = snap(10, app("io", cpu=1, read_ops_total=500.0), app("fresh", cpu=4, read_ops_total=30.0))
    rows = {r.app_name: r for r in build_rows(prev, cur, top=10)}
    assert rows["io"].disk_read_ops is None  # no baseline: not a fake jump
    assert rows["fresh"].disk_read_ops == pytest.approx(3.0)
    assert rows["fresh"].cpu_percent == pytest.approx(40.0)


def test_total_that_restarted_counts_from_zero() -> None:
    rows = build_rows(snap(0, app("a", cpu=100.0)), snap(10, app("a", cpu=2.0)), top=5)
    assert rows[0].cpu_percent == pytest.approx(20.0)


def test_apps_without_processes_are_not_listed() -> None:
    gone = app("gone", cpu=50.0, processes=0)
    rows = build_rows(snap(0, app("gone"), app("here")), snap(10, gone, app("here", cpu=1.0)), top=5)
    assert [r.app_name for r in rows] == ["here"]


# -- ranking ------------------------------------------------------------------------------------

def test_top_n_by_cpu_then_memory() -> None:
    cpu_seconds = [3.0, 0.0, 7.5, 1.0, 0.0, 0.0, 2.0, 0.5]
    mems = [10, 300, 20, 30, 200, 100, 40, 50]
    prev = snap(0, *[app(f"a{i}", mem_mib=m) for i, m in enumerate(mems)])
    cur = snap(10, *[app(f"a{i}", cpu=c, mem_mib=m) for i, (c, m) in enumerate(zip(cpu_seconds, mems, strict=True))])
    ranked = sorted(range(len(mems)), key=lambda i: (-cpu_seconds[i], -mems[i]))
    rows = build_rows(prev, cur, top=6)
    assert [r.app_name for r in rows] == [f"a{i}" for i in ranked[:6]]
    assert [r.app_name for r in build_rows(prev, cur, top=100)] == [f"a{i}" for i in ranked]


def test_core_burners_are_always_listed() -> None:
    seconds = 10.0
    burn = CORE_BURNER_PERCENT / 100 * seconds
    prev = snap(0, *[app(n) for n in ("b1", "b2", "b3", "idle", "small")])
    cur = snap(seconds, app("b1", cpu=2 * seconds), app("b2", cpu=burn), app("b3", cpu=seconds),
               app("idle", mem_mib=9000), app("small", cpu=burn * 0.9))
    names = [r.app_name for r in build_rows(prev, cur, top=1)]
    assert names == ["b1", "b3", "b2"]
    assert [r.app_name for r in build_rows(prev, cur, top=4)] == ["b1", "b3", "b2", "small"]


def test_same_reading_twice_writes_nothing_and_keeps_the_baseline(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    first = snap(0, app("a"))
    mirror = mirror_for(path, first, first, snap(10, app("a", cpu=5.0)))
    mirror.write_interval()
    assert mirror.write_interval() == 0
    assert mirror.write_interval() == 1
    assert float(read_rows(path)[1][3]) == pytest.approx(50.0)


# -- the file -----------------------------------------------------------------------------------

def feed_forever(apps: int = 3, step: float = 10.0) -> Callable[[], Snapshot]:
    """Snapshots that advance by `step` seconds each call, with `apps` busy apps."""
    state = {"n": 0}
    lock = threading.Lock()

    def take() -> Snapshot:
        with lock:
            state["n"] += 1
            n = state["n"]
        return snap(n * step, *[app(f"app{i}", cpu=n * (i + 1), read_ops_total=float(n * 10)) for i in range(apps)])

    return take


def all_lines_complete(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\r\n")
    rows = read_rows(path)
    if rows:
        assert rows[0] == list(HEADER)
        assert list(HEADER) not in rows[1:]
    assert all(len(r) == 11 for r in rows)
    return rows


def test_rotation_by_size_keeps_backup_count(tmp_path: Path) -> None:
    path = tmp_path / "app_resources.csv"
    mirror = CsvMirror(options(path, max_bytes=1024, backup_count=2), feed_forever(), fsync=False)
    mirror.write_interval()
    intervals = 40
    written = sum(mirror.write_interval() for _ in range(intervals))
    assert written == intervals * 3
    files = [path, path.with_name(path.name + ".1"), path.with_name(path.name + ".2")]
    assert all(f.exists() for f in files)
    assert not path.with_name(path.name + ".3").exists()
    kept = 0
    for f in files:
        assert f.stat().st_size <= 1024
        rows = all_lines_complete(f)
        assert (len(rows) - 1) % 3 == 0  # an interval is never split across files
        kept += len(rows) - 1
    assert 0 < kept < written
    timestamps = [r[0] for f in reversed(files) for r in read_rows(f)[1:]]
    assert timestamps == sorted(timestamps)  # .2 is older than .1, which is older than the file


def test_rotation_without_backups_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    mirror = CsvMirror(options(path, max_bytes=1024, backup_count=0), feed_forever(), fsync=False)
    for _ in range(30):
        mirror.write_interval()
    assert path.stat().st_size <= 1024
    all_lines_complete(path)
    assert list(tmp_path.iterdir()) == [path]


def test_file_deleted_or_rotated_by_someone_else_gets_a_new_header(tmp_path: Path) -> None:
    path = tmp_path / "data" / "a.csv"
    mirror = CsvMirror(options(path), feed_forever(apps=2), fsync=False)
    mirror.write_interval()
    mirror.write_interval()
    path.unlink()
    assert mirror.write_interval() == 2
    assert len(all_lines_complete(path)) == 3
    path.rename(tmp_path / "moved.csv")  # logrotate without copytruncate
    mirror.write_interval()
    assert len(all_lines_complete(path)) == 3
    assert len(all_lines_complete(tmp_path / "moved.csv")) == 3
    os.truncate(path, 0)  # logrotate copytruncate
    mirror.write_interval()
    assert len(all_lines_complete(path)) == 3
    (tmp_path / "data" / "a.csv").unlink()
    (tmp_path / "data").rmdir()  # the whole folder went away
    assert mirror.write_interval() == 2
    assert len(all_lines_complete(path)) == 3
    assert metric_values(mirror)["atlas_csv_write_errors_total"] == 0


def test_appending_to_an_existing_file_does_not_repeat_the_header(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    # A file left by the original agent (csv.DictWriter: CRLF) and one written with LF ends.
    for ending in ("\r\n", "\n"):
        path.write_text(EXACT_HEADER + ending + "2026-01-11T10:00:00.123456,Safari,12,1.5,100.0,9,0,0,0,0,30"
                        + ending, newline="")
        mirror = CsvMirror(options(path), feed_forever(apps=1), fsync=False)
        mirror.file.check()
        mirror.write_interval()
        mirror.write_interval()
        rows = read_rows(path)
        assert [r[1] for r in rows] == ["app_name", "Safari", "app0"]


def test_partial_line_left_by_someone_else_is_ended(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(EXACT_HEADER + "\r\n2026-01-11T10:00:00,Saf", newline="")
    mirror = CsvMirror(options(path), feed_forever(apps=1), fsync=False)
    mirror.write_interval()
    mirror.write_interval()
    rows = read_rows(path)
    assert rows[1] == ["2026-01-11T10:00:00", "Saf"]
    assert rows[2][1] == "app0" and len(rows[2]) == 11


def test_foreign_file_replacing_ours_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    mirror = CsvMirror(options(path, backup_count=1), feed_forever(apps=1), fsync=False)
    mirror.write_interval()
    path.write_text("something else\n")
    mirror.write_interval()
    assert path.with_name("a.csv.1").read_text() == "something else\n"
    assert len(all_lines_complete(path)) == 2


# -- make_csv_mirror and unusable paths ---------------------------------------------------------

def test_factory_is_off_by_default_and_expands_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    take = feed_forever()
    assert make_csv_mirror(Config(), take) is None
    monkeypatch.setenv("HOME", str(tmp_path))
    config = parse_config({"csv": {"enabled": True, "interval_seconds": 2, "top": 5}})
    mirror = make_csv_mirror(config, take)
    assert mirror is not None
    expected = tmp_path / ".atlas_agent" / "data" / "app_resources.csv"
    assert mirror.path == expected
    assert expected.read_bytes() == (EXACT_HEADER + "\r\n").encode()  # a new file shows its header at once
    assert mirror.options.top == 5 and mirror.name == "csv"


@pytest.mark.parametrize("case", ["directory", "folder_is_a_file", "foreign_file"])
def test_unusable_path_is_a_clear_one_line_error(tmp_path: Path, case: str) -> None:
    if case == "directory":
        path = tmp_path / "dir.csv"
        path.mkdir()
    elif case == "folder_is_a_file":
        (tmp_path / "blocker").write_text("x")
        path = tmp_path / "blocker" / "sub" / "a.csv"
    else:
        path = tmp_path / "notes.csv"
        path.write_text("name,phone\nann,123\n")
    config = Config(csv=options(path))
    with pytest.raises(CsvError) as caught:
        make_csv_mirror(config, feed_forever())
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    if case == "foreign_file":
        assert path.read_text() == "name,phone\nann,123\n"


# -- faults -------------------------------------------------------------------------------------

def failing_write(after_bytes: int) -> Callable[[int, bytes], int]:
    """os.write that writes `after_bytes` bytes of the next call, then fails with ENOSPC."""
    calls = [0]

    def write(fd: int, data: bytes) -> int:
        calls[0] += 1
        if after_bytes and calls[0] % 2 == 1:
            return os.write(fd, data[:after_bytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


@pytest.mark.parametrize("partial", [0, 17])
def test_disk_full_leaves_no_torn_line_and_is_counted(tmp_path: Path, partial: int,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "a.csv"
    clock = [1000.0]
    mirror = CsvMirror(options(path), feed_forever(apps=4), clock=lambda: clock[0], wall_clock=lambda: 5e8,
                       fsync=False)
    mirror.write_interval()
    assert mirror.write_interval() == 4
    good = path.read_bytes()
    mirror.file._write = failing_write(partial)
    caplog.set_level(logging.ERROR, logger="atlas_exporter.outputs.csv_mirror")
    for _ in range(3):
        assert mirror.write_interval() == 0
        clock[0] += 10
    assert path.read_bytes() == good
    assert len([r for r in caplog.records if "No space left" in r.getMessage()]) == 1  # rate-limited
    values = metric_values(mirror)
    assert values["atlas_csv_write_errors_total"] == 3
    assert values["atlas_csv_rows_written_total"] == 4
    (status,) = mirror.statuses()
    assert not status.active and "No space left" in status.reason and str(path) in status.reason
    clock[0] += 400
    assert mirror.write_interval() == 0
    assert "2 more failures" in caplog.records[-1].getMessage()
    mirror.file._write = os.write
    assert mirror.write_interval() == 4
    assert len(all_lines_complete(path)) == 9
    assert mirror.statuses()[0].active


def test_disk_full_on_a_new_file_leaves_it_empty(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    file = CsvFile(path, max_bytes=10_000, backup_count=1, write=failing_write(5), fsync=False)
    with pytest.raises(OSError):
        file.append("x,y\r\n")
    assert path.read_bytes() == b""
    file._write = os.write
    file.append("x,y\r\n")
    assert path.read_bytes() == (EXACT_HEADER + "\r\nx,y\r\n").encode()


def test_snapshot_failure_is_counted_not_raised(tmp_path: Path) -> None:
    def broken() -> Snapshot:
        raise RuntimeError("process table unreadable")

    mirror = CsvMirror(options(tmp_path / "a.csv"), broken, fsync=False)
    assert mirror.write_interval() == 0
    assert metric_values(mirror)["atlas_csv_write_errors_total"] == 1
    assert "process table unreadable" in mirror.statuses()[0].reason


def test_metrics_before_and_after_the_first_write(tmp_path: Path) -> None:
    mirror = CsvMirror(options(tmp_path / "a.csv"), feed_forever(apps=2), wall_clock=lambda: 1_764_000_123.0,
                       fsync=False)
    values = metric_values(mirror)
    assert values == {"atlas_csv_rows_written_total": 0.0, "atlas_csv_write_errors_total": 0.0}
    mirror.write_interval()
    mirror.write_interval()
    values = metric_values(mirror)
    assert values["atlas_csv_rows_written_total"] == 2
    assert values["atlas_csv_last_write_timestamp_seconds"] == 1_764_000_123.0
    types = {f.name: f.type for f in mirror.collect(snap(0))}
    assert types == {"atlas_csv_rows_written": "counter", "atlas_csv_write_errors": "counter",
                     "atlas_csv_last_write_timestamp_seconds": "gauge"}


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30)


def test_real_full_disk_leaves_no_torn_line(tiny_tmpfs: Path) -> None:
    path = tiny_tmpfs / "app_resources.csv"
    mirror = CsvMirror(options(path, max_bytes=1024 * 1024), feed_forever(apps=20), fsync=True)
    mirror.write_interval()
    failures = 0
    for _ in range(200):
        if mirror.write_interval() == 0:
            failures += 1
            if failures == 3:
                break
    assert failures == 3
    rows = all_lines_complete(path)
    assert (len(rows) - 1) % 20 == 0 and len(rows) > 1
    values = metric_values(mirror)
    assert values["atlas_csv_write_errors_total"] == 3
    assert values["atlas_csv_rows_written_total"] == len(rows) - 1


# -- threads ------------------------------------------------------------------------------------

class SharedSnapshots:
    """A stand-in for the exporter's shared snapshot machinery: every `share` calls share one reading."""

    def __init__(self, share: int = 3) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.n = 0
        self.current: Snapshot | None = None
        self.share = share

    def take(self) -> Snapshot:
        with self.lock:
            if self.current is None or self.calls % self.share == 0:
                self.n += 1
                self.current = snap(self.n * 2.0, *[app(f"app{i}", cpu=self.n * (i + 1)) for i in range(6)])
            self.calls += 1
            return self.current


def test_scrapes_and_csv_writes_share_snapshots_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    shared = SharedSnapshots()
    mirror = CsvMirror(options(path, top=4), shared.take, fsync=False)
    stop = threading.Event()
    seen_by: list[list[tuple[float, float]]] = [[], []]
    problems: list[BaseException] = []

    def scraper(seen: list[tuple[float, float]]) -> None:
        try:
            while not stop.is_set():
                snapshot = shared.take()
                values = {s.name: s.value for f in mirror.collect(snapshot) for s in f.samples}
                seen.append((values["atlas_csv_rows_written_total"], values["atlas_csv_write_errors_total"]))
                mirror.statuses()
        except BaseException as err:  # reported below
            problems.append(err)

    threads = [threading.Thread(target=scraper, args=(seen,)) for seen in seen_by]
    for t in threads:
        t.start()
    try:
        written = 0
        for _ in range(60):
            written += mirror.write_interval()
            stop.wait(0.002)  # let the scrapers in
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not problems
    rows = all_lines_complete(path)
    assert len(rows) - 1 == written > 0
    assert all(len(r) == 11 for r in rows)
    for seen in seen_by:
        assert seen and [s[0] for s in seen] == sorted(s[0] for s in seen)  # the counter never goes down
        assert all(s[1] == 0 for s in seen)
    assert metric_values(mirror)["atlas_csv_rows_written_total"] == written


def test_thread_writes_every_interval_and_survives_failures(tmp_path: Path) -> None:
    import time

    path = tmp_path / "a.csv"
    calls = {"n": 0}
    good = feed_forever(apps=2)

    def take() -> Snapshot:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("one bad snapshot")
        return good()

    mirror = CsvMirror(options(path, interval_seconds=0.05), take, fsync=False)
    mirror.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and metric_values(mirror)["atlas_csv_rows_written_total"] < 6:
            time.sleep(0.02)
    finally:
        mirror.stop()
    assert not any(t.name == "atlas-csv-mirror" for t in threading.enumerate())
    values = metric_values(mirror)
    assert values["atlas_csv_rows_written_total"] >= 6
    assert values["atlas_csv_write_errors_total"] == 1
    rows = all_lines_complete(path)
    assert len(rows) - 1 == values["atlas_csv_rows_written_total"]


def test_writes_keep_a_fixed_rate_and_a_late_one_moves_the_schedule(tmp_path: Path) -> None:
    clock = [100.0]
    mirror = CsvMirror(options(tmp_path / "a.csv", interval_seconds=10.0), feed_forever(), clock=lambda: clock[0])
    assert mirror._until_next_write() == 10.0  # after the priming write
    clock[0] = 112.0  # that write took 2 s
    assert mirror._until_next_write() == 8.0
    clock[0] = 145.0  # a slow disk or a suspended machine: no burst of catch-up writes
    assert mirror._until_next_write() == 10.0


def test_a_dead_writer_loop_is_seen_by_the_exporter(tmp_path: Path) -> None:
    import time

    mirror = CsvMirror(options(tmp_path / "a.csv", interval_seconds=0.05), feed_forever(), fsync=False)
    assert isinstance(mirror, Looping) and [loop.name for loop in mirror.loops] == ["atlas-csv-mirror"]

    def die() -> None:
        raise SystemExit("the writer thread ends")

    mirror.loop.step = die
    mirror.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not mirror.loop.dead:
            time.sleep(0.01)
        assert mirror.loop.dead and "atlas-csv-mirror" in mirror.loop.dead_reason()
    finally:
        mirror.stop()
    assert not mirror.loop.dead  # stopped on purpose


def test_rows_text_is_written_in_one_call(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    chunks: list[bytes] = []

    def recording_write(fd: int, data: bytes) -> int:
        chunks.append(data)
        return os.write(fd, data)

    mirror = CsvMirror(options(path), feed_forever(apps=5), fsync=False)
    mirror.file._write = recording_write
    mirror.write_interval()
    mirror.write_interval()
    mirror.write_interval()
    assert len(chunks) == 2
    assert chunks[0].startswith(EXACT_HEADER.encode()) and chunks[0].count(b"\r\n") == 6
    assert chunks[1].count(b"\r\n") == 5 and chunks[1].endswith(b"\r\n")
    assert list(csv.reader(io.StringIO(path.read_text(), newline="")))[0] == list(HEADER)


def test_empty_snapshot_keeps_the_baseline(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    failed_scan = Snapshot(wall_time=1_764_000_010.0, monotonic=10.0)  # what a failed process scan gives
    mirror = mirror_for(path, snap(0, app("a", cpu=100.0)), failed_scan, snap(20, app("a", cpu=104.0)))
    mirror.write_interval()
    assert mirror.write_interval() == 0
    assert mirror.write_interval() == 1
    assert float(read_rows(path)[1][3]) == pytest.approx(4.0 / 20 * 100)  # not the app's whole history


def test_scrapes_do_not_wait_for_a_slow_disk(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    entered, release = threading.Event(), threading.Event()

    def slow_write(fd: int, data: bytes) -> int:
        entered.set()
        release.wait(30)
        return os.write(fd, data)

    mirror = CsvMirror(options(path), feed_forever(apps=2), fsync=False)
    mirror.write_interval()
    mirror.file._write = slow_write
    writer = threading.Thread(target=mirror.write_interval)
    writer.start()
    try:
        assert entered.wait(30)
        done = threading.Event()
        scrape = threading.Thread(target=lambda: (metric_values(mirror), mirror.statuses(), done.set()))
        scrape.start()
        assert done.wait(10), "collect() blocked behind the file write"
        scrape.join(10)
    finally:
        release.set()
        writer.join(30)
    assert metric_values(mirror)["atlas_csv_rows_written_total"] == 2


def test_interval_bigger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    mirror = CsvMirror(options(path, max_bytes=1024, backup_count=3), feed_forever(apps=20), fsync=False)
    mirror.file.check()  # a new file starts with just the header
    for _ in range(4):
        mirror.write_interval()
    files = [path] + [path.with_name(f"a.csv.{i}") for i in (1, 2)]
    assert [len(all_lines_complete(f)) for f in files] == [21, 21, 21]
    assert not path.with_name("a.csv.3").exists()


def test_first_interval_of_network_bytes_is_not_dropped() -> None:
    # "web" existed before its first connection: no network total at the previous snapshot yet
    prev = snap(0, app("web", network_receive_bytes_total=None, network_transmit_bytes_total=None),
                app("db", network_receive_bytes_total=100.0, network_transmit_bytes_total=100.0))
    cur = snap(10, app("web", cpu=1, network_receive_bytes_total=5000.0, network_transmit_bytes_total=2000.0),
               app("db", cpu=1, network_receive_bytes_total=100.0, network_transmit_bytes_total=100.0))
    rows = {r.app_name: r for r in build_rows(prev, cur, top=10)}
    assert rows["web"].network_bytes_recv == pytest.approx(500.0)
    assert rows["web"].network_bytes_sent == pytest.approx(200.0)
    # no network totals at all before (the source was not counting yet): no baseline, no fake jump
    prev = snap(0, app("web", network_receive_bytes_total=None, network_transmit_bytes_total=None))
    rows = {r.app_name: r for r in build_rows(prev, cur, top=10)}
    assert rows["web"].network_bytes_recv is None
