"""The three capabilities that the deploy files grant are the ones the exporter needs, and they suffice.

The exporter runs as `nobody`, once without capabilities and once with CAP_SYS_PTRACE,
CAP_DAC_READ_SEARCH and CAP_NET_ADMIN as ambient capabilities (what the systemd unit's
AmbientCapabilities does). A root-owned process's disk I/O and open fds must appear only with
them, and the proc connector (crashes) must turn on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import parse_exposition

APP = "e2e-root-sleeper"
MARK = "atlas-e2e-root-sleeper-marker"
CAPS = "+sys_ptrace,+dac_read_search,+net_admin"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="Linux capabilities")]


def unit_capabilities() -> set[str]:
    text = (Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "atlas-exporter.service").read_text()
    line = next(x for x in text.splitlines() if x.startswith("AmbientCapabilities="))
    return {c.lower() for c in line.split("=", 1)[1].split()}


def test_the_unit_grants_the_tested_capabilities() -> None:
    assert unit_capabilities() == {f"cap_{c[1:]}" for c in CAPS.split(",")}


def run_once(nobody_python: tuple[list[str], dict[str, str]], config: Path, caps: bool) -> dict[str, float]:
    prefix, env = nobody_python
    setpriv, *rest = prefix
    extra = [f"--inh-caps={CAPS}", f"--ambient-caps={CAPS}"] if caps else []
    result = subprocess.run([setpriv, *extra, *rest, "-m", "atlas_exporter", "--once", "--config.file", str(config),
                             "--no-collector.network", "--no-collector.hang", "--log.level", "error"],
                            env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    return parse_exposition(result.stdout)


def test_capabilities_unlock_other_users_io_fds_and_crashes(nobody_python: tuple[list[str], dict[str, str]]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="atlas-caps-"))  # pytest's own temp folders are closed to nobody
    folder.chmod(0o755)
    config = folder / "atlas.yml"
    config.write_text(f"apps:\n  - name: {APP}\n    cmdline: {MARK}\n", encoding="utf-8")
    config.chmod(0o644)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", MARK])  # owned by root
    try:
        plain = run_once(nobody_python, config, caps=False)
        capable = run_once(nobody_python, config, caps=True)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    key = f'{{app="{APP}"}}'
    for exposition in (plain, capable):
        assert exposition[f"atlas_app_processes{key}"] >= 1
    # without privileges: absent, never 0
    assert f"atlas_app_disk_read_bytes_total{key}" not in plain
    assert f"atlas_app_open_fds{key}" not in plain
    assert plain['atlas_source_active{privilege="none",source="proc_connector"}'] == 0
    # with the three capabilities: measured
    assert f"atlas_app_disk_read_bytes_total{key}" in capable
    assert capable[f"atlas_app_open_fds{key}"] >= 3
    connector = [v for k, v in capable.items() if k.startswith("atlas_source_active") and "proc_connector" in k]
    assert connector == [1.0]
    assert capable['atlas_process_read_errors_total{reason="access_denied"}'] < \
        plain['atlas_process_read_errors_total{reason="access_denied"}']
