"""Tracker: tables of successive passes and the per-app totals they must give."""

from __future__ import annotations

from atlas_exporter.apps.tracker import Tracker
from atlas_exporter.model import ProcessId, ProcSample


def proc(pid: int, started: int = 1, *, cpu: float = 0.0, rb: int | None = 0, wb: int | None = 0,
         ppid: int = 1, state: str = "S", threads: int = 1, rss: int = 100, fds: int | None = 3) -> ProcSample:
    return ProcSample(ProcessId(pid, started), ppid, state, cpu, cpu / 2, threads, rss, 1000.0 + started,
                      open_fds=fds, read_bytes=rb, written_bytes=wb, read_ops=None if rb is None else 1,
                      write_ops=None if wb is None else 1)


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
        [(proc(10, wb=9000), "shell")],  # child reaped: its 8000 folded into the parent's counter
        [(proc(10, wb=9500), "shell")],  # the parent's own new I/O still counts
    ])
    assert a3["worker"].written_bytes_total == 8000
    assert a3["shell"].written_bytes_total == 1000
    assert a4["shell"].written_bytes_total == 1500


def test_reap_seen_one_pass_late_still_credited() -> None:
    t = Tracker()
    _, _, a3 = run(t, [
        [(proc(10, wb=0), "shell"), (proc(20, wb=4000, ppid=10), "worker")],
        [(proc(10, wb=0), "shell")],  # child gone, parent's counter not yet grown
        [(proc(10, wb=4000), "shell")],
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


def reaping(pid: int, *, cpu: float, reaped: float, ppid: int = 1) -> ProcSample:
    sample = proc(pid, cpu=cpu, ppid=ppid)
    sample.reaped_cpu_user_seconds = reaped
    sample.reaped_cpu_system_seconds = reaped / 2
    return sample


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
        [(reaping(10, cpu=1.0, reaped=2.5), "shell")],  # the job's last 0.5 s ran after the last pass
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
