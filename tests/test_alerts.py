"""The alert rules: `promtool check rules` and the `promtool test rules` unit tests pass, every alert
has a runbook, and the unit tests cover scrape gaps, exporter restarts and retired apps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
RUNBOOKS = PROMETHEUS.parent.parent / "docs" / "runbooks.md"
EXPECTED = {"AtlasAppHung", "AtlasAppHangReported", "AtlasAppCrashed", "AtlasAppCrashLooping", "AtlasAppOOMKilled",
            "AtlasAppFailing", "AtlasAppMemoryGrowth", "AtlasAppBandwidthHog", "AtlasAppFdExhaustion",
            "AtlasExporterDown", "AtlasDetectionOff", "AtlasCollectorFailing"}
RULES = 14  # AtlasAppHung (warning, critical) and AtlasDetectionOff (crash, hang) have two rules each
RUNBOOK_BASE = "https://github.com/atlas-exporter/atlas-exporter/blob/main/docs/runbooks.md#"
# Alerts that read counters: their tests must include a scrape gap, an exporter restart and a retired app.
COUNTER_ALERTS = {"AtlasAppHangReported", "AtlasAppCrashed", "AtlasAppCrashLooping", "AtlasAppOOMKilled",
                  "AtlasAppFailing"}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


@needs_promtool
def test_promtool_check_rules():
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{RULES} rules found" in result.stdout


@needs_promtool
def test_promtool_test_rules():
    result = _promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_complete_and_tested_both_ways():
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == EXPECTED
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == EXPECTED and quiet == EXPECTED


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the markdown headings."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add("".join(ch for ch in title.replace(" ", "-") if ch.isalnum() or ch in "-_"))
    return out


def test_every_alert_has_a_runbook():
    anchors = _anchors(RUNBOOKS.read_text(encoding="utf-8"))
    for rule in _rules():
        url = rule["annotations"]["runbook_url"]
        assert url == RUNBOOK_BASE + rule["alert"].lower(), rule["alert"]
        assert rule["alert"].lower() in anchors, f"docs/runbooks.md has no section {rule['alert']}"
    text = RUNBOOKS.read_text(encoding="utf-8")
    for name in EXPECTED:
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**What it means.**", "**How to confirm.**", "**What to do.**"):
            assert part in section, f"{name}: {part}"


def _drops_after_gap(values: str) -> bool:
    """A promtool value string whose first value after a stale marker is lower than the last before it."""
    before, _, after = values.partition("stale")
    numbers_after = [t for t in after.split() if not t.startswith(("_", "stale"))]
    if not before.split() or not numbers_after:
        return False
    last = before.split()[-1]
    first = numbers_after[0]
    return float(first.split("x")[0].split("+")[0]) < float(last.split("x")[0].split("+")[0])


def test_counter_alerts_are_tested_with_gaps_restarts_and_retired_apps():
    """Every group that tests a counter alert has a stale marker (gap or restart) and a series that ends."""
    groups = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    for name in COUNTER_ALERTS:
        tested = [g for g in groups if any(c["alertname"] == name for c in g.get("alert_rule_test", []))]
        values = [s["values"] for g in tested for s in g["input_series"]]
        assert any("stale _" in v for v in values), f"{name}: no scrape gap"
        assert any(v.rstrip().endswith("stale") for v in values), f"{name}: no retired app"
        restarts = [v for v in values if _drops_after_gap(v)]
        assert restarts, f"{name}: no exporter restart (a counter lower after a gap)"


def test_keep_firing_for_and_for_are_set_where_flapping_would_page():
    rules = {(r["alert"], r["labels"]["severity"]): r for r in _rules()}
    assert rules[("AtlasAppHung", "warning")]["for"] == "1m"
    assert rules[("AtlasAppHung", "critical")]["for"] == "10m"
    assert rules[("AtlasAppCrashed", "warning")]["keep_firing_for"]
    assert "offset 15m)" not in rules[("AtlasAppCrashLooping", "critical")]["expr"].replace("[1h] offset 15m", "")
