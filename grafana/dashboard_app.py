"""Atlas / App: one or more apps (`$app`) in detail, every per-app metric, with crash and hang annotations.

Reads the exporter's raw series. `app_dashboard()` returns the dashboard as a JSON object
(grafana/dashboards/atlas-app.json).
"""

from __future__ import annotations

from typing import Any

from panels import (
    BAR_INTERVAL,
    Layout,
    annotation,
    bars_for,
    collapsed,
    dash_link,
    dashboard,
    negative_y,
    row,
    stat,
    timeseries,
    variables,
)
from promql import ASEL, CPU_PCT_OF_HOST, OOM, SEL, events, rate


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

