"""End to end on Linux: a loopback transfer between two scripts, seen through the real exporter's /metrics."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sock_diag is Linux only"),
    pytest.mark.slow,
]

from atlas_exporter.config import Config  # noqa: E402
from atlas_exporter.exporter.runtime import Exporter  # noqa: E402

PEER = Path(__file__).parent / "fixtures" / "network" / "peer.py"
SIZE = 12_000_000


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_transfer_through_the_exporter(tmp_path: Path) -> None:
    tag = os.getpid()
    sender_script = tmp_path / f"atlasnet_tx_{tag}.py"
    receiver_script = tmp_path / f"atlasnet_rx_{tag}.py"
    sender_script.symlink_to(PEER)
    receiver_script.symlink_to(PEER)
    exporter = Exporter(Config(), enabled={"process", "network"})
    procs: list[subprocess.Popen[str]] = []
    exporter.start()
    try:
        family = str(int(socket.AF_INET))
        receiver = subprocess.Popen([sys.executable, str(receiver_script), "recv", f"rx{tag}", family],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(receiver)
        assert receiver.stdout is not None
        port = receiver.stdout.readline().strip()
        sender = subprocess.Popen([sys.executable, str(sender_script), "send", f"tx{tag}", family, port, "1000",
                                   str(SIZE)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(sender)
        assert sender.stdout is not None and sender.stdin is not None
        assert sender.stdout.readline().strip() == "sent"
        sender_app = exporter.resolver.app_of_pid(sender.pid)
        receiver_app = exporter.resolver.app_of_pid(receiver.pid)
        assert sender_app and receiver_app and sender_app != receiver_app
        assert f"atlasnet_tx_{tag}" in sender_app

        def values() -> tuple[float, float, dict]:
            found = samples(exporter.render_metrics()[0].decode())
            tx = found.get(("atlas_app_network_transmit_bytes_total", (("app", sender_app),)), 0.0)
            rx = found.get(("atlas_app_network_receive_bytes_total", (("app", receiver_app),)), 0.0)
            return tx, rx, found

        deadline = time.monotonic() + 30
        while values()[0] < 1000:  # the sampler has bound the connection to its apps
            assert time.monotonic() < deadline, "the connection was never attributed"
            time.sleep(0.1)
        sender.stdin.write("go\n")
        sender.stdin.flush()
        assert sender.stdout.readline().strip() == "done"
        want = SIZE + 1000
        deadline = time.monotonic() + 30
        while True:
            tx, rx, found = values()
            if abs(tx - want) <= 0.01 * want and abs(rx - want) <= 0.01 * want:
                break
            assert time.monotonic() < deadline, f"tx={tx} rx={rx} want {want}"
            time.sleep(0.2)
        assert found[("atlas_scrape_collector_success", (("collector", "network"),))] == 1
        assert ("atlas_network_unattributed_transmit_bytes_total", ()) in found
        text = exporter.render_metrics()[0]
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, check=False)
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        exporter.stop()
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
