"""Side by side with process-exporter on the same processes: counts, threads, memory, fds equal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import free_port, parse_exposition, wait_for

PE = shutil.which("prometheus-process-exporter") or shutil.which("process-exporter")
APPS = 4
PER_APP = 3


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[list[str]]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    names = [f"atlascmp{os.getpid() % 1000:03d}x{i}" for i in range(APPS)]
    procs = []
    for name in names:
        os.symlink("/bin/sleep", bindir / name)
        procs += [subprocess.Popen([str(bindir / name), "300"]) for _ in range(PER_APP)]
    yield names
    for p in procs:
        p.kill()
        p.wait()


def test_equal_to_process_exporter(sleepers: list[str], tmp_path: Path) -> None:
    assert PE, "prometheus-process-exporter is not installed (apt-get install prometheus-process-exporter)"
    cfg = tmp_path / "pe.yml"
    cfg.write_text("process_names:\n  - name: '{{.Comm}}'\n    cmdline: ['.+']\n")
    port = free_port()
    pe = subprocess.Popen([PE, "-config.path", str(cfg), "-web.listen-address", f"127.0.0.1:{port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def pe_scrape() -> dict[str, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return parse_exposition(r.read().decode())

        wait_for(pe_scrape, timeout=20, message="process-exporter to serve")
        exporter = Exporter(parse_config({"snapshot_max_age_seconds": 0}), enabled={"process"}, sources=[])
        for _ in range(10):  # sleeping processes: their numbers are stable, but retry on a moving page count
            theirs = pe_scrape()
            ours = parse_exposition(exporter.render_metrics()[0].decode())
            pairs = []
            for name in sleepers:
                g = f'groupname="{name}"'
                pairs += [
                    (ours[f'atlas_app_processes{{app="{name}"}}'], theirs[f"namedprocess_namegroup_num_procs{{{g}}}"]),
                    (ours[f'atlas_app_threads{{app="{name}"}}'], theirs[f"namedprocess_namegroup_num_threads{{{g}}}"]),
                    (ours[f'atlas_app_resident_memory_bytes{{app="{name}"}}'],
                     theirs[f'namedprocess_namegroup_memory_bytes{{{g},memtype="resident"}}']),
                    (ours[f'atlas_app_open_fds{{app="{name}"}}'],
                     theirs[f"namedprocess_namegroup_open_filedesc{{{g}}}"]),
                ]
            if all(a == b for a, b in pairs):
                break
        assert [a for a, _ in pairs] == [b for _, b in pairs]
        assert ours[f'atlas_app_processes{{app="{sleepers[0]}"}}'] == PER_APP
    finally:
        pe.terminate()
        pe.wait(timeout=10)


if not sys.platform.startswith("linux"):
    pytest.skip("Linux only", allow_module_level=True)
