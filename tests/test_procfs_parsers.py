"""Pure parsers of /proc text, on literal strings in the kernel's format."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from atlas_exporter.collectors.process.parsers_linux import (
    CLK_TCK,
    PAGE_SIZE,
    PF_KTHREAD,
    ParseError,
    parse_btime,
    parse_capabilities,
    parse_cgroup,
    parse_io,
    parse_stat,
    parse_uid,
    privilege_of,
    sample_from_stat,
)
from atlas_exporter.model import ProcessId, ProcSample

STAT = ("4312 (nginx: worker) S 4311 4311 4311 0 -1 4194624 1520 0 0 0 250 75 0 0 20 0 3 0 123456 "
        "110968832 2813 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
IO = ("rchar: 52428925\nwchar: 52428800\nsyscr: 53\nsyscw: 1\nread_bytes: 4096\nwrite_bytes: 52453376\n"
      "cancelled_write_bytes: 20971520\n")


def test_stat_fields() -> None:
    st = parse_stat(STAT)
    assert (st.comm, st.state, st.ppid) == ("nginx: worker", "S", 4311)
    assert (st.utime, st.stime, st.num_threads, st.starttime, st.rss_pages) == (250, 75, 3, 123456, 2813)
    assert not st.flags & PF_KTHREAD


def test_sample_from_stat_in_base_units() -> None:
    sample = sample_from_stat(4312, STAT.encode(), 1_700_000_000.0)
    assert sample is not None
    assert (sample.id, sample.ppid, sample.state, sample.comm) == (ProcessId(4312, 123456), 4311, "S", "nginx: worker")
    assert (sample.cpu_user_seconds, sample.cpu_system_seconds) == (250 / CLK_TCK, 75 / CLK_TCK)
    assert (sample.threads, sample.resident_bytes, sample.virtual_bytes) == (3, 2813 * PAGE_SIZE, 110968832)
    assert sample.start_time_seconds == 1_700_000_000.0 + 123456 / CLK_TCK
    assert (sample.minor_faults, sample.major_faults) == (1520, 0)
    assert sample.open_fds is None and sample.read_bytes is None  # read from other files by the scan


def test_proc_sample_from_stat_fills_each_named_field_and_leaves_the_rest_none() -> None:
    names = list(inspect.signature(ProcSample.from_stat).parameters)
    values = {name: f"value of {name}" for name in names}
    sample = ProcSample.from_stat(**values)  # type: ignore[arg-type]
    for field in dataclasses.fields(ProcSample):
        assert getattr(sample, field.name) == values.get(field.name), field.name


def test_stat_comm_with_parentheses_and_spaces() -> None:
    st = parse_stat(STAT.replace("(nginx: worker)", "(a) b (c))"))
    assert st.comm == "a) b (c)"
    assert st.utime == 250


def test_stat_kernel_thread_flag() -> None:
    kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 1 0 0 20 0 1 0 1 0 0 " + "0 " * 30
    assert parse_stat(kthread).flags & PF_KTHREAD


@pytest.mark.parametrize("bad", ["", "1234", "1 (x) S 1 2 3", "1 (x) S " + "z " * 30, "1 x) S" + " 1" * 40])
def test_stat_rejects_bad_text(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_stat(bad)


def test_io_fields() -> None:
    io = parse_io(IO)
    assert (io.read_bytes, io.write_bytes, io.cancelled_write_bytes, io.syscr, io.syscw) == (
        4096, 52453376, 20971520, 53, 1)


def test_io_other_order_still_parses() -> None:
    lines = IO.strip().splitlines()
    assert parse_io("\n".join(reversed(lines))) == parse_io(IO)


@pytest.mark.parametrize("bad", ["", "rchar: 1\n", IO.replace("52453376", "x"), "read_bytes: 1 write_bytes:"])
def test_io_rejects_bad_text(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_io(bad)


def test_btime() -> None:
    assert parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n") == 1700000000.0
    with pytest.raises(ParseError):
        parse_btime("cpu 1 2 3\n")


def test_cgroup_v2_and_hybrid() -> None:
    assert parse_cgroup("0::/system.slice/nginx.service\n") == "/system.slice/nginx.service"
    hybrid = "9:name=systemd:/system.slice/cron.service\n4:memory:/x\n0::/\n"
    assert parse_cgroup(hybrid) == "/"
    assert parse_cgroup("9:name=systemd:/system.slice/cron.service\n4:memory:/x\n") == "/system.slice/cron.service"
    assert parse_cgroup("") is None


def test_status_uid_and_capabilities() -> None:
    status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000080000\n"
    assert parse_uid(status) == 1000
    assert parse_capabilities(status) == 1 << 19
    assert privilege_of(status, 1000) == "capabilities"
    assert privilege_of("CapEff:\t0000000000000000\n", 1000) == "user"
    assert privilege_of("", 0) == "root"


def test_status_lines_without_values() -> None:
    assert parse_capabilities("CapEff:\n") == 0 and parse_capabilities("CapEff:\tzz\n") == 0
    assert parse_uid("Uid:\n") is None
