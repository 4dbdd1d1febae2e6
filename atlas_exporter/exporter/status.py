"""The status page at `/`: version, data sources with their privilege and why any is off,
and the current top apps, so a person can see at a glance why a value is missing.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable

from atlas_exporter import __version__
from atlas_exporter.model import AppView, Snapshot, SourceStatus

TOP_APPS = 15


def _mib(value: int | None) -> str:
    return "" if value is None else f"{value / 1048576:.1f}"


class StatusPage:
    """Renders HTML from the shared snapshot and the sources' statuses.

    CPU % is the CPU time an app used between the two latest snapshots this page saw, as a
    percentage of one core.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], statuses: Callable[[], list[SourceStatus]], *,
                 telemetry_path: str = "/metrics", platform_name: str = "", notes: tuple[str, ...] = (),
                 folded: Callable[[], tuple[int, int]] | None = None) -> None:
        self.snapshot = snapshot
        self.folded = folded
        self.statuses = statuses
        self.telemetry_path = telemetry_path
        self.platform_name = platform_name
        self.notes = notes
        self._lock = threading.Lock()
        self._older: Snapshot | None = None
        self._newer: Snapshot | None = None

    def _cpu_percent(self, snap: Snapshot) -> dict[str, float]:
        with self._lock:
            if self._newer is None or snap.monotonic > self._newer.monotonic:
                self._older, self._newer = self._newer, snap
            prev = self._older
        if prev is None or snap.monotonic <= prev.monotonic:
            return {}
        interval = snap.monotonic - prev.monotonic
        out = {}
        for name, app in snap.apps.items():
            before = prev.apps.get(name)
            now_cpu = app.cpu_seconds_total()
            before_cpu = before.cpu_seconds_total() if before is not None else None
            if now_cpu is not None and before_cpu is not None:
                out[name] = max(now_cpu - before_cpu, 0.0) / interval * 100
        return out

    def render(self) -> str:
        snap = self.snapshot()
        cpu = self._cpu_percent(snap)
        live = [a for a in snap.apps.values() if a.processes > 0]

        def rank(app: AppView) -> tuple[float, int]:
            return (cpu.get(app.name, 0.0), app.resident_bytes or 0)

        top = sorted(live, key=rank, reverse=True)[:TOP_APPS]
        esc = html.escape
        rows_sources = "\n".join(
            f"<tr><td>{esc(s.name)}</td><td class=\"{'on' if s.active else 'off'}\">"
            f"{'active' if s.active else 'off'}</td><td>{esc(s.privilege)}</td><td>{esc(s.reason)}"
            f"{''.join(f'<br>{esc(d)}' for d in s.details)}</td></tr>"
            for s in self.statuses()
        )
        rows_apps = "\n".join(
            f"<tr><td>{esc(a.name)}</td><td>{a.processes}</td><td>{'' if a.threads is None else a.threads}</td>"
            f"<td>{'' if a.name not in cpu else f'{cpu[a.name]:.1f}'}</td><td>{_mib(a.resident_bytes)}</td>"
            f"<td>{'' if a.open_fds is None else a.open_fds}</td></tr>"
            for a in top
        )
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes)
        fold = ""
        if self.folded is not None:
            count, cap = self.folded()
            fold = (f'\n<p id="fold">max_apps {cap}: {count} app names folded into "other"'
                    f'{" (raise max_apps or group processes with naming rules)" if count else ""}.</p>')
        path = esc(self.telemetry_path)
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>atlas-exporter</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:left}} th{{background:#f3f3f3}}
.on{{color:#176f2c;font-weight:600}} .off{{color:#a3161b;font-weight:600}}
</style></head>
<body>
<h1>atlas-exporter</h1>
<p>Version {esc(__version__)} on {esc(self.platform_name)}. Metrics: <a href="{path}">{path}</a>.
{len(live)} apps with live processes.</p>{fold}
<h2>Data sources</h2>
<table id="sources"><tr><th>source</th><th>state</th><th>privilege</th><th>why</th></tr>
{rows_sources}
</table>
<h2>Top apps</h2>
<table id="apps"><tr><th>app</th><th>processes</th><th>threads</th><th>CPU %</th><th>resident MiB</th>
<th>open fds</th></tr>
{rows_apps}
</table>
<h2>Notes</h2><ul>{notes}</ul>
</body></html>
"""
