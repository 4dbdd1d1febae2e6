"""Pure crash and hang logic: signal reasons, wait statuses, dedup, hang episodes, Linux parsers."""

from __future__ import annotations

import signal
import struct
from pathlib import Path

import pytest

from atlas_exporter.apps.crashes import (
    CrashBook,
    CrashEvent,
    ExitStatus,
    HangTracker,
    TaskObservation,
    crash_reason,
    decode_wait_status,
    reason_of_name,
    reason_of_signal,
)
from atlas_exporter.collectors.crash import connector_linux as conn
from atlas_exporter.collectors.crash import pids_linux as pl
from atlas_exporter.collectors.crash import reports_linux as rl
from atlas_exporter.collectors.hang.source_linux import is_kernel_thread, parse_switches, parse_task_stat

FIXTURES = Path(__file__).parent / "fixtures" / "crash"


@pytest.mark.parametrize(("number", "reason"), [
    (signal.SIGSEGV, "SIGSEGV"), (signal.SIGABRT, "SIGABRT"), (signal.SIGBUS, "SIGBUS"), (signal.SIGILL, "SIGILL"),
    (signal.SIGFPE, "SIGFPE"), (signal.SIGSYS, "SIGSYS"), (signal.SIGTRAP, "SIGTRAP"), (signal.SIGKILL, "other"),
    (None, "other"),
])
def test_reason_of_signal(number, reason):
    assert reason_of_signal(None if number is None else int(number)) == reason


@pytest.mark.parametrize(("name", "reason"), [
    ("SIGSEGV", "SIGSEGV"), ("segv", "SIGSEGV"), ("SIGIOT", "SIGABRT"), ("SIGKILL", "other"), ("", "other"),
    (None, "other"), ("SIGEMT", "other"),
])
def test_reason_of_name(name, reason):
    assert reason_of_name(name) == reason


@pytest.mark.parametrize(("status", "decoded", "reason"), [
    (0, ExitStatus(None, False, 0), None),
    (3 << 8, ExitStatus(None, False, 3), None),
    (11, ExitStatus(11, False, None), "SIGSEGV"),
    (11 | 0x80, ExitStatus(11, True, None), "SIGSEGV"),
    (6 | 0x80, ExitStatus(6, True, None), "SIGABRT"),
    (9, ExitStatus(9, False, None), None),  # SIGKILL: killed, not crashed
    (15, ExitStatus(15, False, None), None),
    (3 | 0x80, ExitStatus(3, True, None), "other"),  # SIGQUIT with a core dump
    (0x137F, ExitStatus(None, False, None), None),  # stopped
])
def test_wait_status(status, decoded, reason):
    assert decode_wait_status(status) == decoded
    assert crash_reason(decoded) == reason


def _event(source, t, pid, app="a", reason="SIGSEGV"):
    return CrashEvent(source=source, time=t, reason=reason, app=app, pid=pid)


def test_crash_book_dedups_by_pid_within_window():
    book = CrashBook(window_seconds=30)
    assert book.record_crash(_event("proc_connector", 1000.0, 42))
    assert not book.record_crash(_event("kernel_log", 1001.0, 42))
    assert not book.record_crash(_event("systemd_coredump", 1025.0, 42, reason="other"))
    assert book.record_crash(_event("kernel_log", 1000.5, 43))  # another process
    assert book.record_crash(_event("proc_connector", 1100.0, 42))  # pid reused much later
    assert book.crashes() == {("a", "SIGSEGV"): 3}
    assert book.last_crash() == {"a": 1100.0}
    assert book.duplicates == 2


def test_crash_book_without_pid_matches_app_from_another_source_only():
    book = CrashBook(window_seconds=30)
    assert book.record_crash(_event("proc_connector", 1000.0, 42, app="crashme"))
    assert not book.record_crash(_event("apport", 1010.0, None, app="crashme"))
    assert book.record_crash(_event("apport", 1012.0, None, app="other-app"))
    assert book.record_crash(_event("apport", 1100.0, None, app="crashme"))
    assert sum(book.crashes().values()) == 3


def _obs(pid, tid, switches):
    return TaskObservation(process=(pid, 100), task=(tid, 100), switches=switches)


def test_hang_tracker_episode_table():
    tracker = HangTracker(threshold_seconds=30)
    steps = [
        # (time, blocked tasks, hung pids, started pids)
        (0, [_obs(1, 1, 5)], set(), ()),
        (29, [_obs(1, 1, 5)], set(), ()),  # not before the threshold
        (30, [_obs(1, 1, 5)], {1}, (1,)),  # the episode starts once
        (60, [_obs(1, 1, 5), _obs(1, 2, 9)], {1}, ()),  # a second thread blocks: same episode
        (65, [_obs(1, 2, 9)], set(), ()),  # thread 1 resumed; thread 2 blocked only since 60
        (91, [_obs(1, 2, 9)], {1}, (1,)),  # thread 2 past the threshold: a second episode
        (95, [], set(), ()),  # progress: episode over
        (100, [_obs(1, 1, 6)], set(), ()),
        (130, [_obs(1, 1, 6)], {1}, (1,)),  # a new episode
    ]
    for now, blocked, hung, started in steps:
        update = tracker.update(now, blocked)
        assert {p for p, _ in update.hung} == hung, now
        assert tuple(p for p, _ in update.started) == started, now


def test_hang_tracker_switching_task_is_never_hung():
    tracker = HangTracker(threshold_seconds=10)
    for i in range(20):  # an I/O-busy task: in D at every sample, but switching
        update = tracker.update(float(i * 5), [_obs(7, 7, 1000 + i * 37)])
        assert not update.hung
    # leaving D between samples with the same count is a reset as well
    tracker.update(200.0, [_obs(7, 7, 5)])
    tracker.update(205.0, [])
    assert not tracker.update(215.0, [_obs(7, 7, 5)]).hung


def test_parse_task_stat_and_switches():
    stat = parse_task_stat(b"4242 (we (ird) name) D 4241 4242 4200 0 -1 4194304 90 0 0 0 1 2 0 0 20 0 1 0 "
                           b"5555 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")
    assert (stat.comm, stat.state, stat.ppid, stat.starttime) == ("we (ird) name", "D", 4241, 5555)
    assert not is_kernel_thread(stat)
    kthread = parse_task_stat(b"77 (kworker/0:1) D 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 20 0 1 0 12 0 0 0")
    assert is_kernel_thread(kthread)
    # in a container's pid namespace: pid 2 and a child of it, without PF_KTHREAD, are user processes
    for line in (b"2 (sh) S 1 2 2 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 40 0 0 0",
                 b"9 (app) D 2 9 2 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 41 0 0 0"):
        assert not is_kernel_thread(parse_task_stat(line))
    assert parse_switches(b"Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n") == 15
    with pytest.raises(ValueError):
        parse_switches(b"Name:\tx\n")
    with pytest.raises(ValueError):  # a count cut off after its key
        parse_switches(b"voluntary_ctxt_switches:\t4\nnonvoluntary_ctxt_switches:")
    with pytest.raises(ValueError):
        parse_task_stat(b"garbage")


# --- proc connector datagrams


def _datagram(what, payload):
    event = struct.pack("=IIQ", what, 0, 5_000_000_000) + payload
    cn = struct.pack("=IIIIHH", conn.CN_IDX_PROC, conn.CN_VAL_PROC, 0, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), conn.NLMSG_DONE, 0, 0, 0) + cn


def test_parse_proc_events():
    fork = conn.parse_proc_events(_datagram(0x1, struct.pack("=iiii", 10, 10, 11, 11)))
    assert fork == [conn.ProcEvent("fork", 5_000_000_000, pid=11, tgid=11, parent_pid=10, parent_tgid=10)]
    exe = conn.parse_proc_events(_datagram(0x2, struct.pack("=ii", 11, 11)))
    assert exe[0].what == "exec" and exe[0].pid == 11
    exit_ = conn.parse_proc_events(_datagram(0x80000000, struct.pack("=iiIIii", 11, 11, 0x8B, 17, 10, 10)))
    assert exit_[0].what == "exit" and exit_[0].exit_code == 0x8B and exit_[0].parent_tgid == 10
    assert crash_reason(decode_wait_status(exit_[0].exit_code)) == "SIGSEGV"
    # comm events are not used, but their sequence number counts
    assert [e.what for e in conn.parse_proc_events(_datagram(0x200, b"\0" * 24))] == ["other"]
    two = _datagram(0x2, struct.pack("=ii", 1, 1)) + _datagram(0x2, struct.pack("=ii", 2, 3))
    assert [(e.pid, e.tgid) for e in conn.parse_proc_events(two)] == [(1, 1), (2, 3)]
    with pytest.raises(ValueError):
        conn.parse_proc_events(_datagram(0x80000000, struct.pack("=ii", 1, 1)))  # truncated exit


def test_listen_message_layout():
    data = conn.listen_message(conn.PROC_CN_MCAST_LISTEN, ack=7)
    length, typ = struct.unpack_from("=IH", data)
    assert length == len(data) == 16 + 20 + 4 and typ == conn.NLMSG_DONE
    assert struct.unpack_from("=IIIIHH", data, 16) == (1, 1, 0, 7, 4, 0)
    assert struct.unpack_from("=I", data, 36) == (conn.PROC_CN_MCAST_LISTEN,)


@pytest.mark.parametrize(("pattern", "handler"), [
    ("core\n", "file"),
    ("/var/crash/core.%e.%p", "file"),
    ("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h", "systemd-coredump"),
    ("|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E", "apport"),
    ("|/usr/libexec/abrt-hook-ccpp %s %c %p %u %g %t e", "abrt"),
    ("|/usr/bin/mycollector %p", "pipe:mycollector"),
])
def test_parse_core_pattern(pattern, handler):
    assert rl.parse_core_pattern(pattern) == handler


def test_parse_coredump_name():
    parsed = rl.parse_coredump_name("core.sleep.1000.9a350d932b254a8d880f502cd4a2ae66.11340.1758137548000000.lz4")
    assert parsed == rl.CoredumpFile("sleep", 1000, "9a350d932b254a8d880f502cd4a2ae66", 11340, 1758137548.0)
    dotted = rl.parse_coredump_name(r"core.my\x2eapp.0.9a350d932b254a8d880f502cd4a2ae66.7.1758137548123456.zst")
    assert dotted is not None and dotted.comm == "my.app" and dotted.pid == 7
    assert rl.parse_coredump_name("core") is None
    assert rl.parse_coredump_name(".#core.sleep.1000.abc") is None


def test_parse_apport_fixture():
    report = rl.parse_apport_headers((FIXTURES / "apport_usr_bin_crashme.0.crash").read_text())
    assert report.problem_type == "Crash"
    assert report.executable == "/usr/bin/crashme"
    assert report.signal == 11 and report.pid == 17767
    assert report.time is not None
    assert rl.apport_name_executable("_usr_bin_crashme.0.crash") == "crashme"
    assert rl.apport_name_executable("_opt_tool_bin_x.1000.crash") == "x"
    assert rl.apport_name_executable("notes.txt") is None


def test_parse_kmsg_fixture():
    records = (FIXTURES / "kmsg_records.txt").read_text().splitlines()
    parsed = [rl.parse_kmsg_record(r) for r in records]
    assert [(p.comm, p.pid, p.reason) for p in parsed if p] == [
        ("crashme", 14296, "SIGSEGV"), ("crashme", 14298, "SIGILL"), ("crashme", 14300, "SIGTRAP"),
        ("fpe", 14323, "SIGFPE")]
    assert parsed[-1] is None  # a hung-task line is not a crash
    assert parsed[0].monotonic_seconds == pytest.approx(889.745232)
    fatal = rl.parse_kmsg_record("4,9,100,-;my app[12]: potentially unexpected fatal signal 7.")
    assert fatal is not None and fatal.comm == "my app" and fatal.reason == "SIGBUS"
    assert rl.parse_kmsg_record("no semicolon") is None
    assert rl.parse_kmsg_record("6,1,x,-;a[1]: segfault at 0 ip 1 sp 2 error 4") is None


def test_pid_apps_keeps_dead_entries_for_a_grace_period():
    pids = pl.PidApps(grace_seconds=10)
    pids.learn(5, "web")
    pids.learn_thread(6, 5)
    pids.died(5, now=100.0)
    pids.died(6, now=100.0)
    pids.prune(105.0)
    assert pids.app(5) == "web" and pids.tgid(6) == 5 and 5 not in pids.pids()
    pids.prune(111.0)
    assert pids.app(5) is None and pids.tgid(6) == 6
