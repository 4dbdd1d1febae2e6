"""Shared test helpers: free ports, polling, and running the exporter as `nobody`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden exposition files")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (CI=true) a skipped test is a failed test: a missing tool must not pass silently."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and report.skipped and \
            not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


@pytest.fixture(scope="session")
def promtool() -> str:
    """The path of promtool (Debian package prometheus); a skip, which CI counts as a failure, without it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden")) or os.environ.get("ATLAS_UPDATE_GOLDEN") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.1,
             message: str = "condition") -> T:
    """Poll `check` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as err:  # the thing polled may not be up yet
            last_error = err
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}" +
                         (f" (last error: {last_error})" if last_error else ""))


def parse_exposition(text: str) -> dict[str, float]:
    """Map each sample line `name{labels}` to its value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def normalised_exposition(body: bytes) -> str:
    """An exposition without what changes from run to run, for golden files.

    Drops prometheus_client's own process metrics and the collector durations, and blanks the
    build_info labels (Python version), and drops the host's CPU count.
    """
    keep = []
    for line in body.decode().splitlines():
        if line.startswith(("process_", "# HELP process_", "# TYPE process_")):
            continue
        if line.startswith("atlas_scrape_collector_duration_seconds{"):
            continue
        if line.startswith("atlas_exporter_build_info{"):
            line = "atlas_exporter_build_info{...} 1.0"
        if line.startswith("atlas_host_cpus "):
            continue
        keep.append(line)
    return "\n".join(keep) + "\n"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def nobody_python() -> Iterator[tuple[list[str], dict[str, str]]]:
    """A (python argv prefix, env) pair that `nobody` can run the exporter with.

    The test interpreter may live under a folder nobody cannot enter (/root), so the
    packages are copied into a world-readable folder and run with the system python3
    of the same minor version.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is required"
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
                  "/usr/bin/python3"]
    tmp = Path(tempfile.mkdtemp(prefix="atlas-nobody-"))
    os.chmod(tmp, 0o755)
    site = tmp / "site"
    shutil.copytree(REPO / "atlas_exporter", site / "atlas_exporter",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for pkg in ("prometheus_client", "yaml", "psutil", "bcrypt", "re2"):
        try:
            shutil.copytree(_package_dir(pkg), site / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        except (AssertionError, ModuleNotFoundError):
            pass
    for ext in Path(_package_dir("yaml")).parent.glob("_yaml*"):
        if ext.is_dir():
            shutil.copytree(ext, site / ext.name)
    subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp),
           "PYTHONDONTWRITEBYTECODE": "1"}
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    for python in candidates:
        probe = subprocess.run([*prefix, python, "-c", "import atlas_exporter.cli, prometheus_client, yaml, re2"],
                               env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            yield [*prefix, python], env
            shutil.rmtree(tmp, ignore_errors=True)
            return
    shutil.rmtree(tmp, ignore_errors=True)
    pytest.fail("no python3 that nobody can run with the exporter's packages: " + probe.stderr.strip()[-300:])
