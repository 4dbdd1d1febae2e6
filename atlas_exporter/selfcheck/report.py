"""The self-check's result and its report: rows compared within tolerances, the data sources, the verdict.

`render(result, out, platform_name=..., privilege=...)` prints one table, a line per data source
and a one-line verdict:

    app      quantity                exporter  reference  difference  verdict
    nginx    cpu_seconds (psutil)       12.51      12.50        0.01  ok
    nginx    resident_bytes (ps)     52428800   52432896       -4096  ok
    ...
    self-check: OK, all 14 comparisons agree
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TextIO

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Allowed |exporter - reference| beyond the before/after range: `absolute` plus `relative` of the reference."""

    absolute: float
    relative: float
    why: str
    per_process: bool = False  # `absolute` applies to each process summed

    def allowed(self, reference: float, processes: int = 1) -> float:
        return self.absolute * (max(processes, 1) if self.per_process else 1) + self.relative * abs(reference)


TOLERANCES: dict[str, Tolerance] = {
    "processes": Tolerance(0, 0.0, "exact: every pid the exporter counts is alive in ps"),
    "cpu_seconds": Tolerance(0.05, 0.02, "0.05 s + 2 %"),
    "cpu_seconds_ps": Tolerance(1.0, 0.02, "1 s per process + 2 % (ps truncates to whole seconds on Linux)",
                                per_process=True),
    "resident_bytes": Tolerance(1 * MIB, 0.05, "1 MiB + 5 %"),
    "threads": Tolerance(2, 0.0, "2 threads"),
    "open_fds": Tolerance(2, 0.0, "2 fds (the reference opens one to count them)"),
    "virtual_bytes": Tolerance(4 * MIB, 0.05, "4 MiB + 5 %"),
    "disk_read_bytes": Tolerance(64 * 1024, 0.05, "64 KiB + 5 %"),
    "disk_written_bytes": Tolerance(64 * 1024, 0.05, "64 KiB + 5 %"),
    "network_bytes": Tolerance(64 * 1024, 0.05, "64 KiB + 5 % (sockets can close between runs)"),
    "reports": Tolerance(0, 0.0, "exact"),
}


@dataclass(slots=True)
class Row:
    """One line of the table."""

    app: str
    quantity: str
    exporter: float | None
    reference: float | None
    low: float = 0.0  # the reference's range over the exporter's reading
    high: float = 0.0
    tolerance: Tolerance | None = None
    note: str = ""
    processes: int = 1  # how many processes the sums cover

    @property
    def difference(self) -> float | None:
        if self.exporter is None or self.reference is None:
            return None
        return self.exporter - self.reference

    @property
    def ok(self) -> bool:
        if self.exporter is None or self.reference is None:
            return False
        assert self.tolerance is not None
        slack = self.tolerance.allowed(self.high, self.processes)
        return self.low - slack <= self.exporter <= self.high + slack


@dataclass(slots=True)
class SourceLine:
    name: str
    active: bool
    detail: str


@dataclass(slots=True)
class Result:
    rows: list[Row] = field(default_factory=list)
    sources: list[SourceLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.rows) and all(r.ok for r in self.rows)



def _number(value: float | None, quantity: str) -> str:
    if value is None:
        return "absent"
    if quantity.startswith("cpu_seconds"):
        return f"{value:.2f}"
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 or abs(value) >= 100 else f"{value:.1f}"


def render(result: Result, out: TextIO, *, platform_name: str, privilege: str) -> None:
    """The table, the data source lines, the tolerances and a one-line verdict."""
    print(f"atlas-exporter self-check on {platform_name}, as {privilege}", file=out)
    header = ("app", "quantity", "exporter", "reference", "difference", "verdict")
    table = [header]
    for row in result.rows:
        diff = row.difference
        verdict = "ok" if row.ok else "DIFFERS"
        if row.note:
            verdict += f" ({row.note})"
        table.append((row.app, row.quantity, _number(row.exporter, row.quantity),
                      _number(row.reference, row.quantity), "" if diff is None else _number(diff, row.quantity),
                      verdict))
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
              + "  " + r[-1], file=out)
    print("", file=out)
    print("data sources:", file=out)
    for line in result.sources:
        state = "active" if line.active else "not used"
        print(f"  {line.name}: {state}" + (f" ({line.detail})" if line.detail else ""), file=out)
    used = sorted({r.quantity.split(" ")[0] for r in result.rows})
    keys = {q: ("cpu_seconds" if q == "cpu_seconds" else q) for q in used}
    print("tolerances (beyond the reference's before/after range): " + "; ".join(
        f"{q} {TOLERANCES[keys[q]].why}" for q in used if keys[q] in TOLERANCES)
        + ("; cpu_seconds vs ps " + TOLERANCES["cpu_seconds_ps"].why if "cpu_seconds" in used else ""), file=out)
    for err in result.errors:
        print(f"error: {err}", file=out)
    bad = [r for r in result.rows if not r.ok]
    if result.ok:
        print(f"self-check: OK, all {len(result.rows)} comparisons agree", file=out)
    elif not result.rows and not result.errors:
        print("self-check: FAILED, nothing could be compared", file=out)
    else:
        print(f"self-check: FAILED, {len(bad)} of {len(result.rows)} comparisons disagree"
              + (f", {len(result.errors)} errors" if result.errors else ""), file=out)



def privilege_word() -> str:
    return "root" if os.geteuid() == 0 else f"uid {os.geteuid()} (unprivileged)"

