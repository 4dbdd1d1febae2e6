"""The one metric declaration type, `MetricSpec`, and the catalog of every metric the exporter emits.

Each collector declares its metrics once, in its own `metrics.py`, as `MetricSpec`s; the
collectors, the CSV mirror, the status page and the README's metric table all read those
declarations. `catalog()` gathers them, so a test can check that every series in /metrics is
declared and that the README lists every name.

    RESIDENT = MetricSpec("atlas_app_resident_memory_bytes", "gauge", "Resident memory ...", unit="bytes",
                          labels=("app",))
    family = RESIDENT.family()          # an empty GaugeMetricFamily with the label names
    family.add_metric(["nginx"], 5.24288e07)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

MetricType = Literal["counter", "gauge"]
Family = CounterMetricFamily | GaugeMetricFamily
UNITS = ("seconds", "bytes", "ratio", "")  # "" for counts (processes, events, errors)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as /metrics shows it: full name (counters end in `_total`), type, help, unit, labels."""

    name: str
    type: MetricType
    help: str
    unit: str = ""
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name} must end in _total")
        if self.unit not in UNITS:
            raise ValueError(f"{self.name}: unit {self.unit!r} is not a base unit")
        if self.unit and f"_{self.unit}" not in self.name:
            raise ValueError(f"{self.name}: the name must carry its unit {self.unit!r}")

    @property
    def family_name(self) -> str:
        """The name prometheus_client takes: a counter's without `_total` (it adds the suffix back)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    def family(self, labels: Sequence[str] | None = None) -> Family:
        """An empty family with this spec's label names (or `labels`, when a caller adds one)."""
        names = list(self.labels if labels is None else labels)
        if self.type == "counter":
            return CounterMetricFamily(self.family_name, self.help, labels=names)
        return GaugeMetricFamily(self.family_name, self.help, labels=names)

    def value(self, value: float) -> Family:
        """A family with one unlabelled sample."""
        family = self.family(())
        family.add_metric([], value)
        return family


# Every module that declares metrics: each has a `METRICS` tuple of `MetricSpec`s.
DECLARING_MODULES = (
    "atlas_exporter.collectors.process.metrics",
    "atlas_exporter.collectors.smaps.metrics",
    "atlas_exporter.collectors.network.metrics",
    "atlas_exporter.collectors.crash.metrics",
    "atlas_exporter.collectors.hang.metrics",
    "atlas_exporter.exporter.metrics",
    "atlas_exporter.outputs.csv_mirror",
)


def catalog() -> tuple[MetricSpec, ...]:
    """Every metric the exporter can emit, on any platform, sorted by name; raises if a name is declared twice."""
    seen: dict[str, MetricSpec] = {}
    for module_name in DECLARING_MODULES:
        for spec in importlib.import_module(module_name).METRICS:
            if spec.name in seen:
                raise ValueError(f"{spec.name} is declared twice")
            seen[spec.name] = spec
    return tuple(sorted(seen.values(), key=lambda s: s.name))
