"""The exporter as a real server: promtool on live /metrics, the status page, isolation of a
failing collector, and an unprivileged run as `nobody`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from atlas_exporter.model import Snapshot, SourceStatus
from atlas_exporter.web.server import start_server
from conftest import REPO, free_port, parse_exposition, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
PROMTOOL = shutil.which("promtool")


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=20) as r:
        return r.status, r.read().decode()


@contextmanager
def running(argv_prefix: list[str], *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([*argv_prefix, "-m", "atlas_exporter", "--web.listen-address", f"127.0.0.1:{port}",
                             *args], cwd="/", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and get(base + "/metrics")[0] == 200, timeout=30,
                 message="the exporter to serve")
        yield base
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err


def test_live_metrics_pass_promtool_and_status_page_renders() -> None:
    assert PROMTOOL, "promtool is not installed (Debian package prometheus)"
    with running([sys.executable], env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}) as base:
        status, body = get(base + "/metrics")
        assert status == 200
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        values = parse_exposition(body)
        for collector in ("process", "network", "crash", "hang"):
            assert values[f'atlas_scrape_collector_success{{collector="{collector}"}}'] == 1
        assert values['atlas_app_processes{app="atlas_exporter"}'] >= 1
        status, page = get(base + "/")
        assert status == 200
        assert "atlas-exporter" in page and "procfs" in page and "atlas_exporter" in page


class Broken:
    name = "broken"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def statuses(self) -> list[SourceStatus]:
        return [SourceStatus(name="broken", active=True)]

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        yield GaugeMetricFamily("atlas_half_written", "Never reaches the output.", value=1)
        raise OSError("the source fell over")


def test_failing_collector_is_isolated_and_scrape_answers_200() -> None:
    exporter = Exporter(parse_config({}), enabled={"process"}, sources=[Broken()])
    server = start_server("127.0.0.1:0", "/metrics", exporter.render_metrics, exporter.render_status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.address[:2]
        status, body = get(f"http://{host}:{port}/metrics")
        assert status == 200
        values = parse_exposition(body)
        assert values['atlas_scrape_collector_success{collector="broken"}'] == 0
        assert values['atlas_scrape_collector_success{collector="process"}'] == 1
        assert "atlas_half_written" not in body
        assert any(k.startswith("atlas_app_processes{") for k in values)
    finally:
        server.shutdown()


def test_unprivileged_run_serves_and_marks_what_it_cannot_read(nobody_python: tuple[list[str], dict]) -> None:
    prefix, env = nobody_python
    with running(prefix, env=env) as base:
        _, body = get(base + "/metrics")
        values = parse_exposition(body)
        assert values['atlas_source_active{privilege="user",source="procfs"}'] == 1
        assert values['atlas_process_read_errors_total{reason="access_denied"}'] > 0
        assert values['atlas_scrape_collector_success{collector="process"}'] == 1
        # root-owned processes: gauges present, their disk counters absent (not 0)
        root_apps = [k.split('"')[1] for k in values if k.startswith("atlas_app_processes{")]
        assert "pytest" in root_apps or "python3" in root_apps or len(root_apps) > 2
        readable = {k.split('"')[1] for k in values if k.startswith("atlas_app_disk_read_bytes_total{")}
        assert "atlas_exporter" in readable  # its own process is readable
        assert set(root_apps) - readable, "some root apps should have no disk series"
        # stat, status and limits are world-readable: faults, switches, sizes and states for every app;
        # the fd-limit ratio needs the fd count, so only apps whose fds could be read have one
        live_apps = {k.split('"')[1] for k, v in values.items() if k.startswith("atlas_app_processes{") and v > 0}
        for name in ("atlas_app_minor_page_faults_total{", "atlas_app_virtual_memory_bytes{",
                     "atlas_app_swap_bytes{", "atlas_app_process_states{", "atlas_app_context_switches_total{"):
            assert {k.split('"')[1] for k in values if k.startswith(name)} >= live_apps, name
        ratio = {k.split('"')[1] for k in values if k.startswith("atlas_app_open_fds_limit_ratio{")}
        fds = {k.split('"')[1] for k in values if k.startswith("atlas_app_open_fds{")}
        assert "atlas_exporter" in ratio and ratio <= fds
        _, page = get(base + "/")
        assert "unprivileged" in page
