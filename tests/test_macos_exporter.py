"""The whole exporter on the macOS process source over fakes, diffed against a golden exposition file.

Run `pytest tests/test_macos_exporter.py --update-golden` (or ATLAS_UPDATE_GOLDEN=1) to
rewrite tests/golden/darwin.prom after an intended change; review the diff.
"""

from __future__ import annotations

import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest
from test_darwin_process import FakeLibProc, FakeProc, FakeTable

from atlas_exporter.collectors.process.libproc_darwin import TH_STATE_UNINTERRUPTIBLE, TH_STATE_WAITING
from atlas_exporter.collectors.process.source_darwin import DarwinProcessSource
from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import normalised_exposition, parse_exposition

GOLDEN = Path(__file__).parent / "golden" / "darwin.prom"
T0 = 1_760_000_000_000_000  # start times, microseconds since the epoch
CHROME = "Google Chrome.app"
HELPERS = f"{CHROME}/Contents/Frameworks/Google Chrome Framework.framework/Versions/1/Helpers"


def bundle(root: Path, relative: str, exe_name: str, info: dict | None,
           fmt: plistlib.PlistFormat = plistlib.FMT_XML) -> str:
    folder = root / relative
    (folder / "Contents" / "MacOS").mkdir(parents=True, exist_ok=True)
    if info is not None:
        (folder / "Contents" / "Info.plist").write_bytes(plistlib.dumps(info, fmt=fmt))
    return str(folder / "Contents" / "MacOS" / exe_name)


def machine(root: Path) -> tuple[FakeTable, dict[str, str]]:
    apps = root / "Applications"
    exes = {
        "chrome": bundle(apps, CHROME, "Google Chrome", {"CFBundleName": "Chrome",
                                                         "CFBundleDisplayName": "Google Chrome"},
                         fmt=plistlib.FMT_BINARY),
        "renderer": bundle(apps, f"{HELPERS}/Google Chrome Helper (Renderer).app",
                           "Google Chrome Helper (Renderer)", {"CFBundleName": "Google Chrome Helper (Renderer)"}),
        "gpu": bundle(apps, f"{HELPERS}/Google Chrome Helper (GPU).app", "Google Chrome Helper (GPU)", None),
        "broker": bundle(apps, "Safari.app/Contents/XPCServices/com.apple.Safari.SandboxBroker.xpc",
                         "com.apple.Safari.SandboxBroker", {"CFBundleName": "Safari"}),
    }
    (apps / "Safari.app" / "Contents" / "Info.plist").write_bytes(plistlib.dumps({"CFBundleName": "Safari"}))
    procs = [
        FakeProc(pid=400, name="Google Chrome", exe=exes["chrome"], started_us=T0, user_seconds=120.5,
                 system_seconds=30.25, threads=38, running=1, resident=400 << 20, fds=90,
                 disk_read=50 << 20, disk_written=12 << 20),
        FakeProc(pid=402, name="Google Chrome H", ppid=400, exe=exes["renderer"], started_us=T0 + 1_000_000,
                 user_seconds=60.0, system_seconds=5.0, threads=17, resident=250 << 20, fds=40,
                 disk_read=0, disk_written=0),
        FakeProc(pid=403, name="Google Chrome H", ppid=400, exe=exes["gpu"], started_us=T0 + 2_000_000,
                 user_seconds=30.0, system_seconds=10.0, threads=12, resident=150 << 20, fds=35,
                 disk_read=0, disk_written=0),
        FakeProc(pid=510, name="com.apple.Safar", exe=exes["broker"], started_us=T0 + 5_000_000,
                 user_seconds=0.75, system_seconds=0.5, threads=2, resident=8 << 20, fds=6),
        FakeProc(pid=600, name="python3.11", exe="/opt/homebrew/Cellar/python@3.11/3.11.9/bin/python3.11",
                 cmdline=("/opt/homebrew/bin/python3", "/Users/ann/bin/backup.py", "--full"),
                 started_us=T0 + 60_000_000, user_seconds=5.0, system_seconds=1.0, threads=3,
                 resident=40 << 20, fds=9, disk_read=300 << 20, disk_written=200 << 20),
        FakeProc(pid=601, name="tar", ppid=600, status="zombie", exe="/usr/bin/tar",
                 started_us=T0 + 61_000_000, user_seconds=0.25, system_seconds=0.125),
        FakeProc(pid=700, name="redis-server", exe="/opt/homebrew/bin/redis-server",
                 cmdline=("redis-server", "*:6379"), started_us=T0 - 86_400_000_000, user_seconds=40.0,
                 system_seconds=20.0, threads=5, resident=12 << 20, fds=15, disk_read=0, disk_written=64 << 20,
                 thread_states=[TH_STATE_WAITING, TH_STATE_UNINTERRUPTIBLE]),
        FakeProc(pid=800, name="mdworker_shared", exe="/usr/libexec/mdworker_shared", vanish_at="task"),
    ]
    return FakeTable(procs), exes


def exporter_over(table: FakeTable, config: dict | None = None) -> Exporter:
    source = DarwinProcessSource(table, FakeLibProc(table), euid=lambda: 501,
                                 user_name=lambda uid: {0: "root", 501: "ann"}.get(uid, str(uid)))
    return Exporter(parse_config({"snapshot_max_age_seconds": 0, **(config or {})}), enabled={"process"},
                    process_source=source, sources=[], platform_name="darwin")


def second_pass(table: FakeTable) -> None:
    """Between scrapes: Chrome works, the renderer exits and its pid is reused, redis writes."""
    chrome = table.procs[400]
    chrome.user_seconds += 1.5
    chrome.disk_read += 1 << 20
    del table.procs[402]
    del table.procs[800]
    table.procs[402] = FakeProc(pid=402, name="mdworker_shared", exe="/usr/libexec/mdworker_shared",
                                started_us=T0 + 90_000_000, user_seconds=0.5, system_seconds=0.25, threads=3,
                                resident=6 << 20, fds=5, disk_read=2 << 20, disk_written=0)
    table.procs[700].disk_written += 1 << 20
    table.procs[600].reaped_user += 2.0  # a child that lived and died between the scrapes


def two_scrapes(tmp_path: Path) -> tuple[str, str, Exporter]:
    table, _ = machine(tmp_path)
    exporter = exporter_over(table)
    first = normalised_exposition(exporter.render_metrics()[0])
    second_pass(table)
    second = normalised_exposition(exporter.render_metrics()[0])
    return first, second, exporter


def test_macos_exporter_matches_golden(tmp_path: Path, update_golden: bool) -> None:
    _, text, _ = two_scrapes(tmp_path)
    if update_golden or not GOLDEN.exists():
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "exposition changed; rerun with --update-golden and review the diff"


def test_macos_exporter_values(tmp_path: Path) -> None:
    first, second, exporter = two_scrapes(tmp_path)
    v1, v2 = parse_exposition(first), parse_exposition(second)
    chrome = 'app="Google_Chrome"'  # names have no spaces
    assert v1[f"atlas_app_processes{{{chrome}}}"] == 3  # main + helpers roll into the app
    assert v2[f"atlas_app_processes{{{chrome}}}"] == 2
    assert v1[f'atlas_app_cpu_seconds_total{{{chrome},mode="user"}}'] == pytest.approx(210.5)
    # counters hold when the renderer exits and grow by Chrome's new CPU only
    assert v2[f'atlas_app_cpu_seconds_total{{{chrome},mode="user"}}'] == pytest.approx(212.0)
    assert v2[f"atlas_app_disk_read_bytes_total{{{chrome}}}"] == (50 << 20) + (1 << 20)
    assert v2[f"atlas_app_resident_memory_bytes{{{chrome}}}"] == 550 << 20
    assert v2[f"atlas_app_threads{{{chrome}}}"] == 50
    assert v2[f"atlas_app_open_fds{{{chrome}}}"] == 125
    assert v2[f"atlas_app_oldest_start_time_seconds{{{chrome}}}"] == T0 / 1e6
    assert v2['atlas_app_processes{app="Safari"}'] == 1
    assert v2['atlas_app_processes{app="backup"}'] == 1  # interpreter: named by its script
    assert v2['atlas_app_cpu_seconds_total{app="backup",mode="user"}'] == pytest.approx(7.0)  # 5 + 2 reaped
    assert v2['atlas_app_disk_written_bytes_total{app="redis-server"}'] == 65 << 20
    assert v2['atlas_app_disk_wait_processes{app="redis-server"}'] == 1  # an uninterruptible thread
    assert v2['atlas_app_processes{app="mdworker_shared"}'] == 1  # pid 402 reused: a new process
    assert not any('app="tar"' in key for key in v2)  # first seen a zombie: not named, not exported
    assert not any(key.startswith(("atlas_app_io_read_ops_total", "atlas_app_io_write_ops_total")) for key in v2)
    assert v1['atlas_process_read_errors_total{reason="vanished"}'] == 1
    assert v2['atlas_scrape_collector_success{collector="process"}'] == 1
    assert 'platform="darwin"' in exporter.render_metrics()[0].decode()


def test_macos_status_page_names_the_libproc_source(tmp_path: Path) -> None:
    table, _ = machine(tmp_path)
    exporter = exporter_over(table)
    exporter.render_metrics()
    page = exporter.render_status()
    assert "libproc" in page
    assert "other users&#x27; processes" in page or "other users' processes" in page


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_macos_exposition_passes_promtool(tmp_path: Path) -> None:
    _, _, exporter = two_scrapes(tmp_path)
    result = subprocess.run(["promtool", "check", "metrics"], input=exporter.render_metrics()[0],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_macos_naming_rule_beats_the_bundle(tmp_path: Path) -> None:
    table, _ = machine(tmp_path)
    exporter = exporter_over(table, {"apps": [{"name": "chrome-gpu", "comm": "^Google Chrome H$",
                                               "exe": r"\(GPU\)"}]})
    v = parse_exposition(normalised_exposition(exporter.render_metrics()[0]))
    assert v['atlas_app_processes{app="chrome-gpu"}'] == 1
    assert v['atlas_app_processes{app="Google_Chrome"}'] == 2


def test_macos_other_users_processes_are_counted_with_absent_values(tmp_path: Path) -> None:
    table = FakeTable([
        FakeProc(pid=1, name="launchd", uid=0, status="running", exe="/sbin/launchd", denied=True),
        FakeProc(pid=90, name="WindowServer", uid=88, status="running", denied=True,
                 exe="/System/Library/PrivateFrameworks/SkyLight.framework/Resources/WindowServer"),
        FakeProc(pid=400, name="zsh", exe="/bin/zsh", threads=1, resident=4 << 20),
    ])
    exporter = exporter_over(table)
    v = parse_exposition(normalised_exposition(exporter.render_metrics()[0]))
    assert v['atlas_scrape_collector_success{collector="process"}'] == 1
    assert v['atlas_app_processes{app="WindowServer"}'] == 1
    assert 'atlas_app_resident_memory_bytes{app="WindowServer"}' not in v
    assert 'atlas_app_threads{app="WindowServer"}' not in v
    assert 'atlas_app_disk_wait_processes{app="WindowServer"}' not in v  # state unknown, not 0
    assert v['atlas_app_disk_wait_processes{app="zsh"}'] == 0
    assert v['atlas_app_resident_memory_bytes{app="zsh"}'] == 4 << 20
    assert v['atlas_process_read_errors_total{reason="access_denied"}'] == 2


def test_macos_process_unreadable_for_one_pass_is_not_counted_twice(tmp_path: Path) -> None:
    editor = FakeProc(pid=310, name="vim", exe="/usr/bin/vim", user_seconds=40.0, disk_written=1 << 20)
    table = FakeTable([editor])
    exporter = exporter_over(table)
    exporter.render_metrics()
    editor.fail["kinfo"] = OSError(12, "Cannot allocate memory")
    during = parse_exposition(normalised_exposition(exporter.render_metrics()[0]))
    del editor.fail["kinfo"]
    editor.user_seconds += 1.0
    after = parse_exposition(normalised_exposition(exporter.render_metrics()[0]))
    assert during['atlas_app_cpu_seconds_total{app="vim",mode="user"}'] == pytest.approx(40.0)
    assert after['atlas_app_cpu_seconds_total{app="vim",mode="user"}'] == pytest.approx(41.0)
    assert after['atlas_app_disk_written_bytes_total{app="vim"}'] == 1 << 20


def test_macos_failed_process_listing_fails_the_collector_and_keeps_the_totals(tmp_path: Path) -> None:
    editor = FakeProc(pid=310, name="vim", exe="/usr/bin/vim", user_seconds=40.0)
    table = FakeTable([editor])
    exporter = exporter_over(table)
    exporter.render_metrics()
    listing = table.pids

    def broken() -> list[int]:
        raise OSError(12, "Cannot allocate memory")

    table.pids = broken  # type: ignore[method-assign]
    during = parse_exposition(normalised_exposition(exporter.render_metrics()[0]))
    table.pids = listing  # type: ignore[method-assign]
    after = parse_exposition(normalised_exposition(exporter.render_metrics()[0]))
    assert during['atlas_scrape_collector_success{collector="process"}'] == 0
    assert after['atlas_scrape_collector_success{collector="process"}'] == 1
    assert after['atlas_app_cpu_seconds_total{app="vim",mode="user"}'] == pytest.approx(40.0)


def test_macos_parent_io_is_not_discounted_when_a_child_exits(tmp_path: Path) -> None:
    parent = FakeProc(pid=300, name="make", exe="/usr/bin/make", disk_read=0, disk_written=0)
    child = FakeProc(pid=301, name="cc", ppid=300, exe="/usr/bin/cc", disk_read=0, disk_written=8 << 20)
    table = FakeTable([parent, child])
    exporter = exporter_over(table)
    exporter.render_metrics()
    del table.procs[301]
    parent.disk_written += 4 << 20  # the parent's own writes, after the child exited
    v = parse_exposition(normalised_exposition(exporter.render_metrics()[0]))
    assert v['atlas_app_disk_written_bytes_total{app="cc"}'] == 8 << 20
    assert v['atlas_app_disk_written_bytes_total{app="make"}'] == 4 << 20  # today the child's credit eats it


def test_macos_csv_mirror_leaves_ops_cells_empty(tmp_path: Path) -> None:
    import csv

    table, _ = machine(tmp_path)
    path = tmp_path / "app_resources.csv"
    exporter = exporter_over(table, {"csv": {"enabled": True, "path": str(path), "interval_seconds": 3600}})
    mirror = next(s for s in exporter.sources if s.name == "csv")
    mirror.write_interval()  # primes
    second_pass(table)
    assert mirror.write_interval() > 0
    rows = {row["app_name"]: row for row in csv.DictReader(path.read_text().splitlines())}
    chrome = rows["Google_Chrome"]
    assert chrome["disk_read_ops"] == "" and chrome["disk_write_ops"] == ""  # not measurable on macOS
    assert float(chrome["cpu_percent"]) > 0 and chrome["threads"] == "50" and chrome["open_files"] == "125"
