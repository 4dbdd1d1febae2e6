"""The status page at `/`, rendered by a real headless Chromium: it shows the data sources and a running app."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
APP = "e2e-status-burner"
MARK = "atlas-e2e-status-marker"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)"),
    pytest.mark.skipif(sys.platform != "linux", reason="uses the Linux process source"),
]


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
    """The exporter's status page, with a CPU-burning process under a known app name."""
    tmp = tmp_path_factory.mktemp("status")
    config = tmp / "atlas.yml"
    config.write_text(textwrap.dedent(f"""\
        apps:
          - name: {APP}
            cmdline: {MARK}
        """), encoding="utf-8")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass", MARK])
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "atlas_exporter", "--web.listen-address", f"127.0.0.1:{port}",
         "--config.file", str(config), "--no-collector.crash", "--no-collector.hang", "--log.level", "warn"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        def shows_app() -> bool:
            assert exporter.poll() is None, exporter.stderr.read().decode() if exporter.stderr else ""
            with urllib.request.urlopen(url, timeout=5) as r:
                return APP in r.read().decode()

        wait_for(shows_app, timeout=30, interval=0.5, message=f"{APP} on the status page")
        yield url
    finally:
        for proc in (exporter, burner):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_status_page_renders_sources_and_a_running_app(page_url: str) -> None:
    result = chromium("--dump-dom", page_url)
    assert result.returncode == 0, result.stderr[-2000:]
    page = Tables()
    page.feed(result.stdout)
    assert page.title.strip() == "atlas-exporter"
    sources = page.tables["sources"]
    assert sources[0][:2] == ["source", "state"]
    assert len(sources) > 1 and all(row[1] in ("active", "off") for row in sources[1:])
    assert any(row[1] == "active" for row in sources[1:])
    apps = page.tables["apps"]
    assert apps[0][0] == "app"
    burner = [row for row in apps[1:] if row[0] == APP]
    assert burner, f"{APP} is not among the top apps: {[row[0] for row in apps[1:]]}"
    assert int(burner[0][1]) >= 1  # processes


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


def test_status_page_screenshot_is_not_blank(page_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "status.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1024,768", "--hide-scrollbars", page_url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, pixels = _png_rows(shot.read_bytes())
    assert (width, height) == (1024, 768)
    assert len(set(pixels)) > 8, "the screenshot is a blank page"
