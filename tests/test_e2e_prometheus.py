"""End to end: the real exporter, scraped every second by a real Prometheus that loads the shipped rules,
and by a Prometheus in agent mode that remote-writes to a central Prometheus running the recording rules.

Every dashboard query (Grafana variables substituted) is run through Prometheus's HTTP API: the raw
dashboards on the scraping Prometheus, the fleet dashboard on the central one. None may fail, and each
must give data wherever the series it reads exist here. One app that crashes exactly once must read as
one crash on every crash panel of every dashboard. A process that keeps dying of SIGSEGV must raise the
crash alert, and a vfork parent stuck in D the hang alert (pending or firing).
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
from test_grafana_dashboards import all_panels, load_dashboards, metric_names, substitute

from conftest import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
RECORDING = REPO / "deploy" / "prometheus" / "recording.yml"
# Names unique to this run: other runs of this test on the same machine must not be counted here.
CRASHER_APP = f"e2e-crasher-{os.getpid()}"
HANGER_APP = f"e2e-hanger-{os.getpid()}"
CRASHER_MARK = f"atlas-e2e-crasher-marker-{os.getpid()}"
ONE_CRASH_APP = f"e2e-onecrash-{os.getpid()}"
ONE_CRASH_MARK = f"atlas-e2e-onecrash-marker-{os.getpid()}"
FAILER_APP = f"e2e-failer-{os.getpid()}"
FAILER_MARK = f"atlas-e2e-failer-marker-{os.getpid()}"
FLEET_DASHBOARD = "atlas-fleet.json"
CRASH_COUNTERS = ("atlas_app_crashes_total", "instance_app_reason:atlas_app_crashes_total:sum",
                  "instance_app:atlas_app_crashes:increase1h", "app:atlas_app_crashes:increase1h")
HANGER_COMM = f"e2ehang{os.getpid()}"[:15]  # a comm has 15 characters at most

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


def _rules_copy(tmp: Path, prefix: str) -> list[str]:
    """The shipped rule files, evaluated every second (group intervals dropped for the test)."""
    out = []
    for path in (ALERTS, RECORDING):
        if path.exists():
            rules = yaml.safe_load(path.read_text(encoding="utf-8"))
            for group in rules["groups"]:
                group.pop("interval", None)
            copy = tmp / f"{prefix}-{path.name}"
            copy.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
            out.append(str(copy))
    return out


def _agent_flag() -> str:
    """Prometheus 3 has `--agent`; 2.x (Debian 12 ships 2.42) has `--enable-feature=agent`."""
    usage = subprocess.run([PROMETHEUS, "--help"], capture_output=True, text=True, timeout=30)
    return "--agent" if re.search(r"^\s+--agent\b", usage.stdout + usage.stderr, re.M) else "--enable-feature=agent"


def _start_prometheus(tmp: Path, name: str, config: dict[str, Any],
                      *flags: str) -> tuple[subprocess.Popen[bytes], Prom]:
    port = free_port()
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = (tmp / f"{name}.log").open("wb")
    storage = (f"--storage.agent.path={tmp / (name + '-data')}" if {"--agent", "--enable-feature=agent"} & set(flags)
               else f"--storage.tsdb.path={tmp / (name + '-data')}")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={path}", storage, f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn", *flags], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, Prom(f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Exporter, crash loop, one crash, a failing app, vfork hanger, Prometheus, and agent + central."""
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
          - name: {ONE_CRASH_APP}
            cmdline: {ONE_CRASH_MARK}
          - name: {FAILER_APP}
            cmdline: {FAILER_MARK}
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
        # A failing app: a short-lived child exits with code 3 every second.
        fail_loop = (f"import subprocess, sys, time\n"
                     f"while True:\n"
                     f"    subprocess.call([sys.executable, '-c', 'raise SystemExit(3)', {FAILER_MARK!r}])\n"
                     f"    time.sleep(1)\n")
        failer = subprocess.Popen([sys.executable, "-c", fail_loop], start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((failer, True))
        if hanger_bin is not None:
            hanger = subprocess.Popen([str(hanger_bin), "120"], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append((hanger, True))

        target = {"job_name": "atlas-exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
        # Beside it, what must page: an exporter that is down (nothing listens on its port) and one with
        # crash and hang detection switched off.
        dead_port = free_port()
        blind_port = free_port()
        blind = subprocess.Popen(
            [sys.executable, "-m", "atlas_exporter", "--web.listen-address", f"127.0.0.1:{blind_port}",
             "--no-collector.process", "--no-collector.crash", "--no-collector.hang", "--no-collector.network",
             "--log.level", "warn"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((blind, False))
        scraped = {"job_name": "atlas-exporter", "static_configs": [{"targets": [
            f"127.0.0.1:{exporter_port}", f"127.0.0.1:{dead_port}", f"127.0.0.1:{blind_port}"]}]}
        timing = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        prometheus, prom = _start_prometheus(tmp, "prometheus", {
            "global": timing, "rule_files": _rules_copy(tmp, "scraper"), "scrape_configs": [scraped]})
        procs.append((prometheus, False))
        # The fleet: an agent scrapes and remote-writes every raw series to a central Prometheus,
        # which runs the recording and alert rules.
        central, central_prom = _start_prometheus(tmp, "central", {
            "global": {"evaluation_interval": "1s"}, "rule_files": _rules_copy(tmp, "central")},
            "--web.enable-remote-write-receiver")
        procs.append((central, False))
        agent, agent_prom = _start_prometheus(tmp, "agent", {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [target],
            "remote_write": [{"url": f"{central_prom.base}/api/v1/write",
                              "queue_config": {"batch_send_deadline": "1s", "min_backoff": "100ms"}}]},
            _agent_flag())
        procs.append((agent, False))

        for proc, name, client in ((prometheus, "prometheus", prom), (central, "central", central_prom),
                                   (agent, "agent", agent_prom)):
            def ready(proc: subprocess.Popen[bytes] = proc, name: str = name, client: Prom = client) -> bool:
                assert proc.poll() is None, (tmp / f"{name}.log").read_text()
                with urllib.request.urlopen(f"{client.base}/-/ready", timeout=5) as r:
                    return r.status == 200

            wait_for(ready, timeout=30, message=f"{name} to be ready")
        start = time.time()
        # The one crash happens once both stores have seen the exporter for a few scrapes.
        for client in (prom, central_prom):
            wait_for_series(client, 'count_over_time(atlas_exporter_build_info[1m]) >= 3')
        one = subprocess.Popen(["sh", "-c", 'exec "$0" -c "import os, signal, time; time.sleep(1.5); '
                                'os.kill(os.getpid(), signal.SIGSEGV)" "$1"', sys.executable, ONE_CRASH_MARK],
                               preexec_fn=no_core_dumps, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert one.wait(timeout=30) == -signal.SIGSEGV
        crashed_at = time.time()
        yield {"prom": prom, "central": central_prom, "agent": agent_prom, "instance": f"127.0.0.1:{exporter_port}",
               "dead": f"127.0.0.1:{dead_port}", "blind": f"127.0.0.1:{blind_port}", "start": start,
               "tmp": tmp, "hanger": hanger_bin is not None, "crashed_at": crashed_at}
    finally:
        for proc, group in reversed(procs):
            stop(proc, group)
        exporter_log.close()


def wait_for_series(prom: Prom, expr: str, timeout: float = 90.0) -> list[dict[str, Any]]:
    return wait_for(lambda: prom.query(expr), timeout=timeout, interval=0.5, message=f"data for {expr}")


def test_prometheus_scrapes_the_exporter(stack: dict[str, Any]) -> None:
    prom: Prom = stack["prom"]
    up = wait_for_series(prom, f'up{{instance="{stack["instance"]}"}} == 1')
    assert up[0]["metric"]["job"] == "atlas-exporter"
    targets = {t["labels"]["instance"]: t["health"] for t in prom.get("/api/v1/targets")["activeTargets"]}
    assert targets[stack["instance"]] == "up", targets
    # two scrapes at least, so that rates have data
    wait_for_series(prom, 'count_over_time(atlas_exporter_build_info[1m]) >= 3')
    # what CPU as % of the host divides by
    cpus = wait_for_series(prom, f'atlas_host_cpus{{instance="{stack["instance"]}"}}')
    assert float(cpus[0]["value"][1]) == os.cpu_count()


def test_the_central_store_is_fed_by_an_agent(stack: dict[str, Any]) -> None:
    """The agent stores nothing queryable; the central Prometheus has the exporter's series through it,
    and the recorded series it computes itself."""
    with pytest.raises(urllib.error.HTTPError):
        stack["agent"].query("up")
    central: Prom = stack["central"]
    up = wait_for_series(central, f'up{{instance="{stack["instance"]}"}} == 1')
    assert up[0]["metric"]["job"] == "atlas-exporter"
    assert central.get("/api/v1/targets")["activeTargets"] == []  # it scrapes nothing itself
    wait_for_series(central, f'instance:atlas_exporter_build_info:count{{instance="{stack["instance"]}"}}')
    wait_for_series(central, "app:atlas_app_cpu_seconds:rate5m")


SELECTOR = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(\{[^}]*\})?(?=\s*(\[|\)|$|\s|\*|/|\+|-|>|<|=|!|offset|@))")


def selectors(expr: str) -> list[str]:
    """The series selectors of an expression (metric name and label matchers), functions left out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0).replace("(", "\0").replace(")", "\1"), expr)
    out = []
    for match in SELECTOR.finditer(text):
        name, matchers = match.group(1), match.group(2) or ""
        if name in metric_names(name + matchers):
            out.append((name + matchers).replace("\0", "(").replace("\1", ")"))
    return out


def restrict(expr: str, metrics: tuple[str, ...], app: str) -> str:
    """The expression with every selector of `metrics` limited to one app."""
    for metric in metrics:
        def limited(m: re.Match[str], metric: str = metric) -> str:
            return f'{metric}{{app="{app}", ' if m.group(1) else f'{metric}{{app="{app}"}}'

        expr = re.sub(rf"(?<![\w:]){re.escape(metric)}(?![\w:])(\{{)?", limited, expr)
    return expr.replace(", }", "}")


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str, bool, str | None]]:
    """(where, expr, instant, annotation step) for every panel target and annotation."""
    out = [(f"panel '{p['title']}' {t['refId']}", t["expr"], t.get("instant", False), None)
           for p in all_panels(dashboard) for t in p.get("targets", [])]
    out += [(f"annotation '{a['name']}'", a["expr"], False, a.get("step"))
            for a in dashboard["annotations"]["list"] if "expr" in a]
    return out


def _values(instance: str, window: str, app: str | None) -> dict[str, str]:
    # as Grafana formats a regex variable inside a PromQL string: regex-escaped, backslashes doubled
    values = {"$job": "atlas-exporter", "$instance": re.escape(instance).replace("\\", "\\\\"),
              "$__rate_interval": "15s", "$__interval": "1s", "$__range": window}
    if app is not None:
        values["$app"] = app
    return values


def _settle(stack: dict[str, Any]) -> None:
    """Wait until both stores have the crash loop's, the one crash's and the hanger's series."""
    for client in (stack["prom"], stack["central"]):
        wait_for_series(client, f'atlas_app_crashes_total{{app="{CRASHER_APP}"}}')
        wait_for_series(client, f'atlas_app_crashes_total{{app="{ONE_CRASH_APP}"}}')
        if stack["hanger"]:
            wait_for_series(client, f'atlas_app_hangs_total{{app="{HANGER_APP}"}}')
    wait_for_series(stack["central"], f'instance_app_reason:atlas_app_crashes_total:sum{{app="{ONE_CRASH_APP}"}}')
    # a few more scrapes and evaluations after the first crash, so that counts and rates see it
    time.sleep(3)


def _run_all(prom: Prom, dashboards: dict[str, dict[str, Any]], stack: dict[str, Any], apps: list[str],
             start: float, end: float) -> tuple[int, list[str]]:
    window = f"{int(end - start) + 60}s"
    checked = 0
    missing: list[str] = []
    exists: dict[str, bool] = {}
    for name, dashboard in dashboards.items():
        for where, raw, instant, step in _queries(dashboard):
            for app in (apps if "$app" in raw else [None]):
                expr = substitute(raw, _values(stack["instance"], window, app))
                try:
                    result = prom.query(expr) if instant else prom.query_range(expr, start, end, step or "1s")
                except urllib.error.HTTPError as err:
                    pytest.fail(f"{name} {where}: Prometheus rejected the query: {err.read().decode()}\n{expr}")
                checked += 1
                for sel in selectors(expr):
                    if sel not in exists:
                        exists[sel] = bool(prom.query(f"count(last_over_time({sel}[{window}]))"))
                if all(exists[sel] for sel in selectors(expr)) and not result:
                    missing.append(f"{name} {where} app={app}: {expr}")
    return checked, missing


def test_every_dashboard_query_runs_and_has_data(stack: dict[str, Any]) -> None:
    """Raw dashboards on the scraping Prometheus, the fleet dashboard on the central one behind the agent."""
    _settle(stack)
    prom: Prom = stack["prom"]
    end = time.time()
    network_apps = {r["metric"]["app"] for r in prom.query(
        f'atlas_app_network_receive_bytes_total{{instance="{stack["instance"]}"}}')}
    # apps that exercise different metrics: the crash loop, the hanger, and one with TCP traffic
    apps = [CRASHER_APP] + ([HANGER_APP] if stack["hanger"] else []) + sorted(network_apps)[:1]
    dashboards = load_dashboards()
    raw = {k: v for k, v in dashboards.items() if k != FLEET_DASHBOARD}
    checked, missing = _run_all(prom, raw, stack, apps, stack["start"], end)
    fleet_checked, fleet_missing = _run_all(stack["central"], {FLEET_DASHBOARD: dashboards[FLEET_DASHBOARD]},
                                            stack, apps, stack["start"], end)
    assert checked >= 100 and fleet_checked >= 20
    missing += fleet_missing
    assert not missing, "queries without data although their series exist:\n" + "\n".join(missing)


def test_one_crash_is_one_crash_on_every_crash_panel(stack: dict[str, Any]) -> None:
    """Every crash-count query, limited to the app that crashed once, adds up to exactly 1 (0 for OOM kills)."""
    _settle(stack)
    end = time.time()
    window = f"{int(end - stack['start']) + 60}s"
    checked = []
    for name, dashboard in load_dashboards().items():
        prom: Prom = stack["central"] if name == FLEET_DASHBOARD else stack["prom"]
        for where, raw, instant, step in _queries(dashboard):
            if not any(m in metric_names(raw) for m in CRASH_COUNTERS):
                continue
            if "atlas_app_last_crash_timestamp_seconds" in raw:
                continue  # a time, not a count
            expected = 0 if 'reason="oom_kill"' in raw else 1
            for interval in ("1s", "7s"):
                values = _values(stack["instance"], window, ONE_CRASH_APP)
                values["$__interval"] = interval
                expr = restrict(substitute(raw, values), CRASH_COUNTERS, ONE_CRASH_APP)
                if instant:
                    series = prom.query(expr)
                    total = sum(float(s["value"][1]) for s in series)
                else:
                    q_step = step or interval
                    seconds = int(q_step.rstrip("sm")) * (60 if q_step.endswith("m") else 1)
                    # windows that tile from before the first scrape to past the crash
                    first = (stack["start"] // seconds) * seconds - seconds
                    last = (end // seconds + 1) * seconds
                    series = prom.query_range(expr, first, last, q_step)
                    total = sum(float(v) for s in series for _, v in s["values"])
                assert round(total, 6) == expected, (
                    f"{name} {where} ($__interval {interval}): {total} crashes, not {expected}\n{expr}")
                checked.append(f"{name} {where}")
                if instant or step:
                    break
    titles = " ".join(checked)
    for needed in ("atlas-overview.json panel 'Crashes'", "atlas-overview.json panel 'Crashes by reason'",
                   "atlas-app.json panel 'Crashes by reason'", "atlas-app.json annotation 'Crashes'",
                   "atlas-fleet.json panel 'Crashes by reason'", "atlas-fleet.json panel 'Crashes'"):
        assert needed in titles, needed


def _alert_names(path: str, metrics: tuple[str, ...]) -> set[str]:
    rules = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return {r["alert"] for g in rules["groups"] for r in g["rules"]
            if "alert" in r and any(m in r["expr"] for m in metrics)}


def _wait_for_alert(prom: Prom, names: set[str], app: str | None, timeout: float = 90.0,
                    **labels: str) -> dict[str, Any]:
    def active() -> dict[str, Any] | None:
        for alert in prom.get("/api/v1/alerts")["alerts"]:
            if (alert["labels"].get("alertname") in names and alert["labels"].get("app") == app
                    and all(alert["labels"].get(k) == v for k, v in labels.items())
                    and alert["state"] in ("pending", "firing")):
                return alert
        return None

    return wait_for(active, timeout=timeout, interval=0.5, message=f"an alert of {sorted(names)} for {app} {labels}")


def test_a_dead_exporter_and_switched_off_detection_raise_alerts(stack: dict[str, Any]) -> None:
    """Pending at once, firing after their `for` (5 and 30 minutes): the rules match real series."""
    prom: Prom = stack["prom"]
    down = _wait_for_alert(prom, {"AtlasExporterDown"}, None, instance=stack["dead"])
    assert down["labels"]["severity"] == "critical"
    for detection in ("crash", "hang"):
        off = _wait_for_alert(prom, {"AtlasDetectionOff"}, None, instance=stack["blind"], detection=detection)
        assert off["labels"]["severity"] == "critical"
    # the healthy exporter raises neither
    alerts = prom.get("/api/v1/alerts")["alerts"]
    assert not [a for a in alerts if a["labels"].get("instance") == stack["instance"]
                and a["labels"]["alertname"] in ("AtlasExporterDown", "AtlasDetectionOff")], alerts


def test_crash_loop_raises_the_crash_alert(stack: dict[str, Any]) -> None:
    if not ALERTS.exists():
        pytest.skip("deploy/prometheus/alerts.yml is not there yet")
    names = _alert_names(str(stack["tmp"] / "scraper-alerts.yml"), ("atlas_app_crashes_total",))
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
    names = _alert_names(str(stack["tmp"] / "scraper-alerts.yml"),
                         ("atlas_app_hung_processes", "atlas_app_hangs_total"))
    assert names, "no alert rule reads atlas_app_hung_processes or atlas_app_hangs_total"
    hung = wait_for_series(stack["prom"], f'atlas_app_hung_processes{{app="{HANGER_APP}"}} >= 1')
    assert float(hung[0]["value"][1]) == 1
    alert = _wait_for_alert(stack["prom"], names, HANGER_APP)
    assert alert["labels"]["app"] == HANGER_APP


def test_an_app_that_keeps_exiting_with_an_error_raises_the_failing_alert(stack: dict[str, Any]) -> None:
    """A child that exits with code 3 every second: non-zero exits rising, AtlasAppFailing for its app."""
    prom: Prom = stack["prom"]
    if not prom.query("atlas_app_exits_total"):
        pytest.skip("this exporter does not count exits here (no proc connector)")
    wait_for_series(prom, f'atlas_app_exits_total{{app="{FAILER_APP}",outcome="error"}} >= 5')
    alert = _wait_for_alert(prom, {"AtlasAppFailing"}, FAILER_APP)
    assert alert["labels"]["severity"] == "warning"
