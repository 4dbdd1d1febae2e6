"""The CSV mirror through the real exporter: a process burning one core shows about 100 cpu_percent."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")]

EXACT_HEADER = ("timestamp,app_name,pid,cpu_percent,memory_mb,threads,network_bytes_sent,network_bytes_recv,"
                "disk_read_ops,disk_write_ops,open_files")
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def intervals(path: Path) -> dict[str, list[list[str]]]:
    by_time: dict[str, list[list[str]]] = defaultdict(list)
    if not path.exists():
        return by_time
    with open(path, newline="", encoding="utf-8") as f:
        for row in list(csv.reader(f))[1:]:
            by_time[row[0]].append(row)
    return by_time


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def test_core_burner_in_the_csv_of_the_real_exporter(tmp_path: Path) -> None:
    token = f"csvburn-{uuid.uuid4().hex[:12]}"
    out = tmp_path / "out" / "app_resources.csv"
    config = tmp_path / "atlas.yml"
    config.write_text(
        f"apps:\n  - name: csvburner\n    cmdline: '{token}'\n"
        f"csv:\n  enabled: true\n  interval_seconds: 2\n  top: 5\n  path: {out}\n"
    )
    port = free_port()
    burner = subprocess.Popen(["sh", "-c", "while :; do :; done", token])
    exporter: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while cpu_seconds(burner.pid) < 1.0 and time.monotonic() < deadline:  # history the priming must absorb
            time.sleep(0.1)
        stderr = open(tmp_path / "stderr.log", "wb")  # noqa: SIM115 - closed with the process below
        exporter = subprocess.Popen(
            [sys.executable, "-m", "atlas_exporter", "--config.file", str(config),
             "--web.listen-address", f"127.0.0.1:{port}",
             "--no-collector.network", "--no-collector.crash", "--no-collector.hang"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and exporter.poll() is None:
            burner_rows = [r for rows in intervals(out).values() for r in rows if r[1] == "csvburner"]
            if len(burner_rows) >= 3:
                break
            time.sleep(0.2)
        assert exporter.poll() is None, (tmp_path / "stderr.log").read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            metrics = response.read().decode()
    finally:
        stop(burner, signal.SIGKILL)
        if exporter is not None:
            stop(exporter)
            stderr.close()

    raw = out.read_bytes()
    assert raw.startswith(EXACT_HEADER.encode() + b"\r\n")
    assert raw.endswith(b"\r\n")  # a complete last line
    by_time = intervals(out)
    assert len(by_time) >= 3, raw.decode()
    for rows in by_time.values():
        assert 1 <= len(rows) <= 5
        assert all(len(r) == 11 for r in rows)
        assert [float(r[3]) for r in rows] == sorted((float(r[3]) for r in rows), reverse=True)
    burner_cpu = [float(r[3]) for rows in by_time.values() for r in rows if r[1] == "csvburner"]
    assert len(burner_cpu) == len(by_time)  # listed in every interval
    assert all(value <= 105 for value in burner_cpu), burner_cpu  # the priming kept its history out
    assert 80 <= max(burner_cpu) <= 105, burner_cpu
    burner_row = next(r for rows in by_time.values() for r in rows if r[1] == "csvburner")
    assert burner_row[2] == str(burner.pid) and int(burner_row[5]) == 1
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
              if line.startswith("atlas_csv_") or line.startswith("atlas_scrape_collector_success")}
    assert values['atlas_scrape_collector_success{collector="csv"}'] == 1
    assert values["atlas_csv_rows_written_total"] >= 3
    assert values["atlas_csv_write_errors_total"] == 0
    assert abs(values["atlas_csv_last_write_timestamp_seconds"] - time.time()) < 120


def test_unusable_csv_path_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the folder should be")
    bad = tmp_path / "blocker" / "data" / "app_resources.csv"
    config = tmp_path / "atlas.yml"
    config.write_text(f"csv:\n  enabled: true\n  path: {bad}\n")
    done = subprocess.run(
        [sys.executable, "-m", "atlas_exporter", "--config.file", str(config), "--once",
         "--no-collector.network", "--no-collector.crash", "--no-collector.hang"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in done.stderr
