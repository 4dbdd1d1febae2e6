"""The package layout holds its rules: small modules, apps/ free of Prometheus types, metrics
declared only through `MetricSpec`, threads only through `BackgroundLoop`, and no duck typing
where a capability Protocol exists."""

from __future__ import annotations

import ast
from pathlib import Path

from atlas_exporter.metrics import DECLARING_MODULES
from conftest import REPO

PACKAGE = REPO / "atlas_exporter"
MAX_LINES = 500
FAMILY_TYPES = ("CounterMetricFamily", "GaugeMetricFamily", "InfoMetricFamily", "SummaryMetricFamily")
# threads that are not watcher loops: the HTTP server's request workers and bcrypt checks, the
# one-shot setns helper of a namespace dump, the process source's blocking-read guard, and the
# command line's serving thread
OWN_THREADS = {
    "atlas_exporter/cli.py",
    "atlas_exporter/loop.py",
    "atlas_exporter/web/handler.py",
    "atlas_exporter/web/basicauth.py",
    "atlas_exporter/collectors/network/sockdiag_linux.py",
    "atlas_exporter/collectors/process/identity_linux.py",
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_no_module_is_over_500_lines() -> None:
    too_long = {relative(p): n for p in [*modules(), *(REPO / "grafana").glob("*.py")]
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, too_long


def test_apps_is_free_of_prometheus_types() -> None:
    for path in (PACKAGE / "apps").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("prometheus_client") for n in names), relative(path)
                assert not any(n.startswith("atlas_exporter.metrics") for n in names), relative(path)


def test_families_are_built_only_from_metric_specs() -> None:
    for path in modules():
        if path == PACKAGE / "metrics.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id in FAMILY_TYPES:
                raise AssertionError(f"{relative(path)}:{node.lineno} builds a family without a MetricSpec")


def test_every_collector_declares_its_metrics_in_the_catalog() -> None:
    for package in sorted(p for p in (PACKAGE / "collectors").iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert (package / "metrics.py").exists(), f"collectors/{package.name} has no metrics.py"
        assert f"atlas_exporter.collectors.{package.name}.metrics" in DECLARING_MODULES, package.name


def test_watchers_run_on_background_loops() -> None:
    for path in modules():
        name = relative(path)
        if name in OWN_THREADS:
            continue
        text = path.read_text()
        assert "threading.Thread(" not in text and "is_alive()" not in text, f"{name}: use BackgroundLoop"


def test_capabilities_are_protocols_not_attribute_probes() -> None:
    for path in [PACKAGE / "exporter" / "runtime.py", PACKAGE / "exporter" / "collector.py",
                 *(PACKAGE / "apps").glob("*.py"), *(PACKAGE / "collectors").rglob("source_*.py")]:
        assert "hasattr(" not in path.read_text(), relative(path)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_layers_import_only_downstream() -> None:
    """collectors/ and apps/ never reach into the exporter, the HTTP server or the outputs; apps/ not into
    collectors/ either."""
    rules = {"collectors": ("atlas_exporter.exporter", "atlas_exporter.web", "atlas_exporter.outputs"),
             "apps": ("atlas_exporter.exporter", "atlas_exporter.web", "atlas_exporter.outputs",
                      "atlas_exporter.collectors")}
    for package, forbidden in rules.items():
        for path in (PACKAGE / package).rglob("*.py"):
            bad = sorted(m for m in imported_modules(path) if m.startswith(forbidden))
            assert not bad, f"{relative(path)} imports {bad}"
