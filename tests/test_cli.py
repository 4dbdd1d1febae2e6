"""The command line: --version, --help, --check-config, --once, and promtool on real output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_exporter import __version__
from conftest import REPO

PROMTOOL = shutil.which("promtool")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atlas_exporter", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and f"atlas-exporter {__version__}" in r.stdout


def test_help_lists_the_contract_flags() -> None:
    r = run("--help")
    assert r.returncode == 0
    for flag in ("--web.listen-address", "--web.telemetry-path", "--web.config.file", "--config.file",
                 "--check-config", "--once", "--path.procfs", "--collector.network", "--log.level", "--version"):
        assert flag in r.stdout


@pytest.mark.parametrize("args", [["--bogus"], ["--log.level", "loud"], ["--collector.nope"], ["extra"]])
def test_bad_flags_get_one_line(args: list[str]) -> None:
    r = run(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atlas-exporter: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_valid(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.yml"
    cfg.write_text("apps:\n  - name: web\n    comm: '^nginx$'\nmax_apps: 50\nhang:\n  threshold_seconds: 10\n")
    r = run("--check-config", "--config.file", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("max_apps: -3\n", "max_apps: must be at least 1"),
    ("hang:\n  treshold_seconds: 5\n", "hang.treshold_seconds: unknown key (did you mean 'threshold_seconds'?)"),
    ("csv:\n  top: many\n", "csv.top: must be an integer, got a string"),
    ("apps:\n  - name: x\n    comm: '(('\n", "apps[0].comm: bad regular expression"),
    ("apps: [\n", "YAML syntax error"),
    ("apps:\n  - comm: x\n", "apps[0].name: missing"),
])
def test_check_config_names_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text(text)
    r = run("--check-config", "--config.file", str(cfg))
    assert r.returncode == 1
    assert str(cfg) in r.stderr and expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_rejects_what_re2_cannot_compile_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.yml"
    cfg.write_text("apps:\n  - name: ok\n    cmdline: '(a+)+$'\n  - name: web\n    cmdline: '(?<=a)b'\n")
    r = run("--check-config", "--config.file", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"atlas-exporter: error: {cfg}: apps[1].cmdline: bad regular expression '(?<=a)b' in rule 'web' (RE2 syntax): "
        "invalid perl operator: (?<="], r.stderr
    cfg.write_text("apps:\n  - name: ok\n    cmdline: '(a+)+$'\n    parent: '^(cron|job)$'\n")
    r = run("--check-config", "--config.file", str(cfg))
    assert r.returncode == 0, r.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    r = run("--config.file", str(tmp_path / "nope.yml"), "--once")
    assert r.returncode == 1 and "file not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_procfs_path(tmp_path: Path) -> None:
    r = run("--path.procfs", str(tmp_path), "--once")
    assert r.returncode == 2 and "not a procfs mount" in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
def test_once_output_passes_promtool(tmp_path: Path) -> None:
    assert PROMTOOL, "promtool is not installed (Debian package prometheus)"
    r = run("--once")
    assert r.returncode == 0, r.stderr
    assert "atlas_app_cpu_seconds_total{" in r.stdout
    assert 'atlas_scrape_collector_success{collector="process"} 1.0' in r.stdout
    assert "atlas_exporter_build_info{" in r.stdout
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=r.stdout, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_once_with_collectors_off() -> None:
    r = run("--once", "--no-collector.network", "--no-collector.crash", "--no-collector.hang",
            "--no-collector.process")
    assert r.returncode == 0, r.stderr
    per_app = [line for line in r.stdout.splitlines() if "atlas_app_" in line and "atlas_app_names_folded" not in line]
    assert per_app == []
    assert "atlas_exporter_build_info{" in r.stdout
    assert "atlas_app_names_folded_total 0.0" in r.stdout  # about the exporter itself, always there


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999", "[::1"])
def test_bad_listen_address_is_rejected_before_anything_starts(address: str) -> None:
    r = run("--web.listen-address", address, "--check-config")
    assert r.returncode == 2
    assert r.stderr.startswith("atlas-exporter: error: --web.listen-address:") and "Traceback" not in r.stderr


def test_top_level_that_is_not_a_mapping(tmp_path: Path) -> None:
    cfg = tmp_path / "list.yml"
    cfg.write_text("- 1\n- 2\n")
    r = run("--check-config", "--config.file", str(cfg))
    assert r.returncode == 1 and "(top level): must be a mapping, got a list" in r.stderr
