"""The status page at `/`: what an operator opens first on a host.

One dependency-free HTML page (inline CSS and a few lines of JavaScript for sorting): the version,
every data source with its privilege and why any is off, the fold (`max_apps` and how many names
went to `other`), and every app with CPU % (of one core and of the host), memory, disk and network
rates, crashes, hangs and exits by outcome in the last hour, and processes hung now. Click a
column header to sort; `/#sort=cpu` or `/#sort=-crashes` opens the page sorted (a leading `-`
for descending, the default for numbers).

Rates are the change of the app's totals between two snapshots this page took: at start
(`start()` takes a priming snapshot, so the first view already has rates), once a minute in the
background, and at each view. Counts in the last hour come from the same per-app counters as
/metrics (`atlas_app_crashes_total`, `atlas_app_hangs_total`, `atlas_app_exits_total`), sampled
once a minute: the value now minus the value an hour ago (or at start, when the exporter is
younger than an hour; its counters start at 0).
"""

from __future__ import annotations

import html
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric

from atlas_exporter import __version__
from atlas_exporter.collectors.crash.metrics import CRASHES, EXITS
from atlas_exporter.collectors.hang.metrics import HANGS, HUNG_PROCESSES
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.model import AppView, Snapshot, SourceStatus

log = logging.getLogger(__name__)

HOUR = 3600.0
SAMPLE_SECONDS = 60.0
MIN_RATE_SECONDS = 1.0
# Per-app counters read off the collectors' families: (sample name, label that splits it or "").
COUNTERS = {CRASHES.name: "reason", HANGS.name: "", EXITS.name: "outcome"}
GAUGES = {HUNG_PROCESSES.name}
FOLD_APP = "other"


@dataclass(frozen=True, slots=True)
class Counts:
    """Per-app counter totals and gauges at one moment: {(sample name, app, label value): value}."""

    monotonic: float
    values: dict[tuple[str, str, str], float] = field(default_factory=dict)
    measured: frozenset[str] = frozenset()  # sample names whose family was there (maybe with no sample)


def read_counts(families: Iterable[Metric], monotonic: float) -> Counts:
    """The per-app crash, hang and exit counters (and hung processes) among metric families."""
    values: dict[tuple[str, str, str], float] = {}
    measured: set[str] = set()
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name
        if name in COUNTERS or name in GAUGES:
            measured.add(name)
        for sample in family.samples:
            if sample.name in COUNTERS or sample.name in GAUGES:
                app = sample.labels.get("app")
                if app is None:
                    continue
                key = (sample.name, app, sample.labels.get(COUNTERS.get(sample.name, ""), ""))
                values[key] = values.get(key, 0.0) + float(sample.value)
    return Counts(monotonic, values, frozenset(measured))


@dataclass(slots=True)
class Row:
    """One app's line on the page; None is an empty cell (not measured here)."""

    app: AppView
    cpu_percent: float | None = None
    read_rate: float | None = None
    write_rate: float | None = None
    receive_rate: float | None = None
    transmit_rate: float | None = None
    crashes: float | None = None
    hangs: float | None = None
    hung_now: float | None = None
    exits: dict[str, float] = field(default_factory=dict)


def _delta(now: float | None, before: float | None, seconds: float) -> float | None:
    if now is None or before is None or seconds <= 0:
        return None
    return max(now - before, 0.0) / seconds


# (key, header, kind); kind "text" sorts ascending by default, numbers descending.
COLUMNS = (
    ("app", "app", "text"), ("processes", "processes", "num"), ("threads", "threads", "num"),
    ("cpu", "CPU %", "num"), ("cpu_host", "CPU % of host", "num"), ("memory", "resident MiB", "num"),
    ("fds", "open fds", "num"), ("disk_read", "disk read/s", "num"), ("disk_write", "disk write/s", "num"),
    ("net_rx", "net received/s", "num"), ("net_tx", "net sent/s", "num"), ("crashes", "crashes 1 h", "num"),
    ("hangs", "hangs 1 h", "num"), ("hung", "hung now", "num"), ("exit_success", "exits ok 1 h", "num"),
    ("exit_error", "exits error 1 h", "num"), ("exit_signal", "exits signal 1 h", "num"),
)

SCRIPT = """
(function () {
  var table = document.getElementById('apps');
  var heads = table.tHead.rows[0].cells;
  function value(row, i, text) {
    if (text) return row.cells[i].textContent;
    var v = row.cells[i].getAttribute('data-v');
    return v === null || v === '' ? null : parseFloat(v);
  }
  function cmp(x, y) { return x < y ? -1 : x > y ? 1 : 0; }
  function sortBy(key, desc) {
    var i = -1;
    for (var k = 0; k < heads.length; k++) {
      heads[k].removeAttribute('aria-sort');
      if (heads[k].getAttribute('data-key') === key) i = k;
    }
    if (i < 0) return;
    var text = heads[i].getAttribute('data-kind') === 'text';
    if (desc === null) desc = !text;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i, text), y = value(b, i, text);
      if (x === y) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      var c = text ? cmp(x.toLowerCase(), y.toLowerCase()) || cmp(x, y) : x - y;
      return desc ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads[i].setAttribute('aria-sort', desc ? 'descending' : 'ascending');
    table.setAttribute('data-sorted', (desc ? '-' : '+') + key);
    history.replaceState(null, '', '#sort=' + (desc ? '-' : '+') + key);
  }
  for (var k = 0; k < heads.length; k++) {
    heads[k].addEventListener('click', function () {
      var now = this.getAttribute('aria-sort');
      sortBy(this.getAttribute('data-key'), now === null ? null : now === 'ascending');
    });
  }
  var m = /sort=([-+ ]?)([a-z_]+)/.exec(location.hash);
  if (m) sortBy(m[2], m[1] === '-' ? true : (m[1] === '' ? null : false));
})();
"""


class StatusPage:
    """Renders the page from the shared snapshot, the sources' statuses and the per-app counters.

    `counters` returns metric families (the collector's), of which the crash, hang and exit
    counters are read; `folded` returns (names folded into "other", max_apps); `host_cpus` the
    host's logical CPUs. `clock` is time.monotonic by default.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], statuses: Callable[[], list[SourceStatus]], *,
                 telemetry_path: str = "/metrics", platform_name: str = "", notes: tuple[str, ...] = (),
                 folded: Callable[[], tuple[int, int]] | None = None,
                 counters: Callable[[], Iterable[Metric]] | None = None,
                 host_cpus: Callable[[], int | None] = os.cpu_count,
                 clock: Callable[[], float] = time.monotonic, sample_seconds: float = SAMPLE_SECONDS) -> None:
        self.snapshot = snapshot
        self.folded = folded
        self.statuses = statuses
        self.counters = counters
        self.host_cpus = host_cpus
        self.telemetry_path = telemetry_path
        self.platform_name = platform_name
        self.notes = notes
        self.clock = clock
        self.sample_seconds = sample_seconds
        self._lock = threading.Lock()
        self._snaps: deque[Snapshot] = deque(maxlen=4)
        self._history: deque[Counts] = deque()
        self.loop = BackgroundLoop("atlas-status-sampler", self.sample, interval=sample_seconds, log=log)

    # ------------------------------------------------------------ sampling

    def _keep_snapshot(self, snap: Snapshot) -> None:
        with self._lock:
            if not self._snaps or snap.monotonic > self._snaps[-1].monotonic:
                self._snaps.append(snap)

    def _baseline(self, snap: Snapshot) -> Snapshot | None:
        """The newest kept snapshot at least MIN_RATE_SECONDS older than `snap`, else the oldest."""
        with self._lock:
            older = [s for s in self._snaps if s.monotonic < snap.monotonic]
        for candidate in reversed(older):
            if snap.monotonic - candidate.monotonic >= MIN_RATE_SECONDS:
                return candidate
        return older[0] if older else None

    def _sample_counts(self) -> Counts | None:
        if self.counters is None:
            return None
        counts = read_counts(self.counters(), self.clock())
        with self._lock:
            if not self._history or counts.monotonic - self._history[-1].monotonic >= self.sample_seconds / 2:
                self._history.append(counts)
            # keep the newest sample that is at least an hour old, and everything after it
            while len(self._history) > 1 and counts.monotonic - self._history[1].monotonic >= HOUR:
                self._history.popleft()
        return counts

    def sample(self) -> None:
        """Take a snapshot (for rates) and a sample of the per-app counters (for counts in the last hour)."""
        self._keep_snapshot(self.snapshot())
        self._sample_counts()

    def start(self) -> None:
        """The priming sample, so that the first view has rates, then one sample a minute in the background."""
        try:
            self.sample()
        except Exception:  # a status page must never stop the exporter from starting
            log.debug("status page: priming sample failed", exc_info=True)
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    # ------------------------------------------------------------ rows

    def _hour_counts(self, now: Counts) -> tuple[dict[tuple[str, str, str], float], float]:
        """Per key, the increase over the last hour (or since the oldest sample), and the span in seconds."""
        with self._lock:
            history = list(self._history)
        base: Counts | None = None
        for counts in history:
            if now.monotonic - counts.monotonic >= HOUR or base is None:
                base = counts
        if base is None or base is now:
            return {}, 0.0
        out = {}
        for key, value in now.values.items():
            if key[0] in COUNTERS:
                out[key] = max(value - base.values.get(key, 0.0), 0.0)
        return out, now.monotonic - base.monotonic

    def rows(self) -> tuple[list[Row], float | None, float]:
        """Every app's row (live apps, and apps with crashes or exits in the last hour), the seconds the
        rates cover, and the seconds the counts cover."""
        snap = self.snapshot()
        self._keep_snapshot(snap)
        prev = self._baseline(snap)
        seconds = snap.monotonic - prev.monotonic if prev is not None else None
        now = self._sample_counts()
        hour, span = self._hour_counts(now) if now is not None else ({}, 0.0)
        rows: dict[str, Row] = {}
        for name, app in snap.apps.items():
            row = Row(app)
            before = prev.apps.get(name) if prev is not None else None
            if before is not None and seconds:
                cpu = _delta(app.cpu_seconds_total(), before.cpu_seconds_total(), seconds)
                row.cpu_percent = None if cpu is None else cpu * 100
                row.read_rate = _delta(app.read_bytes_total, before.read_bytes_total, seconds)
                row.write_rate = _delta(app.written_bytes_total, before.written_bytes_total, seconds)
                row.receive_rate = _delta(app.network_receive_bytes_total, before.network_receive_bytes_total,
                                          seconds)
                row.transmit_rate = _delta(app.network_transmit_bytes_total, before.network_transmit_bytes_total,
                                           seconds)
            rows[name] = row
        if now is not None:
            for (metric, app_name, label), value in now.values.items():
                if app_name not in rows:
                    if not hour.get((metric, app_name, label)):
                        continue  # an app with no processes and nothing in the last hour
                    rows[app_name] = Row(AppView(name=app_name))
                row = rows[app_name]
                if metric in GAUGES:
                    row.hung_now = (row.hung_now or 0.0) + value
                    continue
                counted = hour.get((metric, app_name, label), 0.0)
                if metric == CRASHES.name:
                    row.crashes = (row.crashes or 0.0) + counted
                elif metric == HANGS.name:
                    row.hangs = (row.hangs or 0.0) + counted
                else:
                    row.exits[label] = row.exits.get(label, 0.0) + counted
        if now is not None:  # measured and none: 0, not an empty cell
            for row in rows.values():
                if row.crashes is None and CRASHES.name in now.measured:
                    row.crashes = 0.0
                if row.hangs is None and HANGS.name in now.measured and row.app.processes > 0:
                    row.hangs = 0.0
                if row.hung_now is None and HUNG_PROCESSES.name in now.measured and row.app.processes > 0:
                    row.hung_now = 0.0
        shown = [r for r in rows.values() if r.app.processes > 0 or r.crashes or r.hangs or any(r.exits.values())]
        shown.sort(key=lambda r: (r.cpu_percent or 0.0, r.app.resident_bytes or 0), reverse=True)
        return shown, seconds, span

    # ------------------------------------------------------------ HTML

    def render(self) -> str:
        rows, seconds, span = self.rows()
        cpus = self.host_cpus()
        esc = html.escape
        rows_sources = "\n".join(
            f"<tr><td>{esc(s.name)}</td><td class=\"{'on' if s.active else 'off'}\">"
            f"{'active' if s.active else 'off'}</td><td>{esc(s.privilege)}</td><td>{esc(s.reason)}"
            f"{''.join(f'<br>{esc(d)}' for d in s.details)}</td></tr>"
            for s in self.statuses()
        )
        body = "\n".join(self._row_html(r, cpus) for r in rows)
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes)
        fold = ""
        if self.folded is not None:
            count, cap = self.folded()
            fold = (f'\n<p id="fold">max_apps {cap}: {count} app names folded into "{FOLD_APP}"'
                    f'{" (raise max_apps or group processes with naming rules)" if count else ""}.</p>')
        rates = (f"Rates over the last {seconds:.0f} s" if seconds is not None and seconds >= 1
                 else "Rates appear after the next sample")
        stale = (f'<p class="bad" id="stale">Rates and counts are no longer updated: {esc(self.loop.dead_reason())}.'
                 '</p>\n' if self.loop.dead else "")  # its own sampler ended
        counts = ("counts over the last hour" if span >= HOUR - self.sample_seconds
                  else f"counts since the exporter started ({span / 60:.0f} min ago)")
        heads = "".join(f'<th data-key="{k}" data-kind="{kind}" title="sort">{esc(h)}</th>' for k, h, kind in COLUMNS)
        path = esc(self.telemetry_path)
        live = sum(1 for r in rows if r.app.processes > 0)
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>atlas-exporter</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}} th{{background:#f3f3f3}}
#apps th{{cursor:pointer;user-select:none}} #apps td.n{{text-align:right;font-variant-numeric:tabular-nums}}
#apps th[aria-sort=descending]::after{{content:" \\25BC"}} #apps th[aria-sort=ascending]::after{{content:" \\25B2"}}
#apps tr.fold td{{background:#fff6e0}} .bad{{color:#a3161b;font-weight:600}}
.on{{color:#176f2c;font-weight:600}} .off{{color:#a3161b;font-weight:600}}
</style></head>
<body>
<h1>atlas-exporter</h1>
<p>Version {esc(__version__)} on {esc(self.platform_name)}, {cpus or "?"} logical CPUs.
Metrics: <a href="{path}">{path}</a>. {live} apps with live processes.</p>{fold}
<h2>Data sources</h2>
<table id="sources"><tr><th>source</th><th>state</th><th>privilege</th><th>why</th></tr>
{rows_sources}
</table>
<h2>Apps</h2>
{stale}<p id="window">{rates}; {counts}. CPU % is of one core; click a header to sort.</p>
<table id="apps"><thead><tr>{heads}</tr></thead>
<tbody>
{body}
</tbody></table>
<h2>Notes</h2><ul>{notes}</ul>
<script>{SCRIPT}</script>
</body></html>
"""

    @staticmethod
    def _row_html(r: Row, cpus: int | None) -> str:
        a = r.app

        def num(value: float | None, text: str | None = None, bad: bool = False) -> str:
            if value is None:
                return '<td class="n" data-v=""></td>'
            shown = text if text is not None else f"{value:g}"
            cls = "n bad" if bad and value > 0 else "n"
            return f'<td class="{cls}" data-v="{value:.6g}">{shown}</td>'

        def rate(value: float | None) -> str:
            if value is None:
                return num(None)
            for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
                if value >= size:
                    return num(value, f"{value / size:.1f} {unit}")
            return num(value, f"{value:.0f} B")

        cpu_host = None if r.cpu_percent is None or not cpus else r.cpu_percent / cpus
        cells = [
            f"<td>{html.escape(a.name)}</td>", num(a.processes), num(a.threads),
            num(r.cpu_percent, None if r.cpu_percent is None else f"{r.cpu_percent:.1f}"),
            num(cpu_host, None if cpu_host is None else f"{cpu_host:.1f}"),
            num(None if a.resident_bytes is None else a.resident_bytes / 1048576,
                None if a.resident_bytes is None else f"{a.resident_bytes / 1048576:.1f}"),
            num(a.open_fds), rate(r.read_rate), rate(r.write_rate), rate(r.receive_rate), rate(r.transmit_rate),
            num(r.crashes, bad=True), num(r.hangs, bad=True), num(r.hung_now, bad=True),
            num(r.exits.get("success", 0.0) if r.exits else None),
            num(r.exits.get("error", 0.0) if r.exits else None, bad=True),
            num(r.exits.get("signal", 0.0) if r.exits else None),
        ]
        fold = ' class="fold" title="app names beyond max_apps are counted here"' if a.name == FOLD_APP else ""
        return f"<tr{fold}>{''.join(cells)}</tr>"
