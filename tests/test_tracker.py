"""Tracker: tables of successive passes and the per-app totals they must give."""

from __future__ import annotations

import pytest

from atlas_exporter.apps.tracker import Tracker
from atlas_exporter.model import ProcessId, ProcSample


def proc(pid: int, started: int = 1, *, cpu: float = 0.0, rb: int | None = 0, wb: int | None = 0,
         ppid: int = 1, state: str = "S", threads: int = 1, rss: int = 100, fds: int | None = 3,
         faults: int = 100, reaped_faults: int = 0, reaped_cpu: float = 0.0) -> ProcSample:
    """A Linux-like sample: reaped-children CPU and faults are known (0 unless given)."""
    return ProcSample(ProcessId(pid, started), ppid, state, cpu, cpu / 2, threads, rss, 1000.0 + started,
                      open_fds=fds, read_bytes=rb, written_bytes=wb, read_ops=None if rb is None else 1,
                      write_ops=None if wb is None else 1, reaped_cpu_user_seconds=reaped_cpu,
                      reaped_cpu_system_seconds=reaped_cpu / 2, minor_faults=faults, major_faults=0,
                      reaped_minor_faults=reaped_faults, reaped_major_faults=0)


def run(tracker: Tracker, passes: list[list[tuple[ProcSample, str]]]) -> list[dict]:
    out = []
    for i, named in enumerate(passes):
        update = tracker.update(named, now=float(i))
        out.append(update.apps)
    return out


def test_new_process_counts_in_full_and_exit_keeps_totals() -> None:
    t = Tracker()
    a1, a2, a3 = run(t, [
        [(proc(10, cpu=2.0, wb=500), "web")],
        [(proc(10, cpu=3.0, wb=800), "web"), (proc(11, 50, cpu=1.0, wb=100), "web")],
        [],  # both exited
    ])
    assert a1["web"].cpu_user_seconds_total == 2.0
    assert a2["web"].cpu_user_seconds_total == 4.0 and a2["web"].written_bytes_total == 900
    assert a2["web"].processes == 2
    assert a3["web"].processes == 0
    assert a3["web"].cpu_user_seconds_total == 4.0 and a3["web"].cpu_system_seconds_total == 2.0
    assert a3["web"].written_bytes_total == 900


def test_pid_reuse_is_a_new_process() -> None:
    t = Tracker()
    _, a2 = run(t, [
        [(proc(10, 1, cpu=5.0), "app")],
        [(proc(10, 99, cpu=0.5), "app")],  # same pid, new start time: a new process
    ])
    assert a2["app"].cpu_user_seconds_total == 5.5


def test_counter_going_backwards_never_lowers_totals() -> None:
    t = Tracker()
    _, a2, a3 = run(t, [
        [(proc(10, cpu=5.0, wb=100), "app")],
        [(proc(10, cpu=4.0, wb=50), "app")],
        [(proc(10, cpu=6.0, wb=150), "app")],
    ])
    assert a2["app"].cpu_user_seconds_total == 5.0 and a2["app"].written_bytes_total == 100
    assert a3["app"].cpu_user_seconds_total == 7.0 and a3["app"].written_bytes_total == 200


def test_reaped_child_io_is_not_counted_twice() -> None:
    t = Tracker()
    _, _, a3, a4 = run(t, [
        [(proc(10, wb=1000), "shell"), (proc(20, wb=0, ppid=10), "worker")],
        [(proc(10, wb=1000), "shell"), (proc(20, wb=8000, ppid=10), "worker")],
        # child reaped: its 8000 bytes and 100 faults folded into the parent's counters
        [(proc(10, wb=9000, reaped_faults=100), "shell")],
        [(proc(10, wb=9500, reaped_faults=100), "shell")],  # the parent's own new I/O still counts
    ])
    assert a3["worker"].written_bytes_total == 8000
    assert a3["shell"].written_bytes_total == 1000
    assert a4["shell"].written_bytes_total == 1500


def test_reap_seen_one_pass_late_still_credited() -> None:
    t = Tracker()
    _, _, a3 = run(t, [
        [(proc(10, wb=0), "shell"), (proc(20, wb=4000, ppid=10), "worker")],
        [(proc(10, wb=0), "shell")],  # child gone, parent's counter not yet grown
        [(proc(10, wb=4000, reaped_faults=100), "shell")],
    ])
    assert a3["shell"].written_bytes_total == 0
    assert a3["worker"].written_bytes_total == 4000


def test_denied_field_is_absent_not_zero() -> None:
    t = Tracker()
    a1, a2 = run(t, [
        [(proc(10, rb=None, wb=None, fds=None), "locked")],
        [(proc(10, rb=None, wb=None, fds=None), "locked"), (proc(11, rb=7, wb=9), "open")],
    ])
    assert a1["locked"].read_bytes_total is None and a1["locked"].written_bytes_total is None
    assert a1["locked"].open_fds is None
    assert a2["locked"].read_ops_total is None
    assert a2["open"].read_bytes_total == 7


def test_field_that_becomes_readable_counts_in_full() -> None:
    t = Tracker()
    _, a2 = run(t, [[(proc(10, rb=None), "x")], [(proc(10, rb=300), "x")]])
    assert a2["x"].read_bytes_total == 300


def test_gauges_sum_and_oldest() -> None:
    t = Tracker()
    (a1,) = run(t, [[(proc(10, 5, threads=3, rss=1000, fds=4), "db"),
                     (proc(11, 2, threads=2, rss=500, fds=None, state="D"), "db"),
                     (proc(12, 9, state="Z"), "db")]])
    db = a1["db"]
    assert (db.processes, db.threads, db.resident_bytes, db.open_fds, db.disk_wait_processes) == (2, 5, 1500, 4, 1)
    assert db.oldest_start_time_seconds == 1002.0 and db.oldest_pid == 11


def test_retention_retires_idle_apps() -> None:
    t = Tracker(retention_seconds=2.5)
    updates = [t.update(named, now=float(i)) for i, named in enumerate([[(proc(10, cpu=1.0), "x")], [], [], []])]
    assert "x" in updates[2].apps and updates[2].apps["x"].processes == 0
    assert "x" not in updates[3].apps and updates[3].retired == ["x"]
    assert updates[1].gone == [ProcessId(10, 1)]


def test_exec_moves_future_deltas_to_the_new_app() -> None:
    t = Tracker()
    _, a2 = run(t, [[(proc(10, cpu=1.0), "sh")], [(proc(10, cpu=3.0), "backup")]])
    assert a2["sh"].cpu_user_seconds_total == 1.0
    assert a2["backup"].cpu_user_seconds_total == 2.0


def reaping(pid: int, *, cpu: float, reaped: float, ppid: int = 1, reaped_faults: int = 0) -> ProcSample:
    return proc(pid, cpu=cpu, ppid=ppid, reaped_cpu=reaped, reaped_faults=reaped_faults)


def test_child_that_lived_between_passes_is_counted_through_the_parent() -> None:
    t = Tracker()
    _, a2 = run(t, [
        [(reaping(10, cpu=1.0, reaped=0.0), "make")],
        [(reaping(10, cpu=1.0, reaped=3.0), "make")],  # reaped a child it never showed us
    ])
    assert a2["make"].cpu_user_seconds_total == 4.0
    assert a2["make"].cpu_system_seconds_total == 0.5 + 1.5


def test_seen_child_cpu_is_not_counted_twice_after_reaping() -> None:
    t = Tracker()
    _, _, a3 = run(t, [
        [(reaping(10, cpu=1.0, reaped=0.0), "shell"), (reaping(20, cpu=0.0, reaped=0.0, ppid=10), "job")],
        [(reaping(10, cpu=1.0, reaped=0.0), "shell"), (reaping(20, cpu=2.0, reaped=0.0, ppid=10), "job")],
        # the job's last 0.5 s ran after the last pass
        [(reaping(10, cpu=1.0, reaped=2.5, reaped_faults=150), "shell")],
    ])
    assert a3["job"].cpu_user_seconds_total == 2.0
    assert a3["shell"].cpu_user_seconds_total == 1.5


def test_process_unreadable_for_a_pass_is_kept_not_counted_again() -> None:
    t = Tracker()
    t.update([(proc(10, cpu=100.0, wb=1000), "app"), (proc(20, cpu=1.0, ppid=10), "kid")], now=0.0)
    middle = t.update([(proc(10, cpu=100.0, wb=1000), "app")], now=1.0, keep=frozenset({20}))
    assert middle.gone == []
    after = t.update([(proc(10, cpu=100.0, wb=1000), "app"), (proc(20, cpu=2.0, ppid=10), "kid")], now=2.0)
    assert after.apps["kid"].cpu_user_seconds_total == 2.0  # 1 s more, not its lifetime again
    assert after.apps["app"].cpu_user_seconds_total == 100.0


def test_unreadable_cpu_and_state_are_absent() -> None:
    t = Tracker()
    sample = proc(10)
    sample.cpu_user_seconds = sample.cpu_system_seconds = None
    sample.state = "?"
    (apps,) = run(t, [[(sample, "locked")]])
    assert apps["locked"].cpu_user_seconds_total is None and apps["locked"].cpu_seconds_total() is None
    assert apps["locked"].disk_wait_processes is None
    assert apps["locked"].processes == 1


def test_unused_reap_credit_never_swallows_the_parents_own_io() -> None:
    # SIGCHLD ignored: the kernel reaps the child itself, nothing of it reaches the parent
    t = Tracker()
    _, _, a3, a4 = run(t, [
        [(proc(10, wb=0), "server"), (proc(20, wb=0, ppid=10), "helper")],
        [(proc(10, wb=0), "server"), (proc(20, wb=6000, ppid=10), "helper")],
        [(proc(10, wb=2000), "server")],  # the helper is gone; the parent writes 2000 of its own
        [(proc(10, wb=5000), "server")],
    ])
    assert a3["helper"].written_bytes_total == 6000
    assert a3["server"].written_bytes_total == 2000
    assert a4["server"].written_bytes_total == 5000


def test_orphan_reaped_by_a_subreaper_is_not_counted_again() -> None:
    # 30 forks 40, 40 forks 50; 40 exits (reaped by 30), 50 is reparented to 30 after its last
    # pass and dies; 30, a subreaper, reaps it: its counters jump by 50's CPU, faults and I/O
    t = Tracker()
    a = run(t, [
        [(reaping(30, cpu=0.1, reaped=0.0), "supervisor"), (reaping(40, cpu=0.0, reaped=0.0, ppid=30), "launcher"),
         (proc(50, cpu=1.0, wb=3000, ppid=40, faults=500), "burner")],
        [(reaping(30, cpu=0.1, reaped=0.0), "supervisor"),
         (proc(50, cpu=4.0, wb=3000, ppid=40, faults=900), "burner")],  # 40 gone, not yet reaped
        [(proc(30, cpu=0.1, reaped_cpu=4.0, reaped_faults=1000, wb=3000), "supervisor")],
    ])
    burner, supervisor = a[2]["burner"], a[2]["supervisor"]
    assert burner.cpu_user_seconds_total == 4.0 and burner.written_bytes_total == 3000
    assert supervisor.cpu_user_seconds_total == pytest.approx(0.1)  # neither 40's nor 50's CPU again
    assert supervisor.minor_faults_total == 100
    assert supervisor.written_bytes_total == 0


def test_faults_of_children_reaped_between_passes_count_once() -> None:
    t = Tracker()
    _, a2, a3 = run(t, [
        [(proc(10, faults=100), "make"), (proc(20, faults=40, ppid=10), "cc")],
        [(proc(10, faults=110, reaped_faults=300), "make"),  # an unseen child's 300 faults
         (proc(20, faults=90, ppid=10), "cc")],
        [(proc(10, faults=110, reaped_faults=400), "make")],  # cc reaped with its 90 (+10 after)
    ])
    assert a2["make"].minor_faults_total == 410
    assert a3["cc"].minor_faults_total == 90
    assert a3["make"].minor_faults_total == 410 + 10


def test_cancelled_writes_are_their_own_counter() -> None:
    t = Tracker()
    s1, s2 = proc(10, wb=4096), proc(10, wb=20 << 20)
    s1.cancelled_write_bytes, s2.cancelled_write_bytes = 0, 20 << 20
    _, a2 = run(t, [[(s1, "tmpwriter")], [(s2, "tmpwriter")]])
    assert a2["tmpwriter"].written_bytes_total == 20 << 20
    assert a2["tmpwriter"].cancelled_write_bytes_total == 20 << 20


def test_states_ratio_and_memory_gauges() -> None:
    t = Tracker()
    samples = [proc(10, state="R", fds=100), proc(11, state="S", fds=900), proc(12, state="D", fds=10),
               proc(13, state="Z"), proc(14, state="t"), proc(15, state="I")]
    samples[0].fd_limit, samples[1].fd_limit, samples[2].fd_limit = 1024, 1 << 20, None
    for i, s in enumerate(samples):
        s.virtual_bytes, s.swap_bytes = 1000 * (i + 1), 10
    (apps,) = run(t, [[(s, "db") for s in samples]])
    db = apps["db"]
    assert db.states == {"running": 1, "sleeping": 1, "disk_sleep": 1, "stopped": 1, "zombie": 1, "idle": 1}
    assert db.open_fds_limit_ratio == 100 / 1024
    assert db.virtual_bytes == 1000 * (1 + 2 + 3 + 5 + 6)  # the zombie holds no memory
    assert db.swap_bytes == 50


def test_unknown_state_is_not_a_state() -> None:
    t = Tracker()
    sample = proc(10, state="?")
    (apps,) = run(t, [[(sample, "locked")]])
    assert apps["locked"].states is None


def test_orphan_credit_goes_to_the_nearest_live_ancestor_before_the_pool() -> None:
    # 60 reaps its own unseen child with a lot of CPU in the same pass as the subreaper 30 reaps
    # the orphan 50: the orphan's credit belongs to 30 (its grandparent), not to whoever comes first
    t = Tracker()
    a = run(t, [
        [(reaping(60, cpu=0.0, reaped=0.0), "builder"), (reaping(30, cpu=0.1, reaped=0.0), "supervisor"),
         (reaping(40, cpu=0.0, reaped=0.0, ppid=30), "launcher"), (proc(50, cpu=2.0, ppid=40, faults=500), "burner")],
        [(reaping(60, cpu=0.0, reaped=0.0), "builder"), (reaping(30, cpu=0.1, reaped=0.0), "supervisor"),
         (proc(50, cpu=2.0, ppid=40, faults=500), "burner")],  # 40 gone (reaped next pass, with 50)
        [(proc(60, reaped_cpu=9.0, reaped_faults=5000), "builder"),
         (proc(30, cpu=0.1, reaped_cpu=2.0, reaped_faults=600), "supervisor")],
    ])
    assert a[2]["builder"].cpu_user_seconds_total == 9.0
    assert a[2]["supervisor"].cpu_user_seconds_total == pytest.approx(0.1)
    assert a[2]["burner"].cpu_user_seconds_total == 2.0
