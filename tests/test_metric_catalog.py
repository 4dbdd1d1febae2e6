"""The metric catalog: each name declared once, what /metrics shows matches it, and the README lists it.

`atlas_exporter.metrics.catalog()` gathers every `MetricSpec`. A live exporter on this machine
(every collector on, the CSV mirror on, a crash counted) and the macOS golden exposition must
show only declared families, with the declared type and help; the README's metric section must
name every declared metric and no other, with the declared type in its table.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from atlas_exporter.metrics import DECLARING_MODULES, MetricSpec, catalog
from conftest import REPO, free_port, wait_for

GOLDEN = Path(__file__).parent / "golden"


def by_name() -> dict[str, MetricSpec]:
    return {spec.name: spec for spec in catalog()}


def exposed(text: str) -> dict[str, tuple[str, str]]:
    """Family name as declared (counters with `_total`) -> (type, help) of every atlas_ family in `text`."""
    out: dict[str, tuple[str, str]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("atlas_"):
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = (family.type, family.documentation)
    return out


def check_against_catalog(families: dict[str, tuple[str, str]]) -> None:
    declared = by_name()
    undeclared = sorted(set(families) - set(declared))
    assert not undeclared, f"emitted but not declared in any METRICS table: {undeclared}"
    for name, (kind, help_text) in families.items():
        assert (kind, help_text) == (declared[name].type, declared[name].help), name


def test_each_name_is_declared_once_with_a_base_unit() -> None:
    names = [spec.name for module in DECLARING_MODULES
             for spec in __import__(module, fromlist=["METRICS"]).METRICS]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    assert len(names) >= 45
    for spec in catalog():
        assert spec.name.startswith("atlas_"), spec.name
        assert spec.help.endswith((".", ")")) and spec.help[0].isupper(), spec.name
        if spec.name.endswith(("_seconds", "_seconds_total")):
            assert spec.unit == "seconds", spec.name
        if spec.name.endswith(("_bytes", "_bytes_total")):
            assert spec.unit == "bytes", spec.name


def test_a_bad_declaration_is_refused() -> None:
    with pytest.raises(ValueError, match="must end in _total"):
        MetricSpec("atlas_app_things", "counter", "Things.")
    with pytest.raises(ValueError, match="carry its unit"):
        MetricSpec("atlas_app_memory", "gauge", "Memory.", unit="bytes")


def test_macos_golden_exposition_matches_the_catalog() -> None:
    families = exposed((GOLDEN / "darwin.prom").read_text().replace("{...}", ""))  # normalised build_info
    assert "atlas_app_cpu_seconds_total" in families
    check_against_catalog(families)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="runs the exporter on Linux /proc")
def test_live_exposition_matches_the_catalog(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "atlas.yml"
    config.write_text(f"csv:\n  enabled: true\n  path: {tmp_path / 'apps.csv'}\n  interval_seconds: 1\n"
                      f"crash:\n  report_dirs: [{tmp_path / 'crash'}]\n")
    (tmp_path / "crash").mkdir()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "atlas_exporter", "--web.listen-address", f"127.0.0.1:{port}",
         "--config.file", str(config), "--collector.smaps"],
        cwd="/", env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.read().decode()

    try:
        wait_for(lambda: "atlas_csv_rows_written_total" in scrape(), timeout=30, message="the CSV mirror's metrics")
        crasher = subprocess.run(["sh", "-c", "exec python3 -c 'import os; os.kill(os.getpid(), 11)'"], check=False)
        assert crasher.returncode == -signal.SIGSEGV or crasher.returncode == 128 + signal.SIGSEGV

        def counted() -> str | None:
            text = scrape()
            return text if "atlas_app_exits_total{" in text else None

        text = wait_for(counted, timeout=30, message="the crash to be counted")
    finally:
        exporter.terminate()
        _, err = exporter.communicate(timeout=20)
    assert "Traceback" not in err, err
    families = exposed(text)
    for name in ("atlas_app_cpu_seconds_total", "atlas_app_network_receive_bytes_total",
                 "atlas_app_crashes_total", "atlas_app_exits_total", "atlas_app_hangs_total",
                 "atlas_app_proportional_memory_bytes", "atlas_csv_rows_written_total",
                 "atlas_exporter_http_connections", "atlas_scrape_collector_success"):
        assert name in families, name
    check_against_catalog(families)


def readme_metric_names() -> tuple[set[str], dict[str, str]]:
    """Every atlas_ name in the README's Metrics section (braces expanded) and the type column of its table."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for token in re.findall(r"atlas_[a-z_{},]*[a-z_}]", section):
        token = token.rstrip("_")
        match = re.fullmatch(r"(atlas_[a-z_]*)\{([a-z_,]+)\}([a-z_]*)", token)
        if match and match.group(3):  # a name part in braces, not a label list
            names.update(match.group(1) + part + match.group(3) for part in match.group(2).split(","))
        else:
            names.add(token.split("{", 1)[0])
    types: dict[str, str] = {}
    for row in re.findall(r"^\| (.+?) \| (counter|gauge) \|", section, re.MULTILINE):
        for name in re.findall(r"`(atlas_[a-z_]+)", row[0]):
            types[name] = row[1]
    return names, types


def test_readme_lists_every_declared_metric_and_no_other() -> None:
    names, types = readme_metric_names()
    declared = by_name()
    assert sorted(set(declared) - names) == [], "declared but missing from the README's Metrics section"
    assert sorted(names - set(declared)) == [], "in the README's Metrics section but not declared"
    for name, kind in types.items():
        assert declared[name].type == kind, f"README says {name} is a {kind}"
    assert len(types) >= 25
