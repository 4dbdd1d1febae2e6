"""Structure of the shipped Grafana dashboards and provisioning files, and every query through promtool.

The helpers `load_dashboards`, `dashboard_queries` and `substitute` are shared with the
end-to-end test, which runs the same queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = REPO / "grafana" / "dashboards"
PROVISIONING = REPO / "grafana" / "provisioning"
DS = {"type": "prometheus", "uid": "${datasource}"}

# The per-app metrics of the contract (the README's metric table).
APP_METRICS = (
    "atlas_app_processes", "atlas_app_threads", "atlas_app_cpu_seconds_total",
    "atlas_app_resident_memory_bytes", "atlas_app_open_fds", "atlas_app_disk_read_bytes_total",
    "atlas_app_disk_written_bytes_total", "atlas_app_io_read_ops_total", "atlas_app_io_write_ops_total",
    "atlas_app_disk_wait_processes", "atlas_app_network_receive_bytes_total",
    "atlas_app_network_transmit_bytes_total", "atlas_app_crashes_total", "atlas_app_last_crash_timestamp_seconds",
    "atlas_app_hung_processes", "atlas_app_hangs_total", "atlas_app_oldest_start_time_seconds",
    "atlas_app_disk_cancelled_write_bytes_total", "atlas_app_exits_total", "atlas_app_minor_page_faults_total",
    "atlas_app_major_page_faults_total", "atlas_app_context_switches_total", "atlas_app_virtual_memory_bytes",
    "atlas_app_swap_bytes", "atlas_app_proportional_memory_bytes", "atlas_app_open_fds_limit_ratio",
    "atlas_app_process_states",
)
EXPORTER_METRICS = (
    "atlas_exporter_build_info", "atlas_scrape_collector_success", "atlas_scrape_collector_duration_seconds",
    "atlas_process_read_errors_total", "atlas_source_active", "atlas_app_names_folded_total", "atlas_host_cpus",
    "atlas_crash_source_active",
)
# prometheus_client's own process metrics (Linux), for the exporter-itself row
PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes")
PROMETHEUS_METRICS = ("up", "scrape_duration_seconds")
RECORDING = REPO / "deploy" / "prometheus" / "recording.yml"


def recorded_metrics() -> set[str]:
    """The series that deploy/prometheus/recording.yml records."""
    rules = yaml.safe_load(RECORDING.read_text(encoding="utf-8"))
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


PANEL_TYPES = {"timeseries", "stat", "table", "state-timeline", "row", "text", "gauge", "bargauge"}
UNITS = {"short", "none", "bytes", "Bps", "ops", "s", "percent", "percentunit", "dateTimeFromNow", "dateTimeAsIso"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "changes", "resets",
    "avg_over_time", "max_over_time", "min_over_time", "time", "vector", "round", "end", "start", "label_values",
    "last_over_time", "count_over_time", "group", "scalar",
}
GRAFANA_VARIABLES = {"datasource", "job", "instance", "app", "__rate_interval", "__interval", "__range"}
DEFAULT_SUBSTITUTIONS = {
    "$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
    "$job": ".+", "$instance": ".+", "$app": "atlas-exporter",
}


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard file, by file name."""
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels at the top level and inside collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every PromQL query: panel targets, annotations and query variables."""
    out: list[tuple[str, str]] = []
    for panel in all_panels(dashboard):
        for t in panel.get("targets", []):
            out.append((f"panel {panel['id']} '{panel['title']}' target {t['refId']}", t["expr"]))
    for ann in dashboard["annotations"]["list"]:
        if "expr" in ann:
            out.append((f"annotation '{ann['name']}'", ann["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            if inner and inner.group(1).strip():
                out.append((f"variable '{var['name']}'", inner.group(1)))
    return out


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana's variables with literal values, longest names first."""
    values = {**DEFAULT_SUBSTITUTIONS, **(values or {})}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """Identifiers in an expression that name metrics (not functions, keywords, labels or strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # drop label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # drop range durations
    text = re.sub(r"\boffset\s+\S+", "", text)
    names = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][\w:]*", text))
    return {n for n in names if n not in PROMQL_WORDS}


DASHBOARD_FILES = ("atlas-overview.json", "atlas-app.json", "atlas-fleet.json")
RAW_DASHBOARDS = ("atlas-overview.json", "atlas-app.json")


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return load_dashboards()


def test_both_dashboards_ship(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(DASHBOARD_FILES) <= set(dashboards)
    uids = [d["uid"] for d in dashboards.values()]
    assert len(uids) == len(set(uids))
    for d in dashboards.values():
        assert d["schemaVersion"] >= 39
        assert isinstance(d["title"], str) and d["title"]
        assert d.get("id") is None, "a provisioned dashboard must not carry a database id"


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_datasource_variable_used_everywhere(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    d = dashboards[name]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for panel in all_panels(d):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == DS, f"panel {panel['id']} '{panel['title']}'"
        assert panel["targets"], f"panel {panel['id']} has no query"
        for t in panel["targets"]:
            assert t.get("datasource") == DS, f"panel {panel['id']} target {t.get('refId')}"
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == DS, f"variable {var['name']}"
    for ann in d["annotations"]["list"]:
        if not ann.get("builtIn"):
            assert ann["datasource"] == DS, f"annotation {ann['name']}"


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_panel_structure(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    d = dashboards[name]
    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        assert p["type"] in PANEL_TYPES, p["type"]
        assert isinstance(p["title"], str) and p["title"]
        grid = p["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in grid)
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panels {cells.get((x, y))} and {p['id']} overlap"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert isinstance(p.get("description"), str) and p["description"]
        defaults = p["fieldConfig"]["defaults"]
        assert isinstance(p["fieldConfig"]["overrides"], list)
        assert defaults.get("unit", "short") in UNITS
        for o in p["fieldConfig"]["overrides"]:
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in UNITS
        assert isinstance(p.get("options", {}), dict)
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert isinstance(t["expr"], str) and t["expr"].strip()
            assert isinstance(t.get("legendFormat", ""), str)
            if p["type"] == "table":
                assert t.get("format") == "table" and t.get("instant") is True


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_queries_use_only_defined_variables_and_known_metrics(dashboards: dict[str, dict[str, Any]],
                                                              name: str) -> None:
    d = dashboards[name]
    defined = {v["name"] for v in d["templating"]["list"]} | {"__rate_interval", "__interval", "__range"}
    if name == "atlas-fleet.json":
        known = recorded_metrics() | set(PROMETHEUS_METRICS)
    else:
        known = set(APP_METRICS) | set(EXPORTER_METRICS) | set(PROCESS_METRICS) | set(PROMETHEUS_METRICS)
    for where, expr in dashboard_queries(d):
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined, f"{where}: undefined variables {used - defined}"
        assert used <= GRAFANA_VARIABLES, where
        unknown = metric_names(expr) - known
        assert not unknown, f"{where}: not a metric of the contract: {unknown}"


def test_metric_name_extraction_sees_metrics() -> None:
    names = metric_names('sum by (app) (rate(atlas_app_cpu_seconds_total{app="x"}[$__rate_interval] @ end())) '
                         'and on (app) topk(10, atlas_app_procesess)')
    assert names == {"atlas_app_cpu_seconds_total", "atlas_app_procesess"}


def _exprs(d: dict[str, Any]) -> str:
    return "\n".join(expr for _, expr in dashboard_queries(d))


def test_overview_has_its_variables_and_panels(dashboards: dict[str, dict[str, Any]]) -> None:
    d = dashboards["atlas-overview.json"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["instance"]["type"] == "query"
    assert "label_values(" in variables["instance"]["query"]["query"]
    titles = {p["title"]: p for p in all_panels(d)}
    need = {
        "Top apps by CPU": ["rate(atlas_app_cpu_seconds_total"],
        "Top apps by CPU, % of host": ["rate(atlas_app_cpu_seconds_total", "atlas_host_cpus"],
        "Top apps by memory": ["atlas_app_resident_memory_bytes"],
        "Top apps by network": ["rate(atlas_app_network_receive_bytes_total",
                                "rate(atlas_app_network_transmit_bytes_total"],
        "Top apps by disk": ["rate(atlas_app_disk_read_bytes_total", "rate(atlas_app_disk_written_bytes_total"],
        "Crashes, exits and hangs": ["last_over_time(atlas_app_crashes_total", "atlas_app_hung_processes",
                                     "last_over_time(atlas_app_hangs_total", 'outcome="error"', 'reason="oom_kill"'],
        "Exits by outcome": ["atlas_app_exits_total"],
        "Apps failing": ['atlas_app_exits_total{job=~"$job", instance=~"$instance", outcome="error"}'],
        "OOM kills": ['reason="oom_kill"'],
        "Top apps by swap": ["atlas_app_swap_bytes"],
        "Top apps by virtual memory": ["atlas_app_virtual_memory_bytes"],
        "Top apps by major page faults": ["atlas_app_major_page_faults_total"],
        "Top apps by context switches": ["atlas_app_context_switches_total"],
        "Process states": ["atlas_app_process_states"],
        "Fd limit used": ["atlas_app_open_fds_limit_ratio"],
        "Collector success": ["atlas_scrape_collector_success"],
        "Collector duration": ["atlas_scrape_collector_duration_seconds"],
        "Data sources": ["atlas_source_active"],
        "Exporter CPU": ["process_cpu_seconds_total"],
        "Exporter memory": ["process_resident_memory_bytes"],
        "Scrape duration": ["scrape_duration_seconds"],
        "Names folded into other": ["atlas_app_names_folded_total"],
    }
    for title, fragments in need.items():
        exprs = "\n".join(t["expr"] for t in titles[title]["targets"])
        for fragment in fragments:
            assert fragment in exprs, f"{title}: {fragment}"
        assert 'job=~"$job", instance=~"$instance"' in exprs, title
    assert titles["Crashes, exits and hangs"]["type"] == "table"


def test_app_dashboard_covers_every_per_app_metric(dashboards: dict[str, dict[str, Any]]) -> None:
    d = dashboards["atlas-app.json"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    app = variables["app"]
    assert app["type"] == "query"
    assert re.fullmatch(r"label_values\(atlas_app_processes(\{[^}]*\})?,\s*app\)", app["query"]["query"])
    assert app["multi"] is True, "several apps can be compared"
    panel_exprs = "\n".join(t["expr"] for p in all_panels(d) for t in p.get("targets", []))
    missing = [m for m in APP_METRICS if m not in metric_names(panel_exprs)]
    assert not missing, f"per-app metrics without a panel: {missing}"
    for p in all_panels(d):
        for t in p.get("targets", []):
            assert 'app=~"$app"' in t["expr"], f"panel {p['title']} does not filter on $app"
            assert 'app="$app"' not in t["expr"], f"panel {p['title']}: a multi-value $app needs =~"


def test_app_dashboard_annotations(dashboards: dict[str, dict[str, Any]]) -> None:
    d = dashboards["atlas-app.json"]
    anns = {a["name"]: a for a in d["annotations"]["list"] if not a.get("builtIn")}
    for name, metric in (("Crashes", "atlas_app_crashes_total"), ("Hangs", "atlas_app_hangs_total")):
        ann = anns[name]
        assert ann["enable"] is True
        # one annotation per event: the window is the annotation query's step
        assert ann["step"] == "1m"
        assert f"last_over_time({metric}{{" in ann["expr"] and "[1m]" in ann["expr"]
        assert 'app=~"$app"' in ann["expr"]
        assert ann["titleFormat"]


def test_table_links_open_the_app_dashboard(dashboards: dict[str, dict[str, Any]]) -> None:
    target_uid = dashboards["atlas-app.json"]["uid"]
    links = [link["url"] for p in all_panels(dashboards["atlas-overview.json"])
             for o in p.get("fieldConfig", {}).get("overrides", []) for prop in o["properties"]
             if prop["id"] == "links" for link in prop["value"]]
    assert links
    for url in links:
        assert url.startswith(f"/d/{target_uid}/") and "var-app=" in url


def _check_as_rules(promtool: str, exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = {"groups": [{"name": "dashboard_queries", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_every_query_parses_in_promtool(dashboards: dict[str, dict[str, Any]], promtool: str,
                                        tmp_path: Path) -> None:
    queries = [(f"{name}: {where}", substitute(expr)) for name, d in dashboards.items()
               for where, expr in dashboard_queries(d)]
    assert len(queries) >= 40
    for _, expr in queries:
        assert "$" not in expr, expr
    result = _check_as_rules(promtool, [expr for _, expr in queries], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_promtool_rejects_a_broken_query(promtool: str, tmp_path: Path) -> None:
    result = _check_as_rules(promtool, ["sum by (app) (rate(atlas_app_cpu_seconds_total[1m])"], tmp_path)
    assert result.returncode != 0


def test_datasource_provisioning() -> None:
    raw = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    assert raw["apiVersion"] == 1
    (ds,) = raw["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy"
    assert ds["url"].startswith("http")
    assert ds["isDefault"] is True


def test_dashboard_provisioning_matches_compose_mount() -> None:
    raw = yaml.safe_load((PROVISIONING / "dashboards" / "atlas.yml").read_text(encoding="utf-8"))
    assert raw["apiVersion"] == 1
    (provider,) = raw["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    compose = yaml.safe_load((REPO / "deploy" / "compose" / "compose.yaml").read_text(encoding="utf-8"))
    mounts = compose["services"]["grafana"]["volumes"]
    sources = {m.split(":")[1]: m.split(":")[0] for m in mounts}
    assert path in sources, f"the provider reads {path}, which compose does not mount"
    mounted = (REPO / "deploy" / "compose" / sources[path]).resolve()
    assert mounted == DASHBOARDS.resolve()
    assert (REPO / "deploy" / "compose" / sources["/etc/grafana/provisioning"]).resolve() == PROVISIONING.resolve()


def test_dashboards_are_what_the_builder_writes() -> None:
    result = subprocess.run([sys.executable, str(REPO / "grafana" / "build.py"), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_job_and_instance_variables_are_chained(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    variables = [v["name"] for v in dashboards[name]["templating"]["list"]]
    assert variables[:3] == ["datasource", "job", "instance"]
    by_name = {v["name"]: v for v in dashboards[name]["templating"]["list"]}
    assert 'job=~"$job"' in by_name["instance"]["query"]["query"]
    assert by_name["job"]["multi"] and by_name["instance"]["multi"]
    if "app" in by_name:
        assert 'job=~"$job", instance=~"$instance"' in by_name["app"]["query"]["query"]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_event_counts_are_exact(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    """Bars tile the time axis, range counts are instant queries, and no scrape gap can double-count."""
    counters = ("atlas_app_crashes_total", "atlas_app_hangs_total", "atlas_app_exits_total",
                "atlas_app_names_folded_total", "instance_app_reason:atlas_app_crashes_total:sum",
                "instance_app_outcome:atlas_app_exits_total:sum", "instance_app:atlas_app_hangs_total:sum")
    for p in all_panels(dashboards[name]):
        for t in p.get("targets", []):
            expr = t["expr"]
            assert "increase(" not in expr and "changes(" not in expr, f"{p['title']}: {expr}"
            assert "offset $__range)" not in expr.replace("[1h] offset $__range", ""), p["title"]
            if not any(c in expr for c in counters):
                continue
            assert "[1h] offset" in expr, f"{p['title']}: counts without the gap-bridging look-back"
            if "$__interval" in expr:
                assert p.get("interval") == "1m", f"{p['title']}: counts per $__interval need the panel interval"
            if "$__range" in expr:
                assert t["instant"] is True, f"{p['title']}: a count over the range must be an instant query"


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_mirror_graphs_use_negative_y_not_negated_values(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    for p in all_panels(dashboards[name]):
        for t in p.get("targets", []):
            assert not t["expr"].lstrip().startswith("-"), f"{p['title']}: negated query"
    mirrors = [p for p in all_panels(dashboards[name]) if any(
        prop["id"] == "custom.transform" for o in p.get("fieldConfig", {}).get("overrides", [])
        for prop in o["properties"])]
    if name != "atlas-fleet.json":
        assert mirrors


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_single_query_tables_rename_value(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    for p in all_panels(dashboards[name]):
        if p["type"] != "table":
            continue
        renames = next(t["options"]["renameByName"] for t in p["transformations"] if t["id"] == "organize")
        if len(p["targets"]) == 1:
            assert "Value" in renames, p["title"]
        else:
            assert all(f"Value #{t['refId']}" in renames for t in p["targets"]), p["title"]


@pytest.mark.parametrize("name", RAW_DASHBOARDS)
def test_secondary_rows_are_collapsed_and_the_exporter_has_a_row(dashboards: dict[str, dict[str, Any]],
                                                                  name: str) -> None:
    rows = [p for p in dashboards[name]["panels"] if p["type"] == "row"]
    collapsed = [r for r in rows if r["collapsed"]]
    assert collapsed and all(r["panels"] for r in collapsed)
    assert not rows[0]["collapsed"]
    if name == "atlas-overview.json":
        exporter = next(r for r in rows if r["title"] == "The exporter itself")
        assert exporter["collapsed"]
        exprs = "\n".join(t["expr"] for p in exporter["panels"] for t in p["targets"])
        for metric in ("process_cpu_seconds_total", "process_resident_memory_bytes", "scrape_duration_seconds",
                       "atlas_scrape_collector_success", "atlas_app_names_folded_total"):
            assert metric in exprs


def test_exporter_panels_filter_on_job_and_show_red(dashboards: dict[str, dict[str, Any]]) -> None:
    panels = {p["title"]: p for p in all_panels(dashboards["atlas-overview.json"])}
    exporters = panels["Exporters"]
    assert all('job=~"$job"' in t["expr"] for t in exporters["targets"])
    assert any(prop["id"] == "thresholds" and prop["value"]["steps"][-1]["color"] == "red"
               for o in exporters["fieldConfig"]["overrides"] for prop in o["properties"])
    scrape = panels["Scrape duration"]
    assert 'job=~"$job"' in scrape["targets"][0]["expr"]
    assert scrape["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["color"] == "red"


def test_fleet_dashboard_reads_only_what_a_central_store_keeps(dashboards: dict[str, dict[str, Any]]) -> None:
    """Only recorded series and up: what docs/fleet.md's write_relabel_configs keep."""
    import re as _re

    fleet_doc = (REPO / "docs" / "fleet.md").read_text(encoding="utf-8")
    keep = _re.search(r"regex: '([^']+)'\n\s+action: keep", fleet_doc)
    assert keep, "docs/fleet.md has no write_relabel_configs keep regex"
    pattern = _re.compile(f"^(?:{keep.group(1)})$")
    names = set()
    for _, expr in dashboard_queries(dashboards["atlas-fleet.json"]):
        names |= metric_names(expr)
    assert names, "the fleet dashboard has no queries"
    assert names <= recorded_metrics() | {"up"}, names - recorded_metrics()
    missing = [n for n in names if not pattern.match(n)]
    assert not missing, f"docs/fleet.md's remote-write filter drops {missing}"
