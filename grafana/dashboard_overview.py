"""Atlas / Overview: the top apps of the selected hosts, crashes, exits and hangs, and the exporter itself.

Reads the exporter's raw series. `overview()` returns the dashboard as a JSON object
(grafana/dashboards/atlas-overview.json).
"""

from __future__ import annotations

from typing import Any

from panels import (
    BAR_INTERVAL,
    Layout,
    bars_for,
    by_name,
    collapsed,
    dash_link,
    dashboard,
    negative_y,
    row,
    stat,
    state_timeline,
    table,
    timeseries,
    variables,
)
from promql import CPU_PCT_OF_HOST, CRASH_ACTIVE, ERROR_EXITS, HANG_ACTIVE, OOM, SEL, events, measured, rate, top10


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
                  overrides=[by_name("down", [{"id": "thresholds", "value": {"mode": "absolute", "steps": [
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

