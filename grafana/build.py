"""Builds the Grafana dashboards in grafana/dashboards/ from the panel lists below.

    python3 grafana/build.py           # rewrite the JSON files
    python3 grafana/build.py --check   # exit 1 when a JSON file differs from what this builds

The JSON files are what Grafana imports and provisions; this file is how they are written, so that
the same query shapes are used everywhere (tests/test_grafana_dashboards.py checks both agree):

- `events(c, W)` counts the events of a counter in a window exactly, through scrape gaps,
  exporter restarts, retired apps and an app's first event, as deploy/prometheus/alerts.yml does.
- Bars of event counts use a panel interval and `W = $__interval`, so that the windows tile the
  time axis: one crash is one bar of height 1, never four.
- Top-N graphs keep the ten apps with the highest average over the range (`@ end()`), so that the
  legend does not fill with apps that were in the top ten once.
- Mirror graphs (received up, sent down) use Grafana's negative-Y transform, so that legends and
  tooltips show positive rates.

Three dashboards: Atlas / Overview and Atlas / App read the exporter's raw series; Atlas / Fleet
reads only the series of deploy/prometheus/recording.yml (and `up`), which is what a central
store fed by remote write or federation holds (docs/fleet.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
ASEL = 'job=~"$job", instance=~"$instance", app=~"$app"'
APP_LINK = ("/d/atlas-app/atlas-app?${datasource:queryparam}&${job:queryparam}&${instance:queryparam}"
            "&var-app=${__value.raw}&${__url_time_range}")
BAR_INTERVAL = "1m"
ERROR_EXITS = ', outcome="error"'
OOM = ', reason="oom_kill"'


# ---------------------------------------------------------------- PromQL helpers

def events(metric: str, selector: str, window: str, exporter: str = "atlas_exporter_build_info",
           exporter_selector: str = 'job=~"$job", instance=~"$instance"') -> str:
    """Events of counter `metric{selector}` in the window ending at the evaluation time (alerts.yml)."""
    c = f"{metric}{{{selector}}}"
    e = f"{exporter}{{{exporter_selector}}}"
    return (f"(last_over_time({c}[{window}]) - last_over_time({c}[1h] offset {window})) >= 0"
            f" or (last_over_time({c}[{window}]) and on (instance, job)"
            f" group by (instance, job) (last_over_time({e}[1h] offset {window})))"
            f" or (last_over_time({c}[{window}]) and count_over_time({c}[{window}])"
            f" < on (instance, job) group_left () sum by (instance, job) (count_over_time({e}[{window}])))"
            f" or (last_over_time({c}[{window}]) - min_over_time({c}[{window}]))")


CRASH_ACTIVE = ("atlas_crash_source_active", "")
HANG_ACTIVE = ("atlas_source_active", 'source="hang_task_scan"')
FLEET_CRASH_ACTIVE = ("instance:atlas_crash_source_active:max", "")
FLEET_HANG_ACTIVE = ("instance:atlas_hang_scan_active:max", "")


def measured(active: tuple[str, str], selector: str) -> str:
    """0 where a selected host's source for the quantity is active; no data where none is.

    So a stat reads "No data", not a reassuring 0, where crash or hang detection is off (macOS has
    no hang scan; an unprivileged Linux exporter may have no crash source).
    """
    name, labels = active
    matchers = ", ".join(part for part in (labels, selector) if part)
    return f"(max({name}{{{matchers}}} == 1) * 0)"


def fleet_events(metric: str, selector: str, window: str) -> str:
    return events(metric, selector, window, exporter="instance:atlas_exporter_build_info:count")


def top10(per_app: str, rank: str) -> str:
    """The per-app series, for the ten apps with the highest `rank` over the whole range."""
    return f"{per_app}\nand on (app)\ntopk(10, {rank})"


def rate(metric: str, selector: str, window: str = "$__rate_interval") -> str:
    return f"rate({metric}{{{selector}}}[{window}])"


# ---------------------------------------------------------------- panel builders

class Layout:
    """Places panels left to right, wrapping at 24 columns; rows start a new line."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.line_h = 0
        self.next_id = 1

    def pos(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.y += self.line_h
            self.x, self.line_h = 0, 0
        grid = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.line_h = max(self.line_h, h)
        return grid

    def newline(self) -> None:
        if self.x:
            self.y += self.line_h
        self.x, self.line_h = 0, 0

    def id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def target(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False, table: bool = False,
           interval: str | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend,
                         "range": not instant, "instant": instant, "refId": ref}
    if table:
        t["format"] = "table"
    if interval:
        t["interval"] = interval
    return t


def _targets(queries: list[tuple[str, str]] | str, **kw: Any) -> list[dict[str, Any]]:
    if isinstance(queries, str):
        queries = [(queries, kw.pop("legend", "__auto"))]
    return [target(expr, legend, chr(ord("A") + i), **kw) for i, (expr, legend) in enumerate(queries)]


def negative_y(regex: str) -> dict[str, Any]:
    return {"matcher": {"id": "byRegexp", "options": regex},
            "properties": [{"id": "custom.transform", "value": "negative-Y"}]}


def timeseries(lay: Layout, title: str, description: str, queries: list[tuple[str, str]], *, unit: str = "short",
               w: int = 12, h: int = 8, bars: bool = False, stack: bool = False, overrides: list | None = None,
               min0: bool = True, thresholds: list[tuple[str, float | None]] | None = None,
               decimals: int | None = None, interval: str | None = None) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 40 if bars else 10,
        "showPoints": "never", "spanNulls": False, "axisPlacement": "auto",
        "stacking": {"mode": "normal" if (stack or bars) else "none", "group": "A"},
    }
    if min0:
        custom["axisSoftMin"] = 0
    defaults: dict[str, Any] = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute",
                                  "steps": [{"color": c, "value": v} for c, v in thresholds]}
        custom["thresholdsStyle"] = {"mode": "dashed"}
    if decimals is not None:
        defaults["decimals"] = decimals
    panel: dict[str, Any] = {
        "id": lay.id(), "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "gridPos": lay.pos(w, h), "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                               "calcs": ["sum"] if bars else ["mean", "max", "lastNotNull"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": _targets(queries),
    }
    if bars or interval:
        panel["interval"] = interval or BAR_INTERVAL
    return panel


def bars_for(regex: str) -> dict[str, Any]:
    """An override that draws the matching series as bars (event counts in a line panel)."""
    return {"matcher": {"id": "byRegexp", "options": regex},
            "properties": [{"id": "custom.drawStyle", "value": "bars"}, {"id": "custom.fillOpacity", "value": 40}]}


def stat(lay: Layout, title: str, description: str, queries: list[tuple[str, str]], *, unit: str = "short",
         w: int = 4, h: int = 4, red_at: float | None = None, instant: bool = False, decimals: int | None = 0,
         overrides: list | None = None, color_mode: str = "value") -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_at is not None:
        steps.append({"color": "red", "value": red_at})
    defaults: dict[str, Any] = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                "color": {"mode": "thresholds"}, "mappings": []}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "id": lay.id(), "type": "stat", "title": title, "description": description, "datasource": DS,
        "gridPos": lay.pos(w, h), "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": color_mode, "graphMode": "none" if instant else "area", "justifyMode": "auto",
                    "orientation": "auto", "textMode": "auto", "wideLayout": True, "showPercentChange": False},
        "targets": _targets(queries, instant=instant),
    }


def _by_name(name: str, props: list[dict[str, Any]]) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


def table(lay: Layout, title: str, description: str, columns: list[tuple[str, str, str]], *, key: str = "app",
          sort: str | None = None, w: int = 24, h: int = 9, link_app: bool = True,
          extra_names: dict[str, str] | None = None) -> dict[str, Any]:
    """A table of instant queries, one column each: (header, expr, unit). Rows are merged on `key` labels."""
    overrides = [_by_name(header, [{"id": "unit", "value": unit}]) for header, _, unit in columns]
    if link_app:
        overrides.append(_by_name("App", [{"id": "links", "value": [
            {"title": "Open ${__value.text} in the app drill-down", "url": APP_LINK}]}]))
    rename = ({f"Value #{chr(ord('A') + i)}": header for i, (header, _, _) in enumerate(columns)}
              if len(columns) > 1 else {"Value": columns[0][0]})
    rename.update({"app": "App", "instance": "Instance"})
    rename.update(extra_names or {})
    return {
        "id": lay.id(), "type": "table", "title": title, "description": description, "datasource": DS,
        "gridPos": lay.pos(w, h),
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
                                     "mappings": [],
                                     "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}},
                        "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "fields": "", "countRows": False},
                    "sortBy": [{"displayName": sort or columns[0][0], "desc": True}]},
        "targets": [target(expr, "__auto", chr(ord("A") + i), instant=True, table=True)
                    for i, (_, expr, _) in enumerate(columns)],
        "transformations": [{"id": "merge", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {"Time": True, "job": True},
                                                           "indexByName": {}, "renameByName": rename}}],
    }


def state_timeline(lay: Layout, title: str, description: str, expr: str, legend: str, *, w: int = 12,
                   h: int = 8) -> dict[str, Any]:
    return {
        "id": lay.id(), "type": "state-timeline", "title": title, "description": description, "datasource": DS,
        "gridPos": lay.pos(w, h),
        "fieldConfig": {"defaults": {
            "unit": "short", "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute",
                           "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]},
            "mappings": [{"type": "value", "options": {"0": {"text": "failed", "color": "red", "index": 0},
                                                       "1": {"text": "ok", "color": "green", "index": 1}}}],
            "custom": {"fillOpacity": 70, "lineWidth": 0}}, "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.9, "alignValue": "left",
                    "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "single", "sort": "none"}},
        "targets": [target(expr, legend)],
    }


def row(lay: Layout, title: str, panels: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An open row (panels follow it at the top level) or, with `panels`, a collapsed one holding them."""
    lay.newline()
    r: dict[str, Any] = {"id": lay.id(), "type": "row", "title": title, "collapsed": panels is not None,
                         "gridPos": lay.pos(24, 1), "panels": []}
    lay.newline()
    return r


def collapsed(lay: Layout, title: str, build: Any) -> dict[str, Any]:
    """A collapsed row: its panels are laid out below it and stored inside it."""
    r = row(lay, title, [])
    r["panels"] = build()
    lay.newline()
    return r


def variables(*, app: bool, fleet: bool = False) -> list[dict[str, Any]]:
    exporter = "instance:atlas_exporter_build_info:count" if fleet else "atlas_exporter_build_info"

    def query_var(name: str, label: str, query: str, *, multi: bool, include_all: bool) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "query", "datasource": DS, "definition": query,
                "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
                "current": ({"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {}),
                "hide": 0, "includeAll": include_all, "multi": multi, "options": [], "refresh": 2, "regex": "",
                "skipUrlSync": False, "sort": 1}

    out = [{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False},
           query_var("job", "Job", f"label_values({exporter}, job)", multi=True, include_all=True),
           query_var("instance", "Instance", f'label_values({exporter}{{job=~"$job"}}, instance)',
                     multi=True, include_all=True)]
    if app:
        out.append(query_var("app", "App", 'label_values(atlas_app_processes{job=~"$job", instance=~"$instance"}, app)',
                             multi=True, include_all=False))
    return out


def annotation(name: str, color: str, expr: str, title: str, text: str, tags: str) -> dict[str, Any]:
    return {"name": name, "datasource": DS, "enable": True, "hide": False, "iconColor": color, "expr": expr,
            "step": "1m", "titleFormat": title, "textFormat": text, "tagKeys": tags, "useValueForTime": False}


def dashboard(uid: str, title: str, description: str, tags: list[str], panels: list[dict[str, Any]],
              templating: list[dict[str, Any]], annotations: list[dict[str, Any]] | None = None,
              links: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
               "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}
    return {"uid": uid, "title": title, "description": description, "tags": tags, "editable": True,
            "graphTooltip": 1, "fiscalYearStartMonth": 0, "liveNow": False, "refresh": "30s", "schemaVersion": 39,
            "version": 1, "weekStart": "", "timezone": "browser", "time": {"from": "now-1h", "to": "now"},
            "timepicker": {}, "annotations": {"list": [builtin, *(annotations or [])]},
            "templating": {"list": templating}, "links": links or [], "panels": panels}


def dash_link(title: str, tag: str) -> dict[str, Any]:
    return {"title": title, "type": "dashboards", "tags": [tag], "asDropdown": False, "includeVars": True,
            "keepTime": True, "icon": "external link", "targetBlank": False, "tooltip": "", "url": ""}


CPU_PCT_OF_HOST = ("100 * sum by (instance, app) ({rate}) / on (instance) group_left () "
                   "max by (instance) (atlas_host_cpus{{{sel}}})")


# ---------------------------------------------------------------- Atlas / Overview

def overview() -> dict[str, Any]:
    lay = Layout()
    p: list[dict[str, Any]] = []
    cpu = rate("atlas_app_cpu_seconds_total", SEL)
    cpu_range = f"rate(atlas_app_cpu_seconds_total{{{SEL}}}[$__range] @ end())"
    crashes_range = events("atlas_app_crashes_total", SEL, "$__range")

    p.append(row(lay, "Fleet at a glance"))
    p.append(stat(lay, "Apps", "Apps with live processes on the selected exporters now.",
                  [(f"count(count by (app) (atlas_app_processes{{{SEL}}} > 0))", "apps")], instant=True, w=3))
    p.append(stat(lay, "Processes", "Processes of every app on the selected exporters now.",
                  [(f"sum(atlas_app_processes{{{SEL}}})", "processes")], instant=True, w=3))
    p.append(stat(lay, "CPU in use", "CPU cores in use by every app (user + system), now.",
                  [(f"sum({cpu})", "cores")], decimals=2))
    p.append(stat(lay, "CPU % of hosts", "CPU in use by every app as a percentage of the selected hosts' "
                  "logical CPUs (atlas_host_cpus).",
                  [(f"100 * sum({cpu}) / sum(max by (instance) (atlas_host_cpus{{{SEL}}}))", "% of hosts")],
                  unit="percent", decimals=1))
    p.append(stat(lay, "Crashes", "Crashes in the selected time range, all apps; OOM kills included. "
                  "An instant query: its cost does not grow with the range.",
                  [(f"sum({crashes_range}) or {measured(CRASH_ACTIVE, SEL)}", "crashes")], red_at=1,
                  instant=True,
                  color_mode="background", w=3))
    p.append(stat(lay, "Hung processes", "Processes hung now (Linux: in D without progress past the threshold).",
                  [(f"sum(atlas_app_hung_processes{{{SEL}}}) or {measured(HANG_ACTIVE, SEL)}", "hung")],
                  red_at=1, instant=True,
                  color_mode="background", w=3))
    p.append(stat(lay, "Exporters", "Selected atlas-exporter targets that answered their last scrape (up) and "
                  "those that did not; any down is red.",
                  [(f"sum(up{{{SEL}}})", "up"), (f"count(up{{{SEL}}} == 0) or vector(0)", "down")], instant=True,
                  overrides=[_by_name("down", [{"id": "thresholds", "value": {"mode": "absolute", "steps": [
                      {"color": "green", "value": None}, {"color": "red", "value": 1}]}}])]))

    p.append(row(lay, "Top apps"))
    p.append(timeseries(lay, "Top apps by CPU", "CPU cores used per app (user + system), summed over the "
                        "selected hosts. The ten apps with the highest average over the selected range.",
                        [(top10(f"sum by (app) ({cpu})", f"sum by (app) ({cpu_range})"), "{{app}}")]))
    pct = CPU_PCT_OF_HOST.format(rate=cpu, sel=SEL)
    pct_range = CPU_PCT_OF_HOST.format(rate=cpu_range, sel=SEL)
    p.append(timeseries(lay, "Top apps by CPU, % of host", "CPU per app and host as a percentage of the host's "
                        "logical CPUs (atlas_host_cpus): 100 % is every core busy. The ten (app, host) pairs with "
                        "the highest average over the selected range.",
                        [(f"{pct}\nand on (instance, app)\ntopk(10, {pct_range})", "{{app}} {{instance}}")],
                        unit="percent"))
    mem = f"sum by (app) (atlas_app_resident_memory_bytes{{{SEL}}})"
    p.append(timeseries(lay, "Top apps by memory", "Resident memory per app, summed over the selected hosts. "
                        "The ten apps with the highest average over the selected range.",
                        [(top10(mem, "sum by (app) (avg_over_time("
                                     f"atlas_app_resident_memory_bytes{{{SEL}}}[$__range] @ end()))"),
                          "{{app}}")], unit="bytes"))
    rx, tx = rate("atlas_app_network_receive_bytes_total", SEL), rate("atlas_app_network_transmit_bytes_total", SEL)
    net_rank = (f"sum by (app) (rate(atlas_app_network_receive_bytes_total{{{SEL}}}[$__range] @ end())) + "
                f"sum by (app) (rate(atlas_app_network_transmit_bytes_total{{{SEL}}}[$__range] @ end()))")
    p.append(timeseries(lay, "Top apps by network", "TCP bytes per second per app: received above the axis, "
                        "transmitted below. The ten apps with the most traffic over the selected range. UDP has no "
                        "per-socket byte counters on Linux and is not included.",
                        [(top10(f"sum by (app) ({rx})", net_rank), "{{app}} received"),
                         (top10(f"sum by (app) ({tx})", net_rank), "{{app}} transmitted")],
                        unit="Bps", min0=False, overrides=[negative_y(".* transmitted")]))
    rd, wr = rate("atlas_app_disk_read_bytes_total", SEL), rate("atlas_app_disk_written_bytes_total", SEL)
    disk_rank = (f"sum by (app) (rate(atlas_app_disk_read_bytes_total{{{SEL}}}[$__range] @ end())) + "
                 f"sum by (app) (rate(atlas_app_disk_written_bytes_total{{{SEL}}}[$__range] @ end()))")
    p.append(timeseries(lay, "Top apps by disk", "Bytes per second per app read from storage (above the axis) "
                        "and written to it (below). The ten apps with the most disk I/O over the selected range.",
                        [(top10(f"sum by (app) ({rd})", disk_rank), "{{app}} read"),
                         (top10(f"sum by (app) ({wr})", disk_rank), "{{app}} written")],
                        unit="Bps", min0=False, overrides=[negative_y(".* written")], w=24))
    p.append(table(lay, "Apps now", "Every app, by CPU in use now, with its memory, processes, threads, open "
                   "files, disk and network bytes per second, and the largest share of an fd limit. Click an app "
                   "to open its drill-down.",
                   [("CPU (cores)", f"sum by (app) ({cpu})", "short"),
                    ("Memory", f"sum by (app) (atlas_app_resident_memory_bytes{{{SEL}}})", "bytes"),
                    ("Processes", f"sum by (app) (atlas_app_processes{{{SEL}}})", "short"),
                    ("Threads", f"sum by (app) (atlas_app_threads{{{SEL}}})", "short"),
                    ("Open fds", f"sum by (app) (atlas_app_open_fds{{{SEL}}})", "short"),
                    ("Fd limit used", f"max by (app) (atlas_app_open_fds_limit_ratio{{{SEL}}})", "percentunit"),
                    ("Disk", f"sum by (app) ({rd} + {wr})", "Bps"),
                    ("Network", f"sum by (app) ({rx} + {tx})", "Bps")], h=10))

    p.append(row(lay, "Crashes, exits and hangs"))
    p.append(table(lay, "Crashes, exits and hangs", "Apps that crashed, were OOM-killed, exited with an error, "
                   "hung or are hung now in the selected range. Counts are exact: an app's first crash, scrape "
                   "gaps, exporter restarts and apps that exited since are all counted right.",
                   [("Crashes", f"round(sum by (app) ({crashes_range})) > 0", "short"),
                    ("OOM kills", "round(sum by (app) ("
                     + events("atlas_app_crashes_total", SEL + ', reason="oom_kill"', "$__range") + ")) > 0", "short"),
                    ("Error exits", "round(sum by (app) ("
                     + events("atlas_app_exits_total", SEL + ', outcome="error"', "$__range") + ")) > 0", "short"),
                    ("Hang episodes", "round(sum by (app) (" + events("atlas_app_hangs_total", SEL, "$__range")
                     + ")) > 0", "short"),
                    ("Most hung at once",
                     f"sum by (app) (max_over_time(atlas_app_hung_processes{{{SEL}}}[$__range])) > 0",
                     "short"),
                    ("Hung now", f"sum by (app) (atlas_app_hung_processes{{{SEL}}}) > 0", "short"),
                    ("Last crash", f"max by (app) (atlas_app_last_crash_timestamp_seconds{{{SEL}}}) * 1000\n"
                     f"and on (app)\nsum by (app) ({crashes_range}) > 0", "dateTimeFromNow")], w=24))
    p.append(timeseries(lay, "Crashes by reason", "Crashes per interval, by signal; oom_kill for the OOM killer. "
                        "Each crash is counted in exactly one bar.",
                        [(f"sum by (reason) ({events('atlas_app_crashes_total', SEL, '$__interval')}) > 0",
                          "{{reason}}")], bars=True, w=8, decimals=0))
    p.append(timeseries(lay, "Exits by outcome", "Process exits per interval, all apps: success (code 0), error "
                        "(non-zero code: an uncaught exception, a panic) and signal (killed by any signal).",
                        [(f"sum by (outcome) ({events('atlas_app_exits_total', SEL, '$__interval')}) > 0",
                          "{{outcome}}")], bars=True, w=8, decimals=0))
    p.append(timeseries(lay, "Apps failing", "Non-zero exits per interval, by app: an app whose bar keeps "
                        "growing is failing (AtlasAppFailing).",
                        [(f"sum by (app) ({events('atlas_app_exits_total', SEL + ERROR_EXITS, '$__interval')}) > 0",
                          "{{app}}")], bars=True, w=8, decimals=0))
    p.append(timeseries(lay, "OOM kills", "Processes killed by the kernel's OOM killer per interval, by app.",
                        [(f"sum by (app) ({events('atlas_app_crashes_total', SEL + OOM, '$__interval')}) > 0",
                          "{{app}}")], bars=True, w=12, decimals=0))
    p.append(timeseries(lay, "Hangs", "Processes hung now, by app, and hang episodes that started per interval.",
                        [(f"sum by (app) (atlas_app_hung_processes{{{SEL}}}) > 0", "hung now {{app}}"),
                         (f"sum by (app) ({events('atlas_app_hangs_total', SEL, '$__interval')}) > 0",
                          "new hangs {{app}}")], w=12, decimals=0, interval=BAR_INTERVAL,
                        overrides=[bars_for("new hangs .*")]))

    def memory_rows() -> list[dict[str, Any]]:
        q: list[dict[str, Any]] = []
        for title, metric, unit, desc in (
                ("Top apps by swap", "atlas_app_swap_bytes", "bytes", "Swapped-out memory per app (VmSwap)."),
                ("Top apps by virtual memory", "atlas_app_virtual_memory_bytes", "bytes",
                 "Virtual size per app (address space reserved, not memory used).")):
            q.append(timeseries(lay, title, desc + " The ten apps with the highest average over the range.",
                                [(top10(f"sum by (app) ({metric}{{{SEL}}})",
                                        f"sum by (app) (avg_over_time({metric}{{{SEL}}}[$__range] @ end()))"),
                                  "{{app}}")], unit=unit))
        for title, metric, desc in (
                ("Top apps by major page faults", "atlas_app_major_page_faults_total",
                 "Major page faults per second (a page read from disk): memory pressure or cold files."),
                ("Top apps by minor page faults", "atlas_app_minor_page_faults_total",
                 "Minor page faults per second (a page mapped without I/O).")):
            q.append(timeseries(lay, title, desc + " The ten apps with the most over the range.",
                                [(top10(f"sum by (app) ({rate(metric, SEL)})",
                                        f"sum by (app) (rate({metric}{{{SEL}}}[$__range] @ end()))"), "{{app}}")],
                                unit="ops"))
        cs = "atlas_app_context_switches_total"
        q.append(timeseries(lay, "Top apps by context switches", "Context switches per second, voluntary (waiting "
                            "for I/O or a lock) and involuntary (preempted: CPU contention). The ten apps with the "
                            "most over the range.",
                            [(top10(f"sum by (app, kind) ({rate(cs, SEL)})",
                                    f"sum by (app) (rate({cs}{{{SEL}}}[$__range] @ end()))"), "{{app}} {{kind}}")],
                            unit="ops"))
        q.append(timeseries(lay, "Process states", "Processes by state, all apps: running, sleeping, disk_sleep "
                            "(D), stopped, zombie, idle.",
                            [(f"sum by (state) (atlas_app_process_states{{{SEL}}})", "{{state}}")], stack=True))
        q.append(timeseries(lay, "Fd limit used", "The largest share of its open-files limit (soft RLIMIT_NOFILE) "
                            "that a process of the app uses; AtlasAppFdExhaustion fires above 90 %. The ten apps "
                            "closest to their limit.",
                            [(top10(f"max by (app) (atlas_app_open_fds_limit_ratio{{{SEL}}})",
                                    "max by (app) (max_over_time("
                                    f"atlas_app_open_fds_limit_ratio{{{SEL}}}[$__range] @ end()))"),
                              "{{app}}")], unit="percentunit", w=24,
                            thresholds=[("green", None), ("red", 0.9)]))
        return q

    p.append(collapsed(lay, "Memory, faults and scheduling", memory_rows))
    p.append(collapsed(lay, "The exporter itself", lambda: exporter_panels(lay)))
    return dashboard("atlas-overview", "Atlas / Overview",
                     "Top applications by CPU, memory, network and disk; crashes, exits and hangs; exporter health.",
                     ["atlas", "atlas-overview"], p, variables(app=False),
                     links=[dash_link("App drill-down", "atlas-app"), dash_link("Fleet", "atlas-fleet")])


def exporter_panels(lay: Layout) -> list[dict[str, Any]]:
    q: list[dict[str, Any]] = []
    q.append(timeseries(lay, "Exporter CPU", "CPU cores used by atlas-exporter itself (process_cpu_seconds_total).",
                        [(f"sum by (instance) ({rate('process_cpu_seconds_total', SEL)})", "{{instance}}")], w=8))
    q.append(timeseries(lay, "Exporter memory", "Resident memory of atlas-exporter itself.",
                        [(f"max by (instance) (process_resident_memory_bytes{{{SEL}}})", "{{instance}}")],
                        unit="bytes", w=8))
    q.append(timeseries(lay, "Scrape duration", "How long Prometheus took to scrape each exporter "
                        "(scrape_duration_seconds); yellow above 1 s, red at the default 10 s scrape timeout.",
                        [(f"max by (instance) (scrape_duration_seconds{{{SEL}}})", "{{instance}}")], unit="s", w=8,
                        thresholds=[("green", None), ("yellow", 1), ("red", 10)]))
    q.append(state_timeline(lay, "Collector success", "1 when the collector succeeded on the last scrape, 0 when "
                            "it failed (atlas_scrape_collector_success).",
                            f"min by (instance, collector) (atlas_scrape_collector_success{{{SEL}}})",
                            "{{collector}} {{instance}}"))
    q.append(timeseries(lay, "Collector duration", "Time each sub-collector took per scrape.",
                        [(f"max by (instance, collector) (atlas_scrape_collector_duration_seconds{{{SEL}}})",
                          "{{collector}} {{instance}}")], unit="s"))
    q.append(timeseries(lay, "Process read errors", "Processes or fields the exporter could not read, per second, "
                        "by reason. access_denied means missing privileges (series for those processes are absent); "
                        "vanished means the process exited while being read.",
                        [(f"sum by (instance, reason) ({rate('atlas_process_read_errors_total', SEL)})",
                          "{{reason}} {{instance}}")]))
    q.append(timeseries(lay, "Names folded into other", "App names sent to app=\"other\" because max_apps was "
                        "reached, per interval. Any at all means the cap is too low for the host, or a naming rule "
                        "makes a new name per process.",
                        [(f"sum by (instance) ({events('atlas_app_names_folded_total', SEL, '$__interval')}) > 0",
                          "{{instance}}")], bars=True, decimals=0))
    dsrc = table(lay, "Data sources", "Which data sources each exporter uses, and at what privilege "
                 "(atlas_source_active). A source that is off explains absent series; the exporter's status page at "
                 "/ says why.",
                 [("State", f"max by (instance, source, privilege) (atlas_source_active{{{SEL}}})", "short")],
                 key="source", sort="State", link_app=False, h=8,
                 extra_names={"source": "Source", "privilege": "Privilege"})
    dsrc["options"]["sortBy"] = [{"displayName": "State", "desc": False}]
    dsrc["fieldConfig"]["defaults"]["custom"]["cellOptions"] = {"type": "color-text"}
    dsrc["fieldConfig"]["defaults"]["mappings"] = [{"type": "value", "options": {
        "0": {"text": "off", "color": "red", "index": 0}, "1": {"text": "active", "color": "green", "index": 1}}}]
    q.append(dsrc)
    return q


# ---------------------------------------------------------------- Atlas / App

def app_dashboard() -> dict[str, Any]:
    lay = Layout()
    p: list[dict[str, Any]] = []
    cpu = rate("atlas_app_cpu_seconds_total", ASEL)
    crashes_range = events("atlas_app_crashes_total", ASEL, "$__range")
    p.append(row(lay, "$app now"))
    p.append(stat(lay, "Processes", "Processes of the app now, over the selected hosts.",
                  [(f"sum by (app) (atlas_app_processes{{{ASEL}}})", "{{app}}")], w=3))
    p.append(stat(lay, "Threads", "Threads of the app now.",
                  [(f"sum by (app) (atlas_app_threads{{{ASEL}}})", "{{app}}")], w=3))
    p.append(stat(lay, "CPU", "CPU cores in use (user + system).",
                  [(f"sum by (app) ({cpu})", "{{app}}")], decimals=2, w=3))
    p.append(stat(lay, "CPU % of host", "CPU in use as a percentage of the hosts' logical CPUs (atlas_host_cpus).",
                  [(f"100 * sum by (app) ({cpu}) / scalar(sum(max by (instance) (atlas_host_cpus{{{SEL}}})))",
                    "{{app}}")], unit="percent", decimals=1, w=3))
    p.append(stat(lay, "Resident memory", "Resident memory now.",
                  [(f"sum by (app) (atlas_app_resident_memory_bytes{{{ASEL}}})", "{{app}}")], unit="bytes",
                  decimals=None, w=3))
    p.append(stat(lay, "Running for", "Age of the app's oldest process: a small value means it restarted.",
                  [(f"time() - min by (app) (atlas_app_oldest_start_time_seconds{{{ASEL}}})", "{{app}}")],
                  unit="s", decimals=None, w=3))
    p.append(stat(lay, "Crashes", "Crashes in the selected time range (OOM kills included).",
                  [(f"sum by (app) ({crashes_range})", "{{app}}")], red_at=1, instant=True, w=3,
                  color_mode="background"))
    p.append(stat(lay, "Last crash", "When the app last crashed.",
                  [(f"max by (app) (atlas_app_last_crash_timestamp_seconds{{{ASEL}}}) * 1000", "{{app}}")],
                  unit="dateTimeFromNow", decimals=None, w=3))

    p.append(row(lay, "CPU and memory"))
    p.append(timeseries(lay, "CPU by mode", "CPU cores used, user and system, per host.",
                        [(f"sum by (instance, app, mode) ({cpu})", "{{app}} {{mode}} {{instance}}")], stack=True))
    p.append(timeseries(lay, "CPU % of host", "CPU used as a percentage of the host's logical CPUs "
                        "(atlas_host_cpus): 100 % is every core of the host busy.",
                        [(CPU_PCT_OF_HOST.format(rate=cpu, sel=SEL), "{{app}} {{instance}}")], unit="percent"))
    p.append(timeseries(lay, "Resident memory", "Resident memory per host.",
                        [(f"sum by (instance, app) (atlas_app_resident_memory_bytes{{{ASEL}}})",
                          "{{app}} {{instance}}")], unit="bytes", w=8))
    p.append(timeseries(lay, "Processes and threads", "Processes and threads per host.",
                        [(f"sum by (instance, app) (atlas_app_processes{{{ASEL}}})", "{{app}} processes {{instance}}"),
                         (f"sum by (instance, app) (atlas_app_threads{{{ASEL}}})", "{{app}} threads {{instance}}")],
                        w=8))
    p.append(timeseries(lay, "Process age", "Age of the oldest process per host: a drop means a restart.",
                        [(f"time() - min by (instance, app) (atlas_app_oldest_start_time_seconds{{{ASEL}}})",
                          "{{app}} {{instance}}")], unit="s", w=8))
    p.append(timeseries(lay, "Open file descriptors", "Open file descriptors per host.",
                        [(f"sum by (instance, app) (atlas_app_open_fds{{{ASEL}}})", "{{app}} {{instance}}")]))
    p.append(timeseries(lay, "Fd limit used", "The largest share of its open-files limit (soft RLIMIT_NOFILE) that "
                        "one process of the app uses; AtlasAppFdExhaustion fires above 90 %.",
                        [(f"max by (instance, app) (atlas_app_open_fds_limit_ratio{{{ASEL}}})",
                          "{{app}} {{instance}}")], unit="percentunit", thresholds=[("green", None), ("red", 0.9)]))

    p.append(row(lay, "Disk and network"))
    p.append(timeseries(lay, "Disk bytes", "Bytes per second read from storage (above the axis) and written to it "
                        "(below); cancelled: written bytes dropped before writeback (a file deleted or truncated "
                        "first).",
                        [(f"sum by (instance, app) ({rate('atlas_app_disk_read_bytes_total', ASEL)})",
                          "{{app}} read {{instance}}"),
                         (f"sum by (instance, app) ({rate('atlas_app_disk_written_bytes_total', ASEL)})",
                          "{{app}} written {{instance}}"),
                         (f"sum by (instance, app) ({rate('atlas_app_disk_cancelled_write_bytes_total', ASEL)})",
                          "{{app}} cancelled {{instance}}")],
                        unit="Bps", w=8, min0=False, overrides=[negative_y(".* (written|cancelled) .*")]))
    p.append(timeseries(lay, "I/O operations", "Read (above) and write (below) system calls per second.",
                        [(f"sum by (instance, app) ({rate('atlas_app_io_read_ops_total', ASEL)})",
                          "{{app}} read {{instance}}"),
                         (f"sum by (instance, app) ({rate('atlas_app_io_write_ops_total', ASEL)})",
                          "{{app}} write {{instance}}")],
                        unit="ops", w=8, min0=False, overrides=[negative_y(".* write .*")]))
    p.append(timeseries(lay, "Processes in disk wait", "Processes in uninterruptible (disk) wait now.",
                        [(f"sum by (instance, app) (atlas_app_disk_wait_processes{{{ASEL}}})", "{{app}} {{instance}}")],
                        w=8))
    p.append(timeseries(lay, "Network bytes", "TCP bytes per second received (above the axis) and transmitted "
                        "(below). UDP is not counted.",
                        [(f"sum by (instance, app) ({rate('atlas_app_network_receive_bytes_total', ASEL)})",
                          "{{app}} received {{instance}}"),
                         (f"sum by (instance, app) ({rate('atlas_app_network_transmit_bytes_total', ASEL)})",
                          "{{app}} transmitted {{instance}}")],
                        unit="Bps", w=24, min0=False, overrides=[negative_y(".* transmitted .*")]))

    p.append(row(lay, "Crashes, exits and hangs"))
    p.append(timeseries(lay, "Crashes by reason", "Crashes per interval by signal (oom_kill: the OOM killer). "
                        "Each crash is counted in exactly one bar.",
                        [(f"sum by (app, reason) ({events('atlas_app_crashes_total', ASEL, '$__interval')}) > 0",
                          "{{app}} {{reason}}")], bars=True, w=8, decimals=0))
    p.append(timeseries(lay, "Exits by outcome", "Process exits per interval: success (code 0), error (non-zero "
                        "code) and signal (killed by any signal).",
                        [(f"sum by (app, outcome) ({events('atlas_app_exits_total', ASEL, '$__interval')}) > 0",
                          "{{app}} {{outcome}}")], bars=True, w=8, decimals=0))
    p.append(timeseries(lay, "OOM kills", "Processes killed by the kernel's OOM killer per interval.",
                        [(f"sum by (app) ({events('atlas_app_crashes_total', ASEL + OOM, '$__interval')}) > 0",
                          "{{app}}")], bars=True, w=8, decimals=0))
    p.append(timeseries(lay, "Hangs", "Processes hung now and hang episodes that started per interval.",
                        [(f"sum by (instance, app) (atlas_app_hung_processes{{{ASEL}}})",
                          "{{app}} hung now {{instance}}"),
                         (f"sum by (instance, app) ({events('atlas_app_hangs_total', ASEL, '$__interval')}) > 0",
                          "{{app}} new hangs {{instance}}")], w=24, decimals=0, interval=BAR_INTERVAL,
                        overrides=[bars_for(".* new hangs .*")]))

    def details() -> list[dict[str, Any]]:
        q: list[dict[str, Any]] = []
        q.append(timeseries(lay, "Virtual memory and swap", "Virtual size (address space), swapped-out memory and, "
                            "with --collector.smaps, proportional set size (PSS).",
                            [(f"sum by (instance, app) (atlas_app_virtual_memory_bytes{{{ASEL}}})",
                              "{{app}} virtual {{instance}}"),
                             (f"sum by (instance, app) (atlas_app_swap_bytes{{{ASEL}}})", "{{app}} swap {{instance}}"),
                             (f"sum by (instance, app) (atlas_app_proportional_memory_bytes{{{ASEL}}})",
                              "{{app}} PSS {{instance}}")], unit="bytes"))
        q.append(timeseries(lay, "Page faults", "Minor (no I/O) and major (read from disk) page faults per second.",
                            [(f"sum by (instance, app) ({rate('atlas_app_minor_page_faults_total', ASEL)})",
                              "{{app}} minor {{instance}}"),
                             (f"sum by (instance, app) ({rate('atlas_app_major_page_faults_total', ASEL)})",
                              "{{app}} major {{instance}}")], unit="ops"))
        q.append(timeseries(lay, "Context switches", "Voluntary (waiting) and involuntary (preempted) context "
                            "switches per second.",
                            [(f"sum by (instance, app, kind) ({rate('atlas_app_context_switches_total', ASEL)})",
                              "{{app}} {{kind}} {{instance}}")], unit="ops"))
        q.append(timeseries(lay, "Process states", "Processes by state: running, sleeping, disk_sleep (D), "
                            "stopped, zombie, idle.",
                            [(f"sum by (app, state) (atlas_app_process_states{{{ASEL}}})", "{{app}} {{state}}")],
                            stack=True))
        return q

    p.append(collapsed(lay, "Memory details and scheduling", details))
    anns = [
        annotation("Crashes", "red",
                   f"sum by (instance, app, reason) ({events('atlas_app_crashes_total', ASEL, '1m')}) > 0",
                   "{{app}} crashed ({{reason}})", "{{app}} on {{instance}}: crash by {{reason}}",
                   "app,instance,reason"),
        annotation("Hangs", "orange", f"sum by (instance, app) ({events('atlas_app_hangs_total', ASEL, '1m')}) > 0",
                   "{{app}} hung", "{{app}} on {{instance}}: a process hung past the threshold", "app,instance"),
    ]
    return dashboard("atlas-app", "Atlas / App",
                     "One or more applications in detail: every per-app metric, with crash and hang annotations.",
                     ["atlas", "atlas-app"], p, variables(app=True), annotations=anns,
                     links=[dash_link("Overview", "atlas-overview")])


# ---------------------------------------------------------------- Atlas / Fleet (recorded series only)

def fleet() -> dict[str, Any]:
    lay = Layout()
    p: list[dict[str, Any]] = []
    crashes = "instance_app_reason:atlas_app_crashes_total:sum"
    exits = "instance_app_outcome:atlas_app_exits_total:sum"
    hangs = "instance_app:atlas_app_hangs_total:sum"
    p.append(row(lay, "Fleet at a glance"))
    p.append(stat(lay, "Apps", "Apps with live processes on any host.",
                  [("count(app:atlas_app_processes:sum > 0)", "apps")], instant=True))
    p.append(stat(lay, "Hosts", "Exporters that answered their last scrape (up) and those that did not; any down "
                  "is red.", [(f"sum(up{{{SEL}}})", "up"), (f"count(up{{{SEL}}} == 0) or vector(0)", "down")],
                  instant=True,
                  overrides=[_by_name("down", [{"id": "thresholds", "value": {"mode": "absolute", "steps": [
                      {"color": "green", "value": None}, {"color": "red", "value": 1}]}}])]))
    p.append(stat(lay, "Processes", "Processes of every app on every host.",
                  [("sum(app:atlas_app_processes:sum)", "processes")], instant=True))
    p.append(stat(lay, "CPU in use", "CPU cores in use by every app on every host (5-minute rate).",
                  [("sum(app:atlas_app_cpu_seconds:rate5m)", "cores")], decimals=2))
    p.append(stat(lay, "Crashes", "Crashes on the selected hosts in the selected time range, OOM kills included.",
                  [(f"sum({fleet_events(crashes, SEL, '$__range')}) or {measured(FLEET_CRASH_ACTIVE, SEL)}",
                    "crashes")], red_at=1,
                  instant=True, color_mode="background"))
    p.append(stat(lay, "Hung processes", "Processes hung now, every host.",
                  [(f"sum(app:atlas_app_hung_processes:sum) or {measured(FLEET_HANG_ACTIVE, SEL)}", "hung")],
                  red_at=1, instant=True,
                  color_mode="background"))

    p.append(row(lay, "Top apps across the fleet"))
    for title, metric, unit, desc in (
            ("Top apps by CPU", "app:atlas_app_cpu_seconds:rate5m", "short", "CPU cores per app, every host."),
            ("Top apps by memory", "app:atlas_app_resident_memory_bytes:sum", "bytes",
             "Resident memory per app, every host."),
            ("Top apps by network", "app:atlas_app_network_bytes:rate5m", "Bps", "TCP bytes per second received plus "
             "transmitted per app, every host."),
            ("Top apps by disk", "app:atlas_app_disk_bytes:rate5m", "Bps", "Bytes per second read plus written per "
             "app, every host.")):
        p.append(timeseries(lay, title, desc + " The ten apps with the highest average over the selected range.",
                            [(top10(metric, f"avg_over_time({metric}[$__range] @ end())"), "{{app}}")], unit=unit))
    p.append(table(lay, "Apps across the fleet", "Every app: on how many hosts it runs, and its processes, CPU, "
                   "memory, swap, disk and network over every host, the largest share of an fd limit, and crashes in "
                   "the last hour.",
                   [("Hosts", "app:atlas_app_instances:count", "short"),
                    ("Processes", "app:atlas_app_processes:sum", "short"),
                    ("CPU (cores)", "app:atlas_app_cpu_seconds:rate5m", "short"),
                    ("Memory", "app:atlas_app_resident_memory_bytes:sum", "bytes"),
                    ("Swap", "app:atlas_app_swap_bytes:sum", "bytes"),
                    ("Disk", "app:atlas_app_disk_bytes:rate5m", "Bps"),
                    ("Network", "app:atlas_app_network_bytes:rate5m", "Bps"),
                    ("Fd limit used", "app:atlas_app_open_fds_limit_ratio:max", "percentunit"),
                    ("Crashes (1h)", "round(app:atlas_app_crashes:increase1h)", "short")],
                   sort="CPU (cores)", h=10))

    p.append(row(lay, "Crashes, exits and hangs"))
    p.append(table(lay, "Crashes, exits and hangs by host", "Apps and hosts with crashes, OOM kills, error exits or "
                   "hang episodes in the selected range.",
                   [("Crashes", f"round(sum by (instance, app) ({fleet_events(crashes, SEL, '$__range')})) > 0",
                     "short"),
                    ("OOM kills", "round(sum by (instance, app) ("
                     + fleet_events(crashes, SEL + ', reason="oom_kill"', "$__range") + ")) > 0", "short"),
                    ("Error exits", "round(sum by (instance, app) ("
                     + fleet_events(exits, SEL + ', outcome="error"', "$__range") + ")) > 0", "short"),
                    ("Hang episodes", f"round(sum by (instance, app) ({fleet_events(hangs, SEL, '$__range')})) > 0",
                     "short")], w=24))
    p.append(timeseries(lay, "Crashes by reason", "Crashes per interval on the selected hosts, by signal; each crash "
                        "is counted in exactly one bar.",
                        [(f"sum by (reason) ({fleet_events(crashes, SEL, '$__interval')}) > 0", "{{reason}}")],
                        bars=True, w=8, decimals=0))
    p.append(timeseries(lay, "Exits by outcome", "Process exits per interval on the selected hosts.",
                        [(f"sum by (outcome) ({fleet_events(exits, SEL, '$__interval')}) > 0", "{{outcome}}")],
                        bars=True, w=8, decimals=0))
    p.append(timeseries(lay, "OOM kills", "OOM kills per interval on the selected hosts, by app.",
                        [(f"sum by (app) ({fleet_events(crashes, SEL + OOM, '$__interval')}) > 0",
                          "{{app}}")], bars=True, w=8, decimals=0))

    def hosts() -> list[dict[str, Any]]:
        q: list[dict[str, Any]] = []
        pair = f"instance_app:atlas_app_cpu_seconds:rate5m{{{SEL}}}"
        q.append(timeseries(lay, "Top app and host pairs by CPU", "CPU cores per app and host. The ten pairs with the "
                            "highest average over the range.",
                            [(f"{pair}\nand on (instance, app)\ntopk(10, avg_over_time({pair}[$__range] @ end()))",
                              "{{app}} {{instance}}")]))
        q.append(state_timeline(lay, "Collectors", "1 when every collector of the exporter succeeded, 0 when one "
                                "failed "
                                "(instance:atlas_scrape_collector_success:min).",
                                f"instance:atlas_scrape_collector_success:min{{{SEL}}}", "{{instance}}"))
        return q

    p.append(collapsed(lay, "Hosts", hosts))
    return dashboard("atlas-fleet", "Atlas / Fleet",
                     "Every host and app from the recording rules' series only: works on a central store that "
                     "receives nothing else (remote write, federation).",
                     ["atlas", "atlas-fleet"], p, variables(app=False, fleet=True),
                     links=[dash_link("Overview", "atlas-overview")])


DASHBOARDS = {"atlas-overview.json": overview, "atlas-app.json": app_dashboard, "atlas-fleet.json": fleet}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        text = render(build)
        path = OUT / name
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date, run python3 grafana/build.py: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
