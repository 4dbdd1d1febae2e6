"""`atlas-exporter --self-check`: for real on this Linux machine (as root and as nobody), with a
wrong reading injected, and on the macOS backend over fakes (ps, nettop, DiagnosticReports)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_darwin_process import FakeLibProc, FakeTable
from test_macos_exporter import machine

from atlas_exporter.apps.naming import Namer
from atlas_exporter.collectors.process.source_darwin import DarwinProcessSource
from atlas_exporter.collectors.process.source_linux import make_process_source
from atlas_exporter.config import parse_config
from atlas_exporter.model import ProcessScan
from atlas_exporter.selfcheck import check as sc
from atlas_exporter.selfcheck import references as refs
from atlas_exporter.selfcheck.report import render

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = Path(__file__).with_name("workload.py")
FIXTURES = Path(__file__).parent / "fixtures"


def _run_cli(argv: list[str], env: dict[str, str] | None = None, attempts: int = 2) -> subprocess.CompletedProcess:
    """Run the self-check; on a loaded shared machine one retry is allowed before failing."""
    done = None
    for _ in range(attempts):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
        if done.returncode == 0:
            break
    assert done is not None
    return done


@pytest.fixture
def burner():
    """A CPU-burning workload started the way people do (sh -c 'exec ...'), kept alive for the check."""
    proc = subprocess.Popen(["sh", "-c", f"exec {sys.executable} {WORKLOAD} selfcheck-burn-q7 cpu 600"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sh" and time.monotonic() < deadline:
        time.sleep(0.05)  # until sh has exec'd the workload
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_self_check_agrees_on_this_linux_machine(burner) -> None:
    done = _run_cli([sys.executable, "-m", "atlas_exporter", "--self-check"])
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    lines = out.splitlines()
    assert lines[0].startswith("atlas-exporter self-check on linux, as root")
    assert lines[1].split() == ["app", "quantity", "exporter", "reference", "difference", "verdict"]
    assert "  psutil: active (version " in out and "  ps: active (" in out
    assert "  nettop: not used (macOS only" in out and "  DiagnosticReports: not used (macOS only)" in out
    assert "(self)" in out  # the check compares itself too
    for quantity in ("cpu_seconds (psutil)", "resident_bytes (ps)", "threads (ps)", "open_fds (psutil)",
                     "processes (ps)", "disk_read_bytes (psutil)", "disk_written_bytes (psutil)",
                     "virtual_bytes (psutil)"):
        assert quantity in out
    assert out.rstrip().endswith("comparisons agree") and "self-check: OK" in out
    assert "Traceback" not in done.stderr


def test_self_check_works_unprivileged(nobody_python) -> None:
    prefix, env = nobody_python
    done = _run_cli([*prefix, "-m", "atlas_exporter", "--self-check"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(unprivileged)" in done.stdout.splitlines()[0]
    assert "self-check: OK" in done.stdout


class WrongReadings:
    """A process source that reports a wrong value for one field (or none at all) of every process."""

    def __init__(self, source, field: str, change) -> None:
        self.source = source
        self.field = field
        self.change = change
        self.reaped_io_in_parent = source.reaped_io_in_parent

    def scan(self) -> ProcessScan:
        scan = self.source.scan()
        for sample in scan.samples:
            setattr(sample, self.field, self.change(getattr(sample, self.field)))
        return scan

    def __getattr__(self, name):
        return getattr(self.source, name)


@pytest.mark.parametrize(("field", "change", "quantity"), [
    ("resident_bytes", lambda v: None if v is None else v * 2 + (64 << 20), "resident_bytes"),
    ("cpu_user_seconds", lambda v: None if v is None else v + 30.0, "cpu_seconds"),
    ("open_fds", lambda v: None, "open_fds"),  # absent where psutil can read it
])
def test_self_check_disagrees_when_a_reading_is_wrong(burner, field, change, quantity) -> None:
    """A wrong reading injected into the real process source is caught on the burner and on the check itself."""
    real = make_process_source(Path("/proc"))

    def check_over(source) -> sc.SelfCheck:
        check = sc.SelfCheck(source, Namer(()), psutil_reference=refs.PsutilReference(False),
                             ps_reference=refs.PsReference(darwin=False), darwin=False, interval_seconds=0.5, top=0)
        check.include = (check.resolver.app_of_pid(burner.pid),)
        return check

    result = check_over(WrongReadings(real, field, change)).run()
    assert len({r.app for r in result.rows}) == 2  # the burner and the check itself
    assert not result.ok
    bad = {row.quantity.split(" ")[0] for row in result.rows if not row.ok}
    assert bad == {quantity}, [(r.app, r.quantity, r.exporter, r.low, r.high, r.note) for r in result.rows if not r.ok]
    # and the same check over the untouched source agrees
    again = check_over(real).run()
    assert again.ok, [(r.app, r.quantity, r.exporter, r.low, r.high, r.note) for r in again.rows if not r.ok]
    out = __import__("io").StringIO()
    render(result, out, platform_name="linux", privilege="root")
    text = out.getvalue()
    assert "DIFFERS" in text and "self-check: FAILED" in text


def test_self_check_cli_exit_status_when_it_disagrees(monkeypatch, capsys) -> None:
    """The command line returns 1 and prints the failing rows when a reading is wrong."""
    from atlas_exporter import cli

    real_build = sc.build

    def wrong_build(config, procfs, **kw):
        return real_build(config, procfs, process_source=WrongReadings(make_process_source(procfs), "threads",
                                                                       lambda v: None if v is None else v + 50), **kw)

    monkeypatch.setattr(sc, "build", wrong_build)
    monkeypatch.setattr(sc, "DEFAULT_INTERVAL_SECONDS", 0.2)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # cli.main installs a stderr handler
    monkeypatch.setattr(root, "level", root.level)
    assert cli.main(["--self-check"]) == 1
    out = capsys.readouterr().out
    assert "threads (psutil)" in out and "DIFFERS" in out and "self-check: FAILED" in out


# --- pure parsers -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("00:00:07", 7.0), ("01:02:03", 3723.0), ("2-00:00:01", 172801.0),  # procps
    ("0:01.50", 1.5), ("12:34.56", 754.56), ("1:02:03.45", 3723.45),  # macOS
])
def test_parse_ps_time(text, seconds) -> None:
    assert refs.parse_ps_time(text) == pytest.approx(seconds)


def test_parse_ps_rows_and_threads() -> None:
    rows = refs.parse_ps_rows("  101  2048 00:00:03    4\n garbage\n  102   512 00:01:00    1\n", with_threads=True)
    assert rows == {101: refs.Reading(cpu_seconds=3.0, resident_bytes=2048 * 1024, threads=4),
                    102: refs.Reading(cpu_seconds=60.0, resident_bytes=512 * 1024, threads=1)}
    assert refs.parse_ps_rows("  400 409600   2:30.75\n", with_threads=False) == {
        400: refs.Reading(cpu_seconds=150.75, resident_bytes=409600 * 1024)}
    assert refs.parse_ps_threads(DARWIN_PS_M) == 3
    assert refs.parse_ps_threads("USER PID\n") is None


def test_parse_nettop_reference_reads_real_samples() -> None:
    text = (FIXTURES / "network" / "nettop_n1_macos12.csv").read_text()
    assert refs.parse_nettop_reference(text)[533] == (11417, 23504)
    frames = (FIXTURES / "network" / "nettop_n4_two_frames.csv").read_text()
    assert refs.parse_nettop_reference(frames)[51458] == (0, 702)  # last frame, name with spaces and "("


# --- macOS over fakes -------------------------------------------------------------------------

# `ps -M -p PID` on macOS: a header, then one line per thread (the first carries the process).
DARWIN_PS_M = """USER   PID   TT  %CPU STAT PRI     STIME     UTIME COMMAND
ann    400   ??    1.0 S    46T   0:10.00   2:00.50 /Applications/Google Chrome.app/Contents/MacOS/Google Chrome
       400         0.0 S    31T   0:00.01   0:00.02
       400         0.0 S    31T   0:00.00   0:00.00
"""


class FakeDarwinPsutil:
    """psutil as it reads the fake machine (what libproc's task info says, through psutil's own code)."""

    name = "psutil"
    detail = "version 7.2.2"

    def __init__(self, table: FakeTable) -> None:
        self.table = table

    def read(self, pids):
        out = {}
        for pid in pids:
            p = self.table.procs.get(pid)
            if p is not None and p.status != "zombie":
                out[pid] = refs.Reading(start_time=p.started_us / 1e6,
                                      cpu_seconds=p.user_seconds + p.system_seconds, resident_bytes=p.resident,
                                      threads=p.threads, open_fds=p.fds, virtual_bytes=None)
        return out


def fake_ps(table: FakeTable, threads_off: int = 0):
    """A runner that answers macOS `ps -o pid=,rss=,time= -p ...` and `ps -M -p PID` from the fake machine."""
    def run(argv):
        if "-M" in argv:
            p = table.procs[int(argv[-1])]
            return "USER PID TT %CPU STAT PRI STIME UTIME COMMAND\n" + "ann x\n" * (p.threads + threads_off)
        assert argv[1:3] == ["-o", "pid=,rss=,time="]
        assert set(argv[3::2]) == {"-p"}
        lines = []
        for pid in map(int, argv[4::2]):
            p = table.procs.get(pid)
            if p is None:
                continue
            total = p.user_seconds + p.system_seconds
            lines.append(f"{pid:5d} {p.resident // 1024:8d} {int(total // 60)}:{total % 60:05.2f}")
        return "\n".join(lines) + "\n"
    return run


NETTOP = ",bytes_in,bytes_out,\nGoogle Chrome.400,5000000,120000,\nGoogle Chrome H.403,1000,2000,\n" \
         "com.apple.Safar.510,300,400,\n"


def darwin_check(tmp_path: Path, *, exporter_nettop: str = NETTOP, threads_off: int = 0, reports=None):
    table, _ = machine(tmp_path)
    source = DarwinProcessSource(table, FakeLibProc(table), euid=lambda: 501,
                                 user_name=lambda uid: {0: "root", 501: "ann"}.get(uid, str(uid)))
    folder = tmp_path / "DiagnosticReports"
    folder.mkdir()
    for name in reports if reports is not None else ("ips_macos12_segv.ips", "ips_watchdog_409.ips",
                                                     "hang_macos12.hang", "ips_stackshot_288.ips"):
        shutil.copy(FIXTURES / "crash" / name, folder / name)
    check = sc.SelfCheck(source, Namer(()), psutil_reference=FakeDarwinPsutil(table),
                         ps_reference=refs.PsReference(fake_ps(table, threads_off), darwin=True, ps="/bin/ps"),
                         nettop=lambda: NETTOP, exporter_nettop=lambda: exporter_nettop,
                         report_folders=lambda: [(folder, None), (tmp_path / "missing", None)],
                         darwin=True, interval_seconds=0, top=3, own_pid=600,
                         sleep=lambda s: _work(table))
    return check, folder


def _work(table: FakeTable) -> None:
    """What happens during the check's interval on the fake Mac: Chrome burns CPU."""
    table.procs[400].user_seconds += 2.0


def test_self_check_on_macos_fakes_agrees(tmp_path) -> None:
    check, folder = darwin_check(tmp_path)
    result = check.run()
    rows = {(r.app, r.quantity): r for r in result.rows}
    assert result.ok, [(r.app, r.quantity, r.exporter, r.reference) for r in result.rows if not r.ok]
    chrome = next(r.app for r in result.rows if "Chrome" in r.app)  # as the resolver cleans the display name
    assert rows[(chrome, "cpu_seconds (psutil)")].exporter == pytest.approx(120.5 + 30.25 + 2.0 + 60 + 5 + 40)
    assert rows[(chrome, "threads (ps)")].exporter == 38 + 17 + 12
    assert rows[(chrome, "network_receive_bytes (nettop)")].exporter == 5_000_000 + 1000
    own = [r for r in result.rows if r.app.endswith(" (self)")]
    assert own and {r.app for r in own} == {"backup (self)"}  # pid 600 runs backup.py: its app is checked too
    report_row = rows[(str(folder), "crash and hang reports")]
    assert (report_row.exporter, report_row.reference) == (3, 3)  # 309, 409 and .hang; the 288 is neither
    names = {s.name: s for s in result.sources}
    assert names["nettop"].active and names["DiagnosticReports"].active and names["ps"].active
    assert "disk_read_bytes (psutil)" not in {r.quantity for r in result.rows}  # psutil has no io_counters on macOS


@pytest.mark.parametrize("case", ["nettop", "ps_threads", "report"])
def test_self_check_on_macos_fakes_disagrees(tmp_path, case) -> None:
    kw = {}
    if case == "nettop":
        kw["exporter_nettop"] = NETTOP.replace("5000000", "9000000")
    elif case == "ps_threads":
        kw["threads_off"] = 9
    check, folder = darwin_check(tmp_path, **kw)
    if case == "report":  # a report whose format the exporter does not accept
        text = (FIXTURES / "crash" / "ips_macos12_segv.ips").read_text().replace('"procName"', '"x"')
        lines = text.splitlines()
        (folder / "odd.ips").write_text(lines[0].replace("02F8E982", "ABCDEF01").replace('"name":"CrashingTest"',
                                                                                          '"name":""')
                                        .replace('"app_name":"CrashingTest"', '"app_name":""') + "\n{}\n")
    result = check.run()
    bad = {r.quantity for r in result.rows if not r.ok}
    expected = {"nettop": {"network_receive_bytes (nettop)"}, "ps_threads": {"threads (ps)"},
                "report": {"crash and hang reports"}}[case]
    assert bad == expected


def test_self_check_reference_tools_missing(tmp_path) -> None:
    """Without ps output and without nettop, their lines say why, and nothing is claimed to agree."""
    check, _ = darwin_check(tmp_path)

    def broken(argv):
        raise OSError("/bin/ps exited with status 2: ps: illegal option")

    check.ps_reference = refs.PsReference(broken, darwin=True, ps="/bin/ps")
    check.nettop = None
    result = check.run()
    names = {s.name: s for s in result.sources}
    assert not names["ps"].active and "illegal option" in names["ps"].detail
    assert not names["nettop"].active
    assert all(not r.quantity.endswith("(ps)") for r in result.rows)


def test_self_check_flag_in_help() -> None:
    out = subprocess.run([sys.executable, "-m", "atlas_exporter", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=REPO).stdout
    assert "--self-check" in out


def test_config_naming_rules_apply(tmp_path, burner) -> None:
    """The check names apps with the configured rules, as the exporter would."""
    config = parse_config({"apps": [{"name": "burner-q7", "cmdline": "selfcheck-burn-q7"}]})
    check = sc.build(config, Path("/proc"), interval_seconds=0.3)
    check.include = ("burner-q7",)
    result = check.run()
    assert any(r.app == "burner-q7" for r in result.rows)
    assert all(r.ok for r in result.rows if r.app == "burner-q7"), [dataclasses.astuple(r)[:4] for r in result.rows]


def test_self_check_skips_a_pid_reused_during_the_check(tmp_path) -> None:
    """A pid psutil sees with another start time (or name) after the exporter's reading is not compared."""
    check, _ = darwin_check(tmp_path)
    real = check.psutil_reference
    calls = []

    class Reused:
        name, detail = "psutil", "version 7.2.2"

        def read(self, pids):
            calls.append(1)
            out = real.read(pids)
            if len(calls) == 2 and 510 in out:  # after the exporter's reading, pid 510 is another process
                out[510] = dataclasses.replace(out[510], start_time=out[510].start_time + 5, resident_bytes=1)
            return out

    check.psutil_reference = Reused()
    result = check.run()
    assert result.ok
    safari = {r.quantity for r in result.rows if r.app == "Safari"}  # pid 510 is Safari's only process
    assert "processes (ps)" in safari and not any(q.endswith(("(psutil)", "(ps)")) and not q.startswith("processes")
                                                  for q in safari)
    assert any(r.quantity == "resident_bytes (psutil)" for r in result.rows if r.app == "redis-server")
