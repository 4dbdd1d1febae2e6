"""The exporter's per-app numbers for idle processes equal what /proc says about them, exactly.

Idle `sleep` processes are started the ways people start programs (`sh -c 'exec ...'`, `nohup`,
`setsid`, `env`, and a plain child with its own RLIMIT_NOFILE), all under one app name of their
own; the test reads the same /proc files itself and compares every new metric.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import parse_exposition, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
STATE_NAMES = {"R": "running", "S": "sleeping", "D": "disk_sleep", "T": "stopped", "t": "stopped", "Z": "zombie",
               "I": "idle"}


def truth(pids: list[int]) -> dict[str, float]:
    """The app's numbers computed straight from /proc for `pids`."""
    out: dict[str, float] = {"minor": 0, "major": 0, "vsize": 0, "swap": 0, "vol": 0, "invol": 0, "ratio": 0.0}
    states: dict[str, int] = dict.fromkeys(STATE_NAMES.values(), 0)
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        f = stat[stat.rindex(")") + 2:].split()
        states[STATE_NAMES[f[0]]] += 1
        out["minor"] += int(f[7]) + int(f[8])
        out["major"] += int(f[9]) + int(f[10])
        out["vsize"] += int(f[20])
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        out["swap"] += int(status["VmSwap"].split()[0]) * 1024
        out["vol"] += int(status["voluntary_ctxt_switches"])
        out["invol"] += int(status["nonvoluntary_ctxt_switches"])
        limit = next(line.split()[3] for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                     if line.startswith("Max open files"))
        out["ratio"] = max(out["ratio"], len(os.listdir(f"/proc/{pid}/fd")) / int(limit))
    out.update({f"state_{k}": v for k, v in states.items()})
    return out


def measured(metrics: dict[str, float], app: str) -> dict[str, float]:
    def v(name: str, extra: str = "") -> float:
        return metrics[f'{name}{{app="{app}"{extra}}}']

    out = {"minor": v("atlas_app_minor_page_faults_total"), "major": v("atlas_app_major_page_faults_total"),
           "vsize": v("atlas_app_virtual_memory_bytes"), "swap": v("atlas_app_swap_bytes"),
           "vol": v("atlas_app_context_switches_total", ',kind="voluntary"'),
           "invol": v("atlas_app_context_switches_total", ',kind="involuntary"'),
           "ratio": v("atlas_app_open_fds_limit_ratio")}
    out.update({f"state_{s}": v("atlas_app_process_states", f',state="{s}"') for s in STATE_NAMES.values()})
    return out


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    tag = f"gt-{uuid.uuid4().hex[:8]}"
    sleep = tmp_path / tag
    os.symlink(shutil.which("sleep") or "/bin/sleep", sleep)
    procs: list[subprocess.Popen] = []

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))

    launches = [
        (["sh", "-c", f"exec {sleep} 3600"], {}),
        (["nohup", str(sleep), "3600"], {}),
        (["setsid", str(sleep), "3600"], {}),
        (["env", "ATLAS_TEST=1", str(sleep), "3600"], {}),
        ([str(sleep), "3600"], {"preexec_fn": low_limit}),
    ]
    for argv, extra in launches:
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **extra))
    try:
        def execd() -> list[int] | None:
            pids = [p.pid for p in procs]
            names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids]
            return pids if all(name == tag for name in names) else None

        pids = wait_for(execd, message="every launcher to exec the sleeper")
        yield tag, pids
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_idle_processes_read_exactly_as_proc(sleepers: tuple[str, list[int]]) -> None:
    tag, pids = sleepers
    exporter = Exporter(parse_config({"apps": [{"name": "{1}", "cmdline": r"/(gt-[0-9a-f]{8}) 3600$"}],
                                      "snapshot_max_age_seconds": 0}), enabled={"process"}, sources=[])
    for _ in range(20):  # an idle process changes nothing between the two reads around a scrape
        before = truth(pids)
        metrics = parse_exposition(exporter.render_metrics()[0].decode())
        after = truth(pids)
        if before == after:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the sleepers never stayed idle across a scrape")
    assert metrics[f'atlas_app_processes{{app="{tag}"}}'] == 5
    assert measured(metrics, tag) == after
    assert after["ratio"] > 2 / 64  # the process with a soft limit of 64 has the largest ratio
