"""The whole exporter over a fake /proc tree, diffed against a golden exposition file.

Run `pytest tests/test_fake_proc.py --update-golden` (or ATLAS_UPDATE_GOLDEN=1) to
rewrite tests/golden/linux.prom after an intended change; review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

from atlas_exporter.collectors.process.parsers_linux import CLK_TCK, PAGE_SIZE
from atlas_exporter.collectors.process.source_linux import LinuxProcessSource
from atlas_exporter.config import parse_config
from atlas_exporter.exporter.runtime import Exporter
from conftest import normalised_exposition, parse_exposition

GOLDEN = Path(__file__).parent / "golden" / "linux.prom"
BTIME = 1700000000


def write_proc(root: Path, pid: int, *, comm: str, ppid: int = 1, state: str = "S", utime: int = 0,
               stime: int = 0, threads: int = 1, start: int = 1000, rss_pages: int = 10, fds: int = 3,
               io: tuple[int, int, int, int, int] | None = (0, 0, 0, 0, 0), cmdline: tuple[str, ...] = (),
               exe: str | None = None, cgroup: str = "/", uid: int = 0, flags: int = 4194560,
               faults: tuple[int, int, int, int] = (0, 0, 0, 0), vsize: int = 1000000,
               switches: tuple[int, int] = (0, 0), swap_kb: int | None = 0, nofile: str = "1024") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    minflt, cminflt, majflt, cmajflt = faults
    stat = (f"{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 {flags} {minflt} {cminflt} {majflt} {cmajflt} "
            f"{utime} {stime} 0 0 20 0 {threads} 0 {start} {vsize} {rss_pages} 18446744073709551615"
            + " 0" * 27 + "\n")
    (d / "stat").write_text(stat)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
    (d / "cgroup").write_text(f"0::{cgroup}\n")
    swap = f"VmSwap:\t{swap_kb:8d} kB\n" if swap_kb is not None else ""
    (d / "status").write_text(f"Name:\t{comm}\nState:\t{state}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n{swap}"
                              f"Threads:\t{threads}\nvoluntary_ctxt_switches:\t{switches[0]}\n"
                              f"nonvoluntary_ctxt_switches:\t{switches[1]}\n")
    (d / "limits").write_text("Limit                     Soft Limit           Hard Limit           Units     \n"
                              "Max cpu time              unlimited            unlimited            seconds   \n"
                              f"Max open files            {nofile:<21}{nofile:<21}files     \n")
    (d / "fd").mkdir()
    for i in range(fds):
        (d / "fd" / str(i)).write_text("")
    if io is not None:
        rb, wb, cancelled, syscr, syscw = io
        (d / "io").write_text(f"rchar: 0\nwchar: 0\nsyscr: {syscr}\nsyscw: {syscw}\nread_bytes: {rb}\n"
                              f"write_bytes: {wb}\ncancelled_write_bytes: {cancelled}\n")
    else:
        (d / "io").mkdir()  # unreadable as a file: the field is absent
    if exe:
        os.symlink(exe, d / "exe")


def fake_proc(root: Path) -> Path:
    root.mkdir()
    (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {BTIME}\nprocs_blocked 0\n")
    write_proc(root, 1, comm="systemd", ppid=0, exe="/usr/lib/systemd/systemd", cmdline=("/sbin/init",),
               utime=150, stime=250, start=1, rss_pages=3000, fds=40, io=(1 << 20, 4096, 0, 900, 20),
               faults=(5000, 90000, 12, 40), vsize=22 << 20, switches=(7000, 300), nofile="524288")
    write_proc(root, 2, comm="kthreadd", ppid=0, flags=0x00208040, fds=0, io=None)
    write_proc(root, 410, comm="nginx", exe="/usr/sbin/nginx", cmdline=("nginx: master process",),
               cgroup="/system.slice/nginx.service", utime=20, stime=10, threads=1, start=500, rss_pages=800,
               fds=12, io=(8192, 0, 0, 40, 0), faults=(300, 0, 2, 0), vsize=60 << 20, switches=(40, 2))
    for pid, start in ((411, 510), (412, 520)):
        write_proc(root, pid, comm="nginx", ppid=410, exe="/usr/sbin/nginx", cmdline=("nginx: worker process",),
                   cgroup="/system.slice/nginx.service", utime=300, stime=100, start=start, rss_pages=1200,
                   fds=30, io=(0, 10 << 20, 1 << 20, 5000, 8000), faults=(1000, 0, 0, 0), vsize=64 << 20,
                   switches=(900, 30), swap_kb=256, nofile="64")
    write_proc(root, 900, comm="python3", exe="/usr/bin/python3.11", cmdline=("python3", "/srv/etl/etl.py"),
               utime=1234, stime=56, threads=4, start=9000, rss_pages=25600, fds=7, state="D",
               io=(300 << 20, 2 << 20, 0, 70000, 300), faults=(80000, 0, 900, 0), switches=(3, 4),
               nofile="unlimited")
    write_proc(root, 901, comm="bash", exe="/usr/bin/bash", cmdline=("-bash",), uid=1000, io=None, fds=4,
               start=8000, rss_pages=900)
    write_proc(root, 950, comm="defunct", state="Z", ppid=900, start=9100, utime=7, fds=0, swap_kb=None)
    write_proc(root, 960, comm="stopped-job", state="T", ppid=901, start=9200, fds=1)
    return root


def expose(tmp_path: Path) -> str:
    procfs = fake_proc(tmp_path / "proc")
    config = parse_config({"apps": [{"name": "login-shells", "comm": "^bash$", "user": "."}]})
    exporter = Exporter(config, procfs=procfs, enabled={"process"},
                        process_source=LinuxProcessSource(procfs), sources=[], platform_name="linux")
    return normalised_exposition(exporter.render_metrics()[0])


def test_fake_proc_matches_golden(tmp_path: Path, update_golden: bool) -> None:
    text = expose(tmp_path)
    if update_golden or not GOLDEN.exists():
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "exposition changed; rerun with --update-golden and review the diff"


def test_fake_proc_values(tmp_path: Path) -> None:
    text = expose(tmp_path)
    v = parse_exposition(text)
    assert v['atlas_app_processes{app="nginx"}'] == 3
    assert v['atlas_app_cpu_seconds_total{app="nginx",mode="user"}'] == (20 + 300 + 300) / CLK_TCK
    assert v['atlas_app_resident_memory_bytes{app="nginx"}'] == (800 + 2400) * PAGE_SIZE
    assert v['atlas_app_disk_written_bytes_total{app="nginx"}'] == 2 * (10 << 20)  # the kernel's write_bytes
    assert v['atlas_app_disk_cancelled_write_bytes_total{app="nginx"}'] == 2 * (1 << 20)
    assert v['atlas_app_minor_page_faults_total{app="systemd"}'] == 5000 + 90000  # own + reaped children's
    assert v['atlas_app_major_page_faults_total{app="systemd"}'] == 12 + 40
    assert v['atlas_app_context_switches_total{app="nginx",kind="voluntary"}'] == 40 + 2 * 900
    assert v['atlas_app_context_switches_total{app="nginx",kind="involuntary"}'] == 2 + 2 * 30
    assert v['atlas_app_virtual_memory_bytes{app="nginx"}'] == (60 + 2 * 64) << 20
    assert v['atlas_app_swap_bytes{app="nginx"}'] == 2 * 256 * 1024
    assert v['atlas_app_open_fds_limit_ratio{app="nginx"}'] == 30 / 64
    assert v['atlas_app_open_fds_limit_ratio{app="systemd"}'] == 40 / 524288
    assert 'atlas_app_open_fds_limit_ratio{app="etl"}' not in v  # unlimited: no ratio
    assert v['atlas_app_process_states{app="nginx",state="sleeping"}'] == 3
    assert v['atlas_app_process_states{app="etl",state="disk_sleep"}'] == 1
    assert not any('app="defunct"' in key for key in v)  # first seen a zombie: its comm names no app
    assert v['atlas_app_process_states{app="stopped-job",state="stopped"}'] == 1
    assert v['atlas_app_process_states{app="nginx",state="running"}'] == 0
    assert 'atlas_app_proportional_memory_bytes{app="nginx"}' not in v  # --collector.smaps is off
    assert v['atlas_app_io_write_ops_total{app="nginx"}'] == 16000
    assert v['atlas_app_open_fds{app="nginx"}'] == 72
    assert v['atlas_app_disk_wait_processes{app="etl"}'] == 1
    assert v['atlas_app_oldest_start_time_seconds{app="nginx"}'] == BTIME + 500 / CLK_TCK
    assert not any('app="kthreadd"' in key for key in v)  # kernel threads are no app's
    assert 'atlas_app_disk_read_bytes_total{app="login-shells"}' not in v  # unreadable: absent
    assert v['atlas_app_processes{app="login-shells"}'] == 1
    assert v['atlas_scrape_collector_success{collector="process"}'] == 1


def test_smaps_collector_sums_pss(tmp_path: Path) -> None:
    procfs = fake_proc(tmp_path / "proc")
    for pid, pss_kb in ((410, 1000), (411, 3000), (412, 3000)):
        (procfs / str(pid) / "smaps_rollup").write_text(
            "00400000-7ffd1000 ---p 00000000 00:00 0                  [rollup]\n"
            f"Rss:                4800 kB\nPss:             {pss_kb} kB\nPss_Anon:           10 kB\n")
    exporter = Exporter(parse_config({}), procfs=procfs, enabled={"process", "smaps"},
                        process_source=LinuxProcessSource(procfs), sources=[], platform_name="linux")
    v = parse_exposition(normalised_exposition(exporter.render_metrics()[0]))
    assert v['atlas_app_proportional_memory_bytes{app="nginx"}'] == 7000 * 1024
    assert 'atlas_app_proportional_memory_bytes{app="systemd"}' not in v  # no smaps_rollup: absent
    assert v['atlas_scrape_collector_success{collector="smaps"}'] == 1


def test_smaps_is_off_unless_asked_for(tmp_path: Path) -> None:
    procfs = fake_proc(tmp_path / "proc")
    (procfs / "410" / "smaps_rollup").write_text("Pss:             1000 kB\n")
    source = LinuxProcessSource(procfs)
    exporter = Exporter(parse_config({}), procfs=procfs, process_source=source, sources=[], platform_name="linux")
    assert "smaps" not in exporter.enabled and "process" in exporter.enabled
    assert source.read_pss is False
    assert "atlas_app_proportional_memory_bytes" not in exporter.render_metrics()[0].decode()


def test_status_is_reread_only_when_stat_changes_and_limits_when_due(tmp_path: Path) -> None:
    procfs = fake_proc(tmp_path / "proc")
    now = [0.0]
    source = LinuxProcessSource(procfs, limits_ttl_seconds=600, clock=lambda: now[0])

    def nginx_master() -> object:
        return next(s for s in source.scan().samples if s.id.pid == 410)

    first = nginx_master()
    reads = source.status_reads
    assert (first.voluntary_switches, first.fd_limit) == (40, 1024)
    status = procfs / "410" / "status"
    status.write_text(status.read_text().replace("voluntary_ctxt_switches:\t40", "voluntary_ctxt_switches:\t41"))
    (procfs / "410" / "limits").write_text("Max open files            2048                 2048          files\n")
    idle = nginx_master()
    assert idle.voluntary_switches == 40 and idle.fd_limit == 1024  # stat unchanged: nothing re-read
    assert source.status_reads == reads
    stat = procfs / "410" / "stat"
    stat.write_text(stat.read_text().replace(" 20 10 ", " 21 10 ", 1))  # it ran: utime moved
    busy = nginx_master()
    assert busy.voluntary_switches == 41 and source.status_reads == reads + 1
    assert busy.fd_limit == 1024  # limits are cached per process for limits_ttl_seconds
    now[0] = 601.0
    assert nginx_master().fd_limit == 2048


def test_a_process_read_mid_exec_is_read_again_once_its_arguments_are_in_place(tmp_path: Path) -> None:
    """For a moment during an exec the kernel shows the new comm and exe with no arguments yet: naming
    from that reading would name a script by its interpreter, for good."""
    from atlas_exporter.collectors.process.readers_linux import EXEC_SETTLE_TRIES, read_identity
    from atlas_exporter.model import ProcessId

    def just_started(ticks: int):  # the boot-time clock a moment after a process started at `ticks`
        return lambda: ticks / CLK_TCK + 0.01

    root = tmp_path / "proc"
    write_proc(root, 700, comm="python3", exe="/usr/bin/python3.11", start=700)  # cmdline empty
    waits: list[float] = []

    def exec_finishes(seconds: float) -> None:
        waits.append(seconds)
        (root / "700" / "cmdline").write_bytes(b"python3\0/srv/etl/etl.py\0")

    ident = read_identity(str(root), ProcessId(700, 700), lambda uid: "root", sleep=exec_finishes,
                          since_boot=just_started(700))
    assert ident is not None and ident.cmdline == ("python3", "/srv/etl/etl.py") and len(waits) == 1

    write_proc(root, 701, comm="worker", state="Z", start=701)  # a zombie's arguments are gone for good
    waits.clear()
    ident = read_identity(str(root), ProcessId(701, 701), lambda uid: "root", sleep=waits.append,
                          since_boot=just_started(701))
    assert ident is not None and ident.cmdline == () and waits == []

    write_proc(root, 702, comm="bare", start=702)  # a live process that really has no arguments
    ident = read_identity(str(root), ProcessId(702, 702), lambda uid: "root", sleep=waits.append,
                          since_boot=just_started(702))
    assert ident is not None and ident.comm == "bare" and len(waits) == EXEC_SETTLE_TRIES - 1
    waits.clear()  # ... and once it has run for a while, it is not waited for at all
    ident = read_identity(str(root), ProcessId(702, 702), lambda uid: "root", sleep=waits.append,
                          since_boot=lambda: 702 / CLK_TCK + 60)
    assert ident is not None and ident.cmdline == () and waits == []
