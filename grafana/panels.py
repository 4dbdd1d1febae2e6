"""Panel builders for the dashboards grafana/build.py writes: each returns one Grafana JSON object.

`Layout` places panels left to right on Grafana's 24-column grid; `timeseries`, `stat`, `table`,
`state_timeline`, `row` and `collapsed` make panels; `variables`, `annotation`, `dash_link` and
`dashboard` assemble a dashboard around them.

- Bars of event counts use a panel interval (`BAR_INTERVAL`) and `W = $__interval`, so that the
  windows tile the time axis: one crash is one bar of height 1, never four.
- Mirror graphs (received up, sent down) use Grafana's negative-Y transform (`negative_y`), so
  that legends and tooltips show positive rates.
"""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
APP_LINK = ("/d/atlas-app/atlas-app?${datasource:queryparam}&${job:queryparam}&${instance:queryparam}"
            "&var-app=${__value.raw}&${__url_time_range}")
BAR_INTERVAL = "1m"


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
               w: int = 12, h: int = 8, bars: bool = False, stack: bool = False,
               overrides: list[dict[str, Any]] | None = None, min0: bool = True,
               thresholds: list[tuple[str, float | None]] | None = None,
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
         overrides: list[dict[str, Any]] | None = None, color_mode: str = "value") -> dict[str, Any]:
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


def by_name(name: str, props: list[dict[str, Any]]) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


def table(lay: Layout, title: str, description: str, columns: list[tuple[str, str, str]], *, key: str = "app",
          sort: str | None = None, w: int = 24, h: int = 9, link_app: bool = True,
          extra_names: dict[str, str] | None = None) -> dict[str, Any]:
    """A table of instant queries, one column each: (header, expr, unit). Rows are merged on `key` labels."""
    overrides = [by_name(header, [{"id": "unit", "value": unit}]) for header, _, unit in columns]
    if link_app:
        overrides.append(by_name("App", [{"id": "links", "value": [
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

