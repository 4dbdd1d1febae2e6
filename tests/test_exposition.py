"""The text renderer writes exactly what prometheus_client's generate_latest writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import generate_latest

from atlas_exporter.exporter.exposition import TextRenderer


class Families:
    def collect(self):
        c = CounterMetricFamily("atlas_app_cpu_seconds", 'CPU "time"\nwith a \\ backslash.', labels=["app", "mode"])
        for app in ('plain', 'quo"te', "back\\slash", "new\nline", "ünïcode", "comma,{}="):
            c.add_metric([app, "user"], 1.5)
            c.add_metric([app, "system"], 1e21)
        yield c
        g = GaugeMetricFamily("atlas_app_processes", "Processes.", labels=["app"])
        g.add_metric(["x"], float("inf"))
        g.add_metric(["y"], float("nan"))
        g.add_metric(["z"], 12345678.0)
        yield g
        yield GaugeMetricFamily("atlas_plain", "No labels.", value=3)
        yield CounterMetricFamily("atlas_with_created", "Created too.", value=2, created=1700000000.5)
        info = InfoMetricFamily("atlas_build", "Other types go to prometheus_client.")
        info.add_metric([], {"version": "1"})
        yield info


def test_same_bytes_as_prometheus_client_twice() -> None:
    registry = CollectorRegistry()
    registry.register(Families())  # type: ignore[arg-type]
    renderer = TextRenderer()
    expected = generate_latest(registry)
    assert renderer.render(registry.collect()) == expected
    assert renderer.render(registry.collect()) == expected  # with the label cache warm
