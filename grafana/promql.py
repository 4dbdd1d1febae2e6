"""PromQL shapes shared by every dashboard panel (grafana/build.py writes the dashboards).

- `events(c, W)` counts the events of a counter in a window exactly, through scrape gaps,
  exporter restarts, retired apps and an app's first event, as deploy/prometheus/alerts.yml does.
- Top-N graphs keep the ten apps with the highest average over the range (`@ end()`, `top10`),
  so that the legend does not fill with apps that were in the top ten once.
- `measured(active, sel)` is 0 where a host's source for a quantity is on and no data where it is
  off, so a stat reads "No data", not a reassuring 0.

    rate("atlas_app_cpu_seconds_total", SEL)
    -> 'rate(atlas_app_cpu_seconds_total{job=~"$job", instance=~"$instance"}[$__rate_interval])'
"""

from __future__ import annotations

SEL = 'job=~"$job", instance=~"$instance"'
ASEL = 'job=~"$job", instance=~"$instance", app=~"$app"'
ERROR_EXITS = ', outcome="error"'
OOM = ', reason="oom_kill"'


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


CPU_PCT_OF_HOST = ("100 * sum by (instance, app) ({rate}) / on (instance) group_left () "
                   "max by (instance) (atlas_host_cpus{{{sel}}})")

