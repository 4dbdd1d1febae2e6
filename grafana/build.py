"""Builds the Grafana dashboards in grafana/dashboards/ from the dashboard modules beside it.

    python3 grafana/build.py           # rewrite the JSON files
    python3 grafana/build.py --check   # exit 1 when a JSON file differs from what this builds

The JSON files are what Grafana imports and provisions; these modules are how they are written,
so that the same query shapes are used everywhere (tests/test_grafana_dashboards.py checks both
agree): `promql.py` holds the query shapes, `panels.py` the panel builders, and one module per
dashboard its panels:

- `dashboard_overview.py`: Atlas / Overview, the top apps of the selected hosts;
- `dashboard_app.py`: Atlas / App, the drill-down with a `$app` variable;
- `dashboard_fleet.py`: Atlas / Fleet, which reads only the series of
  deploy/prometheus/recording.yml (and `up`), what a central store fed by remote write or
  federation holds (docs/fleet.md). The other two read the exporter's raw series.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboard_app import app_dashboard
from dashboard_fleet import fleet
from dashboard_overview import overview

OUT = Path(__file__).resolve().parent / "dashboards"

DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "atlas-overview.json": overview, "atlas-app.json": app_dashboard, "atlas-fleet.json": fleet}


def render(build: Callable[[], dict[str, Any]]) -> str:
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
