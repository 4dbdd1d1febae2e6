"""The container deploy files pass the host's /proc mounted elsewhere (`--path.procfs=/host/proc`).

The host's procfs is bind-mounted into a temporary folder, the way Docker and Kubernetes mount it,
and the exporter reads a known process and its crash through that path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import parse_exposition

REPO = Path(__file__).resolve().parent.parent
APP = "e2e-procfs-sleeper"
MARK = "atlas-e2e-procfs-marker"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="Linux procfs")]


@pytest.fixture
def host_proc() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="atlas-hostproc-"))
    mount = subprocess.run(["mount", "--bind", "/proc", str(folder)], capture_output=True, text=True)
    if mount.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot bind-mount /proc here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_exporter_reads_the_host_proc_from_another_path(host_proc: Path, tmp_path: Path) -> None:
    config = tmp_path / "atlas.yml"
    config.write_text(f"apps:\n  - name: {APP}\n    cmdline: {MARK}\n", encoding="utf-8")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", MARK])
    try:
        result = subprocess.run([sys.executable, "-m", "atlas_exporter", "--once", f"--path.procfs={host_proc}",
                                 "--config.file", str(config), "--no-collector.hang", "--log.level", "error"],
                                capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = parse_exposition(result.stdout)
    key = f'{{app="{APP}"}}'
    assert metrics[f"atlas_app_processes{key}"] == 1
    assert metrics[f"atlas_app_threads{key}"] >= 1
    assert metrics[f"atlas_app_resident_memory_bytes{key}"] > 0
    assert f"atlas_app_disk_read_bytes_total{key}" in metrics


def test_a_missing_procfs_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-proc"
    result = subprocess.run([sys.executable, "-m", "atlas_exporter", "--once", f"--path.procfs={missing}"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(missing) in result.stderr
