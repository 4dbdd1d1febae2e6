"""Configuration edge cases get one line naming file, key and reason: never a traceback, a hang,
a MemoryError, or a watcher thread that dies while its collector still reports success."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_exporter.collectors.crash.source_linux import LinuxCrashSource
from atlas_exporter.collectors.hang.source_linux import LinuxHangSource
from atlas_exporter.config import MAX_CONFIG_BYTES, ConfigError, load_config, parse_config
from atlas_exporter.exporter.collector import AtlasCollector
from atlas_exporter.loop import BackgroundLoop
from atlas_exporter.model import Snapshot
from atlas_exporter.web.webconfig import WebConfigError
from atlas_exporter.web.websettings import load_web_config
from conftest import REPO

ERROR_LINE = "atlas-exporter: error: "


def _one_line(err: pytest.ExceptionInfo[Exception], *parts: str) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("hang:\n  check_interval_seconds: .inf\n", "hang.check_interval_seconds", "must be a finite number"),
    ("hang:\n  threshold_seconds: .nan\n", "hang.threshold_seconds", "must be a finite number"),
    ("network:\n  sample_interval_seconds: 1e-9\n", "network.sample_interval_seconds", "at least 0.1"),
    ("network:\n  sample_interval_seconds: 0.05\n", "network.sample_interval_seconds", "at least 0.1"),
    ("csv:\n  interval_seconds: 1e12\n", "csv.interval_seconds", "at most"),
    ("network:\n  nettop_timeout_seconds: -.inf\n", "network.nettop_timeout_seconds", "finite"),
    ("retention_seconds: .inf\n", "retention_seconds", "finite"),
    ("snapshot_max_age_seconds: -1\n", "snapshot_max_age_seconds", "at least 0"),
    ("max_apps: 100000000000\n", "max_apps", "at most"),
    ("csv:\n  top: 1e400\n", "csv.top", "must be an integer"),
    ("csv:\n  backup_count: 123456789\n", "csv.backup_count", "at most"),
])
def test_numbers_are_finite_and_in_range(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "atlas.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    _one_line(err, str(path), f": {key}: ", reason)


def test_sane_numbers_still_pass() -> None:
    config = parse_config({"hang": {"check_interval_seconds": 0.1, "threshold_seconds": 1e3},
                           "network": {"sample_interval_seconds": 2.5}, "snapshot_max_age_seconds": 0})
    assert config.hang.check_interval_seconds == 0.1 and config.network.sample_interval_seconds == 2.5


def test_deep_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    path.write_text("[" * 900 + "]" * 900)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    _one_line(err, str(path), "nested deeper than 64 levels")
    mapping = tmp_path / "deep-map.yml"
    mapping.write_text("".join("  " * i + f"k{i}:\n" for i in range(200)))
    with pytest.raises(ConfigError) as err:
        load_config(mapping)
    _one_line(err, str(mapping), "nested deeper")


def test_files_must_be_regular_and_small(tmp_path: Path) -> None:
    fifo = tmp_path / "atlas.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.yml"
    big.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"max_apps: 5\n\xff\xfe\n")
    cases = {str(fifo): "is a FIFO, not a regular file", "/dev/zero": "is a device, not a regular file",
             str(big): f"larger than {MAX_CONFIG_BYTES} bytes", str(binary): "not UTF-8",
             str(tmp_path): "is a directory"}
    for name, reason in cases.items():
        started = time.monotonic()
        with pytest.raises(ConfigError) as err:
            load_config(name)
        _one_line(err, name, reason)
        with pytest.raises(WebConfigError) as web_err:
            load_web_config(name)
        _one_line(web_err, name, reason)
        assert time.monotonic() - started < 5


def test_certificate_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "server.crt")
    (tmp_path / "server.key").write_text("not used")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    started = time.monotonic()
    with pytest.raises(WebConfigError) as err:
        load_web_config(web)
    _one_line(err, str(web), "tls_server_config.cert_file", "is a FIFO")
    assert time.monotonic() - started < 5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep", "inf"])
def test_the_cli_prints_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.yml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "deep":
        path.write_text("[" * 900 + "]" * 900)
    else:
        path.write_text("hang:\n  check_interval_seconds: .inf\n")
    for flag in ("--config.file", "--web.config.file"):
        result = subprocess.run([sys.executable, "-m", "atlas_exporter", "--check-config", flag, str(path)],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(ERROR_LINE + str(path)), result.stderr


# --- a watcher thread that dies turns its collector's success to 0


class _NoSnapshots:
    def get(self) -> Snapshot:
        return Snapshot(wall_time=time.time(), monotonic=time.monotonic())


def _success(sources: list) -> dict[str, float]:
    collector = AtlasCollector(_NoSnapshots(), sources)  # type: ignore[arg-type]
    family = next(m for m in collector.collect() if m.name == "atlas_scrape_collector_success")
    return {s.labels["collector"]: s.value for s in family.samples}


def _wait_loop_dead(loop: BackgroundLoop) -> None:
    deadline = time.monotonic() + 20
    while not loop.dead and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loop.dead


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_watcher_threads_set_success_to_zero(tmp_path: Path) -> None:
    # an interval that slipped past validation (an infinite wait overflows) kills the thread
    crash = LinuxCrashSource(lambda pid: None, coredump_dir=tmp_path, report_dirs=[], kmsg=tmp_path / "none",
                             use_connector=False, poll_interval_seconds=float("inf"))
    hang = LinuxHangSource(lambda pid: None, check_interval_seconds=float("inf"))
    live = LinuxHangSource(lambda pid: None, check_interval_seconds=1.0)
    for source in (crash, hang, live):
        source.start()
    try:
        assert _success([live])["hang"] == 1
        _wait_loop_dead(crash.loops[0])
        _wait_loop_dead(hang.loops[0])
        assert _success([crash]) == {"crash": 0}
        assert _success([hang]) == {"hang": 0}
        assert _success([live]) == {"hang": 1}
    finally:
        for source in (crash, hang, live):
            source.stop()
