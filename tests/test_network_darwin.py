"""macOS network source: the nettop parser on real output samples, deltas, and a fake nettop.

Files `tests/fixtures/network/nettop_n1..n5_*.csv` are verbatim nettop outputs as published for
macOS 12 and later (N1: macOS 12 `-L 1 -P -J bytes_in,bytes_out`; N2: default columns with a socket
row; N3: `-P -n -x`; N4: two frames with a truncated helper name; N5: rows without their header).
`nettop_reconstructed_edge_cases.csv` is written by hand from the format rules (CRLF, commas in
names, bad pids and counters) and is not real output.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_exporter.collectors.network.source_darwin import (
    DarwinNetworkSource,
    NettopDeltas,
    NettopFrame,
    NettopRow,
    make_network_source,
    parse_nettop_csv,
)
from atlas_exporter.config import Config, NetworkOptions

FIXTURES = Path(__file__).parent / "fixtures" / "network"
FAKE = FIXTURES / "fake_nettop.py"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()  # keeps CRLF


def rows(frame: NettopFrame | None) -> dict[int, tuple[str, int, int]]:
    assert frame is not None
    return {pid: (r.name, r.bytes_in, r.bytes_out) for pid, r in frame.rows.items()}


def test_n1_only_bytes_columns() -> None:
    frame = parse_nettop_csv(fixture("nettop_n1_macos12.csv"))
    assert rows(frame) == {503: ("systemstats", 0, 0), 504: ("configd", 0, 0), 533: ("apsd", 11417, 23504),
                           541: ("locationd", 0, 0), 555: ("bluetoothd", 0, 0)}
    assert frame is not None and frame.skipped == 0


def test_n2_socket_rows_are_not_processes() -> None:
    frame = parse_nettop_csv(fixture("nettop_n2_socket_rows.csv"))
    assert rows(frame) == {0: ("kernel_task", 322736, 229260)}
    assert frame is not None and frame.skipped == 1


def test_n3_default_columns_and_names_with_spaces() -> None:
    assert rows(parse_nettop_csv(fixture("nettop_n3_default_columns.csv"))) == {
        1: ("launchd", 0, 0), 5034: ("Slack Helper", 108093, 67721)}


def test_n4_last_frame_wins_and_names_with_dots_and_truncation() -> None:
    assert rows(parse_nettop_csv(fixture("nettop_n4_two_frames.csv"))) == {
        79391: ("io.tailscale.ip", 745, 952), 18262: ("MacPacketTunnel", 39652, 1085),
        51458: ("Code Helper (Pl", 0, 702)}


def test_n5_rows_without_header_are_not_output() -> None:
    assert parse_nettop_csv(fixture("nettop_n5_rows_only.csv")) is None
    header = fixture("nettop_n3_default_columns.csv").splitlines()[0] + "\n"
    assert rows(parse_nettop_csv(header + fixture("nettop_n5_rows_only.csv"))) == {
        1: ("launchd", 0, 0), 38574: ("Telegram", 808446, 164427)}


def test_reconstructed_edge_cases() -> None:
    frame = parse_nettop_csv(fixture("nettop_reconstructed_edge_cases.csv"))
    assert rows(frame) == {1567: ("Google Chrome H", 5000, 6000), 4242: ("odd,name, with commas", 10, 20),
                           380: ("nesessionmanage", 0, 0)}
    assert frame is not None and frame.skipped == 6


@pytest.mark.parametrize("text", ["", "\n\n", "garbage without commas\n", "nettop: error\n",
                                  "time,,interface\n1,a.1,x\n"])
def test_no_header_is_none(text: str) -> None:
    assert parse_nettop_csv(text) is None


def test_header_only_is_an_empty_frame() -> None:
    assert parse_nettop_csv(",bytes_in,bytes_out,\n") == NettopFrame({}, 0)


def frame_of(*items: tuple[str, int, int, int]) -> NettopFrame:
    return NettopFrame({pid: NettopRow(name, pid, rx, tx) for name, pid, rx, tx in items})


def test_deltas_sequence() -> None:
    apps = {10: "Safari", 11: "Safari", 20: "Mail"}
    deltas = NettopDeltas(apps.get)
    steps = [
        (frame_of(("Safari", 10, 1000, 100), ("Mail", 20, 5, 5)), {"Safari": (1000, 100), "Mail": (5, 5)}),
        (frame_of(("Safari", 10, 1500, 150), ("com.apple.WebKi", 11, 10, 1), ("Mail", 20, 5, 5)),
         {"Safari": (1510, 151), "Mail": (5, 5)}),
        # a socket of pid 10 closed: its value drops; nothing is subtracted
        (frame_of(("Safari", 10, 200, 20), ("Mail", 20, 6, 9)), {"Safari": (1510, 151), "Mail": (6, 9)}),
        # the next increase counts from the lower value
        (frame_of(("Safari", 10, 300, 25), ("Mail", 20, 6, 9)), {"Safari": (1610, 156), "Mail": (6, 9)}),
        # pid 20 reused by another program: a new process whose whole value counts
        (frame_of(("Safari", 10, 300, 25), ("curl", 20, 50, 60)), {"Safari": (1610, 156), "Mail": (56, 69)}),
    ]
    for frame, want in steps:
        deltas.apply(frame)
        assert deltas.totals() == want
    assert deltas.unattributed == [0.0, 0.0]


def test_pid_that_left_and_came_back_counts_again_and_unknown_pids_are_unattributed() -> None:
    deltas = NettopDeltas({1: "a"}.get)
    deltas.apply(frame_of(("a", 1, 100, 0)))
    deltas.apply(frame_of())
    deltas.apply(frame_of(("a", 1, 30, 0), ("gone", 99, 7, 8)))
    assert deltas.totals() == {"a": (130, 0)}
    assert deltas.unattributed == [7.0, 8.0]
    assert deltas.tracked() == 2


def test_retire_drops_totals_and_a_returning_app_starts_from_zero() -> None:
    deltas = NettopDeltas({1: "a", 2: "b"}.get)
    deltas.apply(frame_of(("a", 1, 100, 10), ("b", 2, 5, 5)))
    deltas.retire(["a", "never-seen"])
    assert deltas.totals() == {"b": (5, 5)}
    deltas.apply(frame_of(("a", 1, 130, 10), ("b", 2, 5, 5)))
    assert deltas.totals() == {"a": (30, 0), "b": (5, 5)}
    assert deltas.unattributed == [0.0, 0.0]


def fake_source(*args: str, timeout: float = 10.0, apps: dict[int, str] | None = None) -> DarwinNetworkSource:
    names = apps if apps is not None else {533: "apsd", 503: "systemstats"}
    return DarwinNetworkSource(names.get, command=[sys.executable, str(FAKE), *args], timeout=timeout)


def test_source_runs_fake_nettop_and_exports() -> None:
    source = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"))
    assert source.app_totals() == {"apsd": (11417.0, 23504.0)}
    families = {m.name: m for m in source.collect(None)}  # type: ignore[arg-type]
    assert source.runs == 1  # the snapshot's totals and the scrape share one run
    samples = {(s.name, tuple(s.labels.items())): s.value for m in families.values() for s in m.samples}
    assert samples[("atlas_app_network_receive_bytes_total", (("app", "apsd"),))] == 11417
    assert samples[("atlas_app_network_transmit_bytes_total", (("app", "apsd"),))] == 23504
    assert samples[("atlas_network_unattributed_receive_bytes_total", ())] == 0
    assert all(s.active for s in source.statuses())


def test_source_retire_removes_the_apps_series() -> None:
    source = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"))
    assert source.app_totals() == {"apsd": (11417.0, 23504.0)}
    source.retire(["apsd"])
    assert source.app_totals() == {}  # a new nettop run, if any, shows the same cumulative values: no delta
    labels = {tuple(s.labels.items()) for m in source.collect(None) for s in m.samples}  # type: ignore[arg-type]
    assert (("app", "apsd"),) not in labels


def test_timeout_never_holds_the_scrape() -> None:
    source = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"), "--sleep", "60", timeout=0.5)
    started = time.monotonic()
    assert list(source.collect(None)) == []  # type: ignore[arg-type]  # never measured: absent, not 0
    assert time.monotonic() - started < 5.0
    (status,) = source.statuses()
    assert not status.active and "0.5 s" in status.reason
    assert source.failures == 1


def test_timeout_after_a_good_run_keeps_totals() -> None:
    good = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"))
    good.refresh()
    good._runner.command += ["--sleep", "60"]
    good._runner.timeout = 0.3
    good.refresh(max_age=0)
    assert good.app_totals() == {"apsd": (11417.0, 23504.0)}
    assert {m.name for m in good.collect(None)} >= {"atlas_app_network_receive_bytes"}  # type: ignore[arg-type]
    assert not good.statuses()[0].active


def test_failing_and_garbage_nettop_are_reported() -> None:
    failing = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"), "--exit", "3")
    assert list(failing.collect(None)) == []  # type: ignore[arg-type]
    assert "status 3" in failing.statuses()[0].reason
    garbage = fake_source(str(FIXTURES / "nettop_n5_rows_only.csv"))
    assert list(garbage.collect(None)) == []  # type: ignore[arg-type]
    assert "header" in garbage.statuses()[0].reason
    missing = DarwinNetworkSource({}.get, command=["/nonexistent/nettop"], timeout=1)
    assert list(missing.collect(None)) == []  # type: ignore[arg-type]
    assert "cannot run" in missing.statuses()[0].reason


def test_nettop_without_x_is_probed_once_and_used() -> None:
    source = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"), "--no-x", "-P", "-L", "1", "-x")
    assert source.app_totals() == {"apsd": (11417.0, 23504.0)}
    assert source.without_x and "-x" not in source._runner.command
    (status,) = source.statuses()
    assert status.active and "without -x" in status.details[0]
    # a nettop that fails with and without -x is reported as failing, and is not probed again
    broken = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"), "--exit", "3", "-x")
    assert broken.app_totals() == {}
    assert not broken.without_x and "-x" in broken._runner.command and "status 3" in broken.statuses()[0].reason
    # a nettop that accepts -x keeps it
    normal = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"), "-x")
    normal.refresh()
    assert not normal.without_x and normal.statuses()[0].details == ()


def test_no_leftover_process_after_timeout() -> None:
    source = fake_source(str(FIXTURES / "nettop_n1_macos12.csv"), "--sleep", "60", "--marker-x9q", timeout=0.3)
    source.refresh()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    assert "--marker-x9q" not in ps


def test_factory_uses_configured_timeout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import atlas_exporter.collectors.network.source_darwin as darwin

    nettop = tmp_path / "nettop"
    nettop.write_text("#!/bin/sh\n")
    monkeypatch.setattr(darwin, "NETTOP", str(nettop))
    source = make_network_source(Config(network=NetworkOptions(nettop_timeout_seconds=2.5)), Path("/proc"), {}.get)
    assert isinstance(source, DarwinNetworkSource)
    assert source._runner.timeout == 2.5
    assert source._runner.command[1:] == ["-P", "-L", "1", "-x", "-n", "-J", "bytes_in,bytes_out"]
