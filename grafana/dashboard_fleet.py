"""Atlas / Fleet: every host and app, from the series of deploy/prometheus/recording.yml only.

That is what a central store fed by remote write or federation holds (docs/fleet.md).
`fleet()` returns the dashboard as a JSON object (grafana/dashboards/atlas-fleet.json).
"""

from __future__ import annotations

from typing import Any

from panels import (
    Layout,
    by_name,
    collapsed,
    dash_link,
    dashboard,
    row,
    stat,
    state_timeline,
    table,
    timeseries,
    variables,
)
from promql import FLEET_CRASH_ACTIVE, FLEET_HANG_ACTIVE, OOM, SEL, fleet_events, measured, top10


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
                  overrides=[by_name("down", [{"id": "thresholds", "value": {"mode": "absolute", "steps": [
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

