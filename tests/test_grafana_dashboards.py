"""Structure of the shipped Grafana dashboards and provisioning files, and every query through promtool.

The helpers `load_dashboards`, `dashboard_queries` and `substitute` are shared with the
end-to-end test, which runs the same queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import subprocess
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
)
EXPORTER_METRICS = (
    "atlas_exporter_build_info", "atlas_scrape_collector_success", "atlas_scrape_collector_duration_seconds",
    "atlas_process_read_errors_total", "atlas_source_active",
)
PROMETHEUS_METRICS = ("up", "scrape_duration_seconds")
PANEL_TYPES = {"timeseries", "stat", "table", "state-timeline", "row", "text", "gauge", "bargauge"}
UNITS = {"short", "none", "bytes", "Bps", "ops", "s", "percentunit", "dateTimeFromNow", "dateTimeAsIso"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "changes", "resets",
    "avg_over_time", "max_over_time", "min_over_time", "time", "vector", "round", "end", "start", "label_values",
}
GRAFANA_VARIABLES = {"datasource", "instance", "app", "__rate_interval", "__interval", "__range"}
DEFAULT_SUBSTITUTIONS = {
    "$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
    "$instance": ".+", "$app": "atlas-exporter",
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


DASHBOARD_FILES = ("atlas-overview.json", "atlas-app.json")


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
    known = set(APP_METRICS) | set(EXPORTER_METRICS) | set(PROMETHEUS_METRICS)
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


def test_overview_covers_the_issue(dashboards: dict[str, dict[str, Any]]) -> None:
    d = dashboards["atlas-overview.json"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["instance"]["type"] == "query"
    assert "label_values(" in variables["instance"]["query"]["query"]
    titles = {p["title"]: p for p in all_panels(d)}
    need = {
        "Top apps by CPU": ["rate(atlas_app_cpu_seconds_total"],
        "Top apps by memory": ["atlas_app_resident_memory_bytes"],
        "Top apps by network": ["rate(atlas_app_network_receive_bytes_total",
                                "rate(atlas_app_network_transmit_bytes_total"],
        "Top apps by disk": ["rate(atlas_app_disk_read_bytes_total", "rate(atlas_app_disk_written_bytes_total"],
        "Crashes and hangs": ["increase(atlas_app_crashes_total", "atlas_app_hung_processes",
                              "increase(atlas_app_hangs_total"],
        "Collector success": ["atlas_scrape_collector_success"],
        "Collector duration": ["atlas_scrape_collector_duration_seconds"],
        "Data sources": ["atlas_source_active"],
    }
    for title, fragments in need.items():
        exprs = "\n".join(t["expr"] for t in titles[title]["targets"])
        for fragment in fragments:
            assert fragment in exprs, f"{title}: {fragment}"
        assert 'instance=~"$instance"' in exprs
    assert titles["Crashes and hangs"]["type"] == "table"


def test_app_dashboard_covers_every_per_app_metric(dashboards: dict[str, dict[str, Any]]) -> None:
    d = dashboards["atlas-app.json"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    app = variables["app"]
    assert app["type"] == "query"
    assert re.fullmatch(r"label_values\(atlas_app_processes(\{[^}]*\})?,\s*app\)", app["query"]["query"])
    panel_exprs = "\n".join(t["expr"] for p in all_panels(d) for t in p.get("targets", []))
    missing = [m for m in APP_METRICS if m not in metric_names(panel_exprs)]
    assert not missing, f"per-app metrics without a panel: {missing}"
    for p in all_panels(d):
        for t in p.get("targets", []):
            assert 'app="$app"' in t["expr"], f"panel {p['title']} does not filter on $app"


def test_app_dashboard_annotations(dashboards: dict[str, dict[str, Any]]) -> None:
    d = dashboards["atlas-app.json"]
    anns = {a["name"]: a for a in d["annotations"]["list"] if not a.get("builtIn")}
    for name, metric in (("Crashes", "atlas_app_crashes_total"), ("Hangs", "atlas_app_hangs_total")):
        ann = anns[name]
        assert ann["enable"] is True
        assert f"changes({metric}{{" in ann["expr"]
        assert 'app="$app"' in ann["expr"]
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
