"""End to end: the real exporter, scraped every second by a real Prometheus that loads the shipped rules.

Every dashboard query (Grafana variables substituted) is run through Prometheus's HTTP API and
must give data wherever the metrics it reads exist here. A process that keeps dying of SIGSEGV
must raise the crash alert, and a vfork parent stuck in D the hang alert (pending or firing).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_grafana_dashboards import load_dashboards, metric_names, substitute

from conftest import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
RECORDING = REPO / "deploy" / "prometheus" / "recording.yml"
CRASHER_APP = "e2e-crasher"
HANGER_APP = "e2e-hanger"
CRASHER_MARK = "atlas-e2e-crasher-marker"
HANGER_COMM = "atlas-e2e-hang"

VFORK_C = r"""
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
/* The parent waits in D (vfork) while the child sleeps without calling exec. */
int main(int argc, char **argv) {
    unsigned seconds = argc > 1 ? (unsigned)atoi(argv[1]) : 60;
    pid_t pid = vfork();
    if (pid == 0) { sleep(seconds); _exit(0); }
    if (pid < 0) return 1;
    waitpid(pid, NULL, 0);
    return 0;
}
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus is not installed (Debian package)"),
    pytest.mark.skipif(sys.platform != "linux", reason="Linux end-to-end test"),
]


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """Terminate a process (or its whole session) and reap it."""
    if proc.poll() is None:
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.terminate()
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=10)


def no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Prom:
    """A tiny client of Prometheus's HTTP API."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        reply = http_json(f"{self.base}{path}?{urllib.parse.urlencode(params)}")
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=step)["result"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Exporter, crash loop, vfork hanger and Prometheus, all on loopback; everything is stopped after."""
    tmp = tmp_path_factory.mktemp("e2e")
    procs: list[tuple[subprocess.Popen[bytes], bool]] = []
    hanger_bin: Path | None = None
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        source = tmp / "vfork.c"
        source.write_text(VFORK_C, encoding="utf-8")
        hanger_bin = tmp / HANGER_COMM
        subprocess.run([cc, "-O0", "-o", str(hanger_bin), str(source)], check=True, timeout=60)

    config = tmp / "atlas.yml"
    config.write_text(textwrap.dedent(f"""\
        apps:
          - name: {CRASHER_APP}
            cmdline: {CRASHER_MARK}
          - name: {HANGER_APP}
            comm: ^{HANGER_COMM}$
        hang:
          threshold_seconds: 2
          check_interval_seconds: 0.5
        """), encoding="utf-8")
    exporter_port = free_port()
    exporter_log = (tmp / "exporter.log").open("wb")
    try:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "atlas_exporter", "--web.listen-address", f"127.0.0.1:{exporter_port}",
             "--config.file", str(config), "--log.level", "warn"],
            cwd=REPO, stdout=exporter_log, stderr=subprocess.STDOUT)
        procs.append((exporter, False))

        def exporter_up() -> bool:
            assert exporter.poll() is None, (tmp / "exporter.log").read_text()
            with urllib.request.urlopen(f"http://127.0.0.1:{exporter_port}/metrics", timeout=5) as r:
                return r.status == 200

        wait_for(exporter_up, timeout=30, message="the exporter to serve /metrics")

        # A crash loop under a known name: each child sleeps briefly, then dies of SIGSEGV.
        child = ("import os, signal, time; time.sleep(0.3); os.kill(os.getpid(), signal.SIGSEGV)")
        loop = (f"import subprocess, sys, time\n"
                f"while True:\n"
                f"    subprocess.call([sys.executable, '-c', {child!r}, {CRASHER_MARK!r}])\n"
                f"    time.sleep(0.2)\n")
        crasher = subprocess.Popen([sys.executable, "-c", loop], start_new_session=True, preexec_fn=no_core_dumps,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((crasher, True))
        if hanger_bin is not None:
            hanger = subprocess.Popen([str(hanger_bin), "120"], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append((hanger, True))

        # The shipped rules, evaluated every second (group intervals dropped for the test).
        rule_files = []
        for path in (ALERTS, RECORDING):
            if path.exists():
                rules = yaml.safe_load(path.read_text(encoding="utf-8"))
                for group in rules["groups"]:
                    group.pop("interval", None)
                copy = tmp / path.name
                copy.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
                rule_files.append(str(copy))
        prom_port = free_port()
        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": [{"job_name": "atlas-exporter",
                                "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
        }), encoding="utf-8")
        prom_log = (tmp / "prometheus.log").open("wb")
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        procs.append((prometheus, False))
        prom = Prom(f"http://127.0.0.1:{prom_port}")

        def prometheus_ready() -> bool:
            assert prometheus.poll() is None, (tmp / "prometheus.log").read_text()
            with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=5) as r:
                return r.status == 200

        wait_for(prometheus_ready, timeout=30, message="Prometheus to be ready")
        start = time.time()
        yield {"prom": prom, "instance": f"127.0.0.1:{exporter_port}", "start": start, "tmp": tmp,
               "hanger": hanger_bin is not None, "rules": rule_files}
    finally:
        for proc, group in reversed(procs):
            stop(proc, group)
        exporter_log.close()


def wait_for_series(prom: Prom, expr: str, timeout: float = 40.0) -> list[dict[str, Any]]:
    return wait_for(lambda: prom.query(expr), timeout=timeout, interval=0.5, message=f"data for {expr}")


def test_prometheus_scrapes_the_exporter(stack: dict[str, Any]) -> None:
    prom: Prom = stack["prom"]
    up = wait_for_series(prom, f'up{{instance="{stack["instance"]}"}} == 1')
    assert up[0]["metric"]["job"] == "atlas-exporter"
    targets = prom.get("/api/v1/targets")["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    # two scrapes at least, so that rates have data
    wait_for_series(prom, 'count_over_time(atlas_exporter_build_info[1m]) >= 3')


def _series_apps(prom: Prom, metric: str, instance: str) -> set[str]:
    return {r["metric"].get("app", "") for r in prom.query(f'{metric}{{instance="{instance}"}}')}


def test_every_dashboard_query_runs_and_has_data(stack: dict[str, Any]) -> None:
    prom: Prom = stack["prom"]
    instance = stack["instance"]
    wait_for_series(prom, 'count_over_time(atlas_exporter_build_info[1m]) >= 3')
    wait_for_series(prom, f'atlas_app_crashes_total{{app="{CRASHER_APP}"}}')
    if stack["hanger"]:
        wait_for_series(prom, f'atlas_app_hangs_total{{app="{HANGER_APP}"}}')
    # a few more scrapes after the first crash, so that increase() and changes() see it move
    time.sleep(3)
    # what exists now decides which queries must have data; the range queries end after this
    present = {m: _series_apps(prom, m, instance) for m in prom.get("/api/v1/label/__name__/values")
               if m.startswith("atlas_") or m in ("up", "scrape_duration_seconds")}
    end = time.time()
    start = stack["start"]
    window = f"{int(end - start) + 60}s"
    # apps that exercise different metrics: the crash loop, the hanger, and one with TCP traffic
    network_apps = present.get("atlas_app_network_receive_bytes_total", set())
    apps = [CRASHER_APP] + ([HANGER_APP] if stack["hanger"] else [])
    if network_apps:
        apps.append(sorted(network_apps)[0])
    # as Grafana formats a regex variable inside a PromQL string: regex-escaped, backslashes doubled
    regex_instance = re.escape(instance).replace("\\", "\\\\")
    checked = 0
    missing: list[str] = []
    for name, dashboard in load_dashboards().items():
        panels = [(f"panel '{p['title']}' {t['refId']}", t["expr"], t.get("instant", False))
                  for p in dashboard["panels"] for t in p.get("targets", [])]
        panels += [(f"annotation '{a['name']}'", a["expr"], False)
                   for a in dashboard["annotations"]["list"] if "expr" in a]
        for where, raw, instant in panels:
            for app in (apps if "$app" in raw else [None]):
                values = {"$instance": regex_instance, "$__rate_interval": "5s", "$__interval": "1s",
                          "$__range": window}
                if app is not None:
                    values["$app"] = app
                expr = substitute(raw, values)
                try:
                    result = prom.query(expr) if instant else prom.query_range(expr, start, end)
                except urllib.error.HTTPError as err:
                    pytest.fail(f"{name} {where}: Prometheus rejected the query: {err.read().decode()}\n{expr}")
                checked += 1
                metrics = metric_names(raw)
                available = all(present.get(m) and (app is None or app in present[m] or not m.startswith("atlas_app"))
                                for m in metrics)
                if available and not result:
                    missing.append(f"{name} {where} app={app}: {expr}")
    assert checked >= 60
    assert not missing, "queries without data although their metrics exist:\n" + "\n".join(missing)


def _alert_names(path: str, metrics: tuple[str, ...]) -> set[str]:
    rules = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return {r["alert"] for g in rules["groups"] for r in g["rules"]
            if "alert" in r and any(m in r["expr"] for m in metrics)}


def _wait_for_alert(prom: Prom, names: set[str], app: str, timeout: float = 40.0) -> dict[str, Any]:
    def active() -> dict[str, Any] | None:
        for alert in prom.get("/api/v1/alerts")["alerts"]:
            if (alert["labels"].get("alertname") in names and alert["labels"].get("app") == app
                    and alert["state"] in ("pending", "firing")):
                return alert
        return None

    return wait_for(active, timeout=timeout, interval=0.5, message=f"an alert of {sorted(names)} for {app}")


def test_crash_loop_raises_the_crash_alert(stack: dict[str, Any]) -> None:
    if not ALERTS.exists():
        pytest.skip("deploy/prometheus/alerts.yml is not there yet")
    names = _alert_names(str(stack["tmp"] / "alerts.yml"), ("atlas_app_crashes_total",))
    assert names, "no alert rule reads atlas_app_crashes_total"
    crashes = wait_for_series(stack["prom"], f'atlas_app_crashes_total{{app="{CRASHER_APP}",reason="SIGSEGV"}}')
    assert float(crashes[0]["value"][1]) >= 1
    alert = _wait_for_alert(stack["prom"], names, CRASHER_APP)
    assert alert["labels"]["app"] == CRASHER_APP


def test_hung_vfork_parent_raises_the_hang_alert(stack: dict[str, Any]) -> None:
    if not ALERTS.exists():
        pytest.skip("deploy/prometheus/alerts.yml is not there yet")
    if not stack["hanger"]:
        pytest.skip("no C compiler to build the vfork helper")
    names = _alert_names(str(stack["tmp"] / "alerts.yml"), ("atlas_app_hung_processes", "atlas_app_hangs_total"))
    assert names, "no alert rule reads atlas_app_hung_processes or atlas_app_hangs_total"
    hung = wait_for_series(stack["prom"], f'atlas_app_hung_processes{{app="{HANGER_APP}"}} >= 1')
    assert float(hung[0]["value"][1]) == 1
    alert = _wait_for_alert(stack["prom"], names, HANGER_APP)
    assert alert["labels"]["app"] == HANGER_APP
