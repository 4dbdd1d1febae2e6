"""The status page at `/`: its logic over scripted snapshots and counters (rates from the priming snapshot,
counts over the last hour, retired apps, the fold, escaping), and the real page in a headless Chromium:
its first view has rates, a real crash shows, and the columns sort in the browser."""

from __future__ import annotations

import html
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from atlas_exporter.exporter.status import MIN_RATE_SECONDS, StatusPage
from atlas_exporter.model import AppView, Snapshot, SourceStatus
from conftest import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
APP = "e2e-status-burner"
MARK = "atlas-e2e-status-marker"

BROWSER_MARKS = (
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)"),
    pytest.mark.skipif(sys.platform != "linux", reason="uses the Linux process source"),
)


def in_browser(test: Any) -> Any:
    """Marks a test that runs the real exporter and a headless Chromium."""
    for mark in BROWSER_MARKS:
        test = mark(test)
    return test
CRASHER = f"e2e-status-crasher-{os.getpid()}"
CRASHER_MARK = f"atlas-e2e-status-crasher-{os.getpid()}"


class Tables(HTMLParser):
    """Collects the text of every table cell, by table id, row by row; and the page title."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.title = ""
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="atlas-chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The exporter's status page, never rendered before the browser's first view: a CPU-burning process
    under a known app name, and an app that crashed once."""
    tmp = tmp_path_factory.mktemp("status")
    config = tmp / "atlas.yml"
    config.write_text(textwrap.dedent(f"""\
        apps:
          - name: {APP}
            cmdline: {MARK}
          - name: {CRASHER}
            cmdline: {CRASHER_MARK}
        """), encoding="utf-8")
    burner = subprocess.Popen(["sh", "-c", f'exec "$0" -c "while True: pass" {MARK}', sys.executable])
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "atlas_exporter", "--web.listen-address", f"127.0.0.1:{port}",
         "--config.file", str(config), "--no-collector.hang", "--log.level", "warn"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        def metrics(name: str) -> str | None:
            assert exporter.poll() is None, exporter.stderr.read().decode() if exporter.stderr else ""
            with urllib.request.urlopen(f"{url}metrics", timeout=5) as r:
                text = r.read().decode()
            return text if name in text else None

        wait_for(lambda: metrics(APP), timeout=30, interval=0.5, message=f"{APP} in /metrics")
        serving = time.monotonic()  # the priming sample is taken before the server answers
        crash = subprocess.run(["sh", "-c", 'exec "$0" -c "import os; os.abort()" "$1"', sys.executable,
                                CRASHER_MARK], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        assert crash.returncode == -signal.SIGABRT
        wait_for(lambda: metrics(f'atlas_app_crashes_total{{app="{CRASHER}"'), timeout=30, interval=0.5,
                 message=f"the crash of {CRASHER} in /metrics")
        # rates need MIN_RATE_SECONDS between the priming sample and the first view; on a fast, idle
        # machine all of the above can take less than that
        time.sleep(max(0.0, serving + MIN_RATE_SECONDS + 0.2 - time.monotonic()))
        yield url
    finally:
        for proc in (exporter, burner):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _dom(url: str) -> Tables:
    result = chromium("--virtual-time-budget=2000", "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    page = Tables()
    page.feed(result.stdout)
    return page


@in_browser
def test_status_page_renders_sources_and_a_running_app(page_url: str) -> None:
    # the first view of the page: the priming snapshot taken at start already gives rates
    page = _dom(page_url)
    assert page.title.strip() == "atlas-exporter"
    sources = page.tables["sources"]
    assert sources[0][:2] == ["source", "state"]
    assert len(sources) > 1 and all(row[1] in ("active", "off") for row in sources[1:])
    assert any(row[1] == "active" for row in sources[1:])
    header, *rows = page.tables["apps"]
    assert header[0] == "app"
    apps = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert APP in apps, f"{APP} is not on the page: {sorted(apps)}"
    burner = apps[APP]
    assert int(burner["processes"]) >= 1
    # a busy loop: some of one core (the machine may be busy with other work), never more than one;
    # its share of the host is that divided by the host's CPUs
    cpu = float(burner["CPU %"])
    assert 0 < cpu <= 105, burner
    assert abs(float(burner["CPU % of host"]) - cpu / (os.cpu_count() or 1)) <= 0.06
    assert float(burner["resident MiB"]) > 1
    # the app that crashed once, with no process left, is on the page with its one crash
    assert apps[CRASHER]["crashes 1 h"] == "1" and apps[CRASHER]["processes"] == "0"


@in_browser
@pytest.mark.parametrize(("fragment", "column", "descending"),
                         [("#sort=+app", "app", False), ("#sort=memory", "resident MiB", True)])
def test_status_page_sorts_in_the_browser(page_url: str, fragment: str, column: str, descending: bool) -> None:
    header, *rows = _dom(page_url + fragment).tables["apps"]
    i = header.index(column)
    if column == "app":
        values: list[Any] = [row[i] for row in rows]
        assert values == sorted(values, key=lambda v: (v.lower(), v)), values[:10]
        return
    filled = [float(row[i]) for row in rows if row[i]]
    assert filled == sorted(filled, reverse=descending), filled[:10]
    # empty cells (not measured) go last
    assert all(row[i] for row in rows[:len(filled)])


def _png_rows(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


@in_browser
def test_status_page_screenshot_is_not_blank(page_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "status.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1024,768", "--hide-scrollbars", page_url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, pixels = _png_rows(shot.read_bytes())
    assert (width, height) == (1024, 768)
    assert len(set(pixels)) > 8, "the screenshot is a blank page"


# ---------------------------------------------------------------- the page's logic, without a browser

def _page(snaps: list[Snapshot], counts: list[list[Metric]], clock: list[float], **kw: Any) -> StatusPage:
    """A page over scripted snapshots and counter families; `clock[0]` is the time now."""
    snap_iter = iter(snaps)
    count_iter = iter(counts)
    return StatusPage(lambda: next(snap_iter), lambda: [SourceStatus("procfs", True, "root")],
                      counters=lambda: next(count_iter), clock=lambda: clock[0], host_cpus=lambda: 4,
                      sample_seconds=3600 * 24, **kw)


def _families(crashes: dict[tuple[str, str], float], exits: dict[tuple[str, str], float] | None = None,
              hung: dict[str, float] | None = None) -> list[Metric]:
    c = CounterMetricFamily("atlas_app_crashes", "Crashes.", labels=["app", "reason"])
    for (app, reason), value in crashes.items():
        c.add_metric([app, reason], value)
    e = CounterMetricFamily("atlas_app_exits", "Exits.", labels=["app", "outcome"])
    for (app, outcome), value in (exits or {}).items():
        e.add_metric([app, outcome], value)
    h = GaugeMetricFamily("atlas_app_hung_processes", "Hung.", labels=["app"])
    for app, value in (hung or {}).items():
        h.add_metric([app], value)
    return [c, e, h]


def _snap(t: float, apps: dict[str, dict[str, Any]]) -> Snapshot:
    return Snapshot(wall_time=1.7e9 + t, monotonic=t, apps={name: AppView(name=name, **v) for name, v in apps.items()})


def _cells(html_text: str) -> dict[str, dict[str, str]]:
    page = Tables()
    page.feed(html_text)
    header, *rows = page.tables["apps"]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_first_view_has_rates_from_the_priming_snapshot() -> None:
    web = {"processes": 2, "threads": 5, "resident_bytes": 64 << 20, "open_fds": 9}
    first = _snap(100.0, {"web": {**web, "cpu_user_seconds_total": 10.0, "cpu_system_seconds_total": 2.0,
                                  "read_bytes_total": 0.0, "written_bytes_total": 1 << 20,
                                  "network_receive_bytes_total": 1000.0, "network_transmit_bytes_total": 0.0}})
    second = _snap(104.0, {"web": {**web, "cpu_user_seconds_total": 11.5, "cpu_system_seconds_total": 2.5,
                                   "read_bytes_total": 4096.0, "written_bytes_total": 5 << 20,
                                   "network_receive_bytes_total": 5000.0, "network_transmit_bytes_total": 0.0}})
    clock = [100.0]
    page = _page([first, second], [_families({}), _families({})], clock)
    page.start()
    page.stop()
    clock[0] = 104.0
    cells = _cells(page.render())["web"]
    assert cells["CPU %"] == "50.0"  # 2 CPU-seconds in 4 s
    assert cells["CPU % of host"] == "12.5"  # of 4 CPUs
    assert cells["disk read/s"] == "1.0 KiB" and cells["disk write/s"] == "1.0 MiB"
    assert cells["net received/s"] == "1000 B" and cells["net sent/s"] == "0 B"
    assert cells["processes"] == "2" and cells["resident MiB"] == "64.0" and cells["open fds"] == "9"
    # measured and none is 0; not measured here (no hang reports family) is an empty cell
    assert cells["crashes 1 h"] == "0" and cells["hung now"] == "0" and cells["hangs 1 h"] == ""


def test_counts_are_over_the_last_hour_and_include_retired_apps() -> None:
    apps = {"web": {"processes": 1}, "cron": {"processes": 1}}
    snaps = [_snap(t, apps if t < 3000 else {"web": {"processes": 1}}) for t in (0.0, 1800.0, 3700.0)]
    counts = [
        _families({("web", "SIGSEGV"): 2}, {("cron", "success"): 10}),
        _families({("web", "SIGSEGV"): 3, ("cron", "SIGABRT"): 1}, {("cron", "success"): 20, ("cron", "error"): 1}),
        _families({("web", "SIGSEGV"): 5, ("web", "oom_kill"): 1, ("cron", "SIGABRT"): 1},
                  {("cron", "success"): 30, ("cron", "error"): 2, ("cron", "signal"): 1}, {"web": 1}),
    ]
    clock = [0.0]
    page = _page(snaps, counts, clock)
    page.sample()
    clock[0] = 1800.0
    page.sample()
    clock[0] = 3700.0
    text = page.render()
    cells = _cells(text)
    # since the sample an hour or more ago (t=0): web 5 + 1 - 2 crashes; cron retired but crashed
    assert cells["web"]["crashes 1 h"] == "4" and cells["web"]["hung now"] == "1"
    assert cells["cron"]["crashes 1 h"] == "1" and cells["cron"]["processes"] == "0"
    assert (cells["cron"]["exits ok 1 h"], cells["cron"]["exits error 1 h"], cells["cron"]["exits signal 1 h"]) == (
        "20", "2", "1")
    assert cells["web"]["exits ok 1 h"] == ""  # not measured: empty, not 0
    assert "counts over the last hour" in text


def test_fold_row_and_cap_and_escaping() -> None:
    evil = '<script>alert("x")</script>'
    snaps = [_snap(0.0, {"other": {"processes": 40}, evil: {"processes": 1}}),
             _snap(2.0, {"other": {"processes": 40}, evil: {"processes": 1}})]
    page = _page(snaps, [_families({}), _families({})], [0.0], folded=lambda: (17, 50))
    page.sample()
    text = page.render()
    assert 'max_apps 50: 17 app names folded into "other"' in text
    assert '<tr class="fold"' in text
    assert evil not in text and html.escape(evil) in text
    assert set(_cells(text)) == {"other", evil}


def test_a_dead_loop_shows_its_reason_on_the_page_and_fails_its_collector() -> None:
    """A sub-collector whose background loop ended on its own: its source row is off with the loop's
    reason, and /metrics reports success 0 and the source inactive."""
    from test_loop import LoopingSource

    from atlas_exporter.config import parse_config
    from atlas_exporter.exporter.runtime import Exporter
    from conftest import parse_exposition

    def die() -> None:
        raise SystemExit("unrecoverable")

    dying = LoopingSource(die)
    exporter = Exporter(parse_config({}), enabled={"process"}, sources=[dying])
    exporter.start()
    try:
        wait_for(lambda: dying.loops[0].dead, timeout=5, message="the loop to die")
        tables = Tables()
        tables.feed(exporter.render_status())
        rows = {row[0]: row for row in tables.tables["sources"][1:]}
        _, state, privilege, why = rows["fake-events"]
        assert state == "off" and privilege == "root"
        assert "atlas-fake-watcher has ended" in why and "unrecoverable" in why
        values = parse_exposition(exporter.render_metrics()[0].decode())
        assert values['atlas_scrape_collector_success{collector="fake"}'] == 0
        assert values['atlas_scrape_collector_success{collector="process"}'] == 1
        assert values['atlas_source_active{privilege="root",source="fake-events"}'] == 0
    finally:
        exporter.stop()


def test_the_status_page_says_when_its_own_sampler_has_ended() -> None:
    from atlas_exporter.config import parse_config
    from atlas_exporter.exporter.runtime import Exporter

    exporter = Exporter(parse_config({}), enabled={"process"}, sources=[])
    page = exporter.status_page
    assert 'id="stale"' not in exporter.render_status()

    def die() -> None:
        raise SystemExit("sampler gave up")

    page.loop.step = die
    page.loop.immediate = True
    page.loop.start()
    try:
        wait_for(lambda: page.loop.dead, timeout=5, message="the sampler loop to die")
        html = exporter.render_status()
        assert 'id="stale"' in html and "atlas-status-sampler has ended" in html and "sampler gave up" in html
    finally:
        page.loop.stop()
