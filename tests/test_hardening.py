"""The real `python -m atlas_exporter` in a subprocess: bad input gets one line and a non-zero exit
(never a traceback), signals exit cleanly, it serves as `nobody`, and --web.config.file works end to end."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bcrypt
import pytest
from test_server_support import OPENSSL, basic, client_context, make_certs, request

from conftest import REPO

pytestmark = pytest.mark.slow
LISTENING = re.compile(rb"listening on (https?)://\[?([0-9a-f.:]+)\]?:(\d+)/")
ERROR_LINE = "atlas-exporter: error: "


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atlas_exporter", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERROR_LINE)]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    assert result.stdout == ""


@contextmanager
def running(tmp_path: Path, *args: str, prefix: list[str] | None = None, env: dict[str, str] | None = None,
            timeout: float = 60.0) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The exporter on 127.0.0.1 with a free port: (process, port, stderr file). Killed on exit if still running."""
    log = tmp_path / f"exporter-{time.monotonic_ns()}.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([*(prefix or [sys.executable]), "-m", "atlas_exporter",
                                 "--web.listen-address", "127.0.0.1:0", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                cwd=REPO if prefix is None else "/", env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = LISTENING.search(log.read_bytes())
            if found:
                break
            if proc.poll() is not None:
                pytest.fail(f"exporter exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"exporter did not start in {timeout}s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc, int(found.group(3)), log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    proc.send_signal(signum)
    return proc.wait(timeout)


def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


BAD_INPUT = {
    # kind: (files to write, arguments, part of the error line)
    "yaml syntax error": ({"config": "apps:\n  - name: web\n     comm: nginx\n"},
                          ["--config.file", "{config}"], "YAML syntax error"),
    "misspelled key": ({"config": "max_app: 50\n"}, ["--config.file", "{config}"],
                       "max_app: unknown key (did you mean 'max_apps'?)"),
    "negative value": ({"config": "max_apps: -3\n"}, ["--config.file", "{config}"], "max_apps: must be"),
    "wrong type": ({"config": "hang:\n  threshold_seconds: soon\n"}, ["--config.file", "{config}"],
                   "hang.threshold_seconds: must be a number, got a string"),
    "missing config file": ({}, ["--config.file", "/nonexistent/atlas.yml"], "/nonexistent/atlas.yml: file not found"),
    "missing web config file": ({}, ["--web.config.file", "/nonexistent/web.yml"],
                                "/nonexistent/web.yml: file not found"),
    "bad web config": ({"web": "basic_auth_users:\n  alice: hunter2\n"}, ["--web.config.file", "{web}"],
                       "basic_auth_users.alice: not a bcrypt hash"),
    "misspelled web config key": ({"web": "tls_server_config:\n  certfile: a.crt\n"},
                                  ["--web.config.file", "{web}"],
                                  "tls_server_config.certfile: unknown key (did you mean 'cert_file'?)"),
    "web config header outside Latin-1": ({"web": "http_server_config:\n  headers:\n"
                                                  "    Content-Security-Policy: default-src \u2018self\u2019\n"},
                                          ["--check-config", "--web.config.file", "{web}"],
                                          "http_server_config.headers.Content-Security-Policy: character"),
    "web config header outside Latin-1 at start": ({"web": "http_server_config:\n  headers:\n"
                                                           "    X-XSS-Protection: \"1; report=\u201cx\u201d\"\n"},
                                                   ["--web.config.file", "{web}"],
                                                   "http_server_config.headers.X-XSS-Protection: character"),
    "unknown flag": ({}, ["--web.listen-adress", "127.0.0.1:0"], "unrecognized arguments: --web.listen-adress"),
    "bad flag value": ({}, ["--log.level", "loud"], "--log.level"),
    "listen address without port": ({}, ["--web.listen-address", "localhost"], "missing port in address"),
    "check-config of a bad file": ({"config": "csv:\n  top: 0\n"}, ["--check-config", "--config.file",
                                                                       "{config}"], "csv.top: must be at least 1"),
}


@pytest.mark.parametrize("kind", list(BAD_INPUT))
def test_bad_input_gets_one_line_and_a_nonzero_exit(tmp_path, kind):
    files, args, expected = BAD_INPUT[kind]
    paths = {name: _write(tmp_path, f"{name}.yml", text) for name, text in files.items()}
    result = _cli(*[arg.format(**paths) for arg in args])
    _assert_one_line_error(result, expected)
    assert "hunter2" not in result.stderr


def test_port_already_in_use(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _cli("--web.listen-address", f"127.0.0.1:{port}")
    _assert_one_line_error(result, f"listen tcp 127.0.0.1:{port}: address already in use")


def test_check_config_accepts_a_good_web_config(tmp_path):
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    web = _write(tmp_path, "web.yml", f"basic_auth_users:\n  alice: {hashed}\n")
    result = _cli("--check-config", "--web.config.file", web)
    assert result.returncode == 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_cleanly(tmp_path, signum):
    with running(tmp_path) as (proc, port, log):
        status, _, body = request(port)
        assert status == 200 and b"atlas_exporter_build_info" in body
        started = time.monotonic()
        assert _stop(proc, signum) == 0
        assert time.monotonic() - started < 10
        text = log.read_text()
        assert "Traceback" not in text and ERROR_LINE not in text
    with socket.socket() as again:  # the port was released
        again.bind(("127.0.0.1", port))


def test_serves_metrics_as_nobody(tmp_path, nobody_python):
    prefix, env = nobody_python
    with running(tmp_path, prefix=prefix, env=env) as (proc, port, log):
        uid_line = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                        if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["65534"] * 4
        status, _, body = request(port)
        assert status == 200
        assert b"atlas_exporter_build_info" in body and b"atlas_app_processes" in body
        assert _stop(proc) == 0
        assert "Traceback" not in log.read_text()


def test_basic_auth_end_to_end(tmp_path):
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()
    web = _write(tmp_path, "web.yml", f"basic_auth_users:\n  prometheus: {hashed}\n")
    with running(tmp_path, "--web.config.file", web) as (proc, port, log):
        status, _, body = request(port, headers={"Authorization": basic("prometheus", "s3cret")})
        assert status == 200 and b"atlas_app_processes" in body
        for headers in ({}, {"Authorization": basic("prometheus", "wrong")}, {"Authorization": basic("x", "s3cret")}):
            status, answer, body = request(port, headers=headers)
            assert status == 401 and "atlas_app" not in body.decode()
            assert answer["www-authenticate"].startswith('Basic realm="atlas-exporter"')
        assert request(port, "/")[0] == 401
        assert request(port, "/", headers={"Authorization": basic("prometheus", "s3cret")})[0] == 200
        assert _stop(proc) == 0


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
def test_tls_with_client_certificates_end_to_end(tmp_path):
    certs = make_certs(tmp_path / "certs")
    web = _write(tmp_path, "web.yml", "tls_server_config:\n  cert_file: certs/server.crt\n"
                                      "  key_file: certs/server.key\n"
                                      "  client_auth_type: RequireAndVerifyClientCert\n"
                                      "  client_ca_file: certs/ca.crt\n")
    with running(tmp_path, "--web.config.file", web) as (proc, port, log):
        assert LISTENING.search(log.read_bytes()).group(1) == b"https"
        good = client_context(certs, (certs.client_cert, certs.client_key))
        status, _, body = request(port, context=good)
        assert status == 200 and b"atlas_app_processes" in body
        with pytest.raises((OSError, ConnectionError)):
            request(port, context=client_context(certs))
        assert _stop(proc) == 0
