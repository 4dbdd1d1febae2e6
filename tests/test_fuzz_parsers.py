"""Fuzzing every parser of outside input: each returns a value or raises its documented error
(a ValueError subclass the caller skips and counts); nothing else escapes."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_exporter.collectors.crash import connector_linux, reports_darwin, reports_linux
from atlas_exporter.collectors.hang import source_linux as hang_linux
from atlas_exporter.collectors.network import source_darwin as network_darwin
from atlas_exporter.collectors.process import parsers_linux as process_parsers
from atlas_exporter.config import ConfigError, parse_config
from atlas_exporter.web.basicauth import parse_basic_authorization
from atlas_exporter.web.webconfig import WebConfigError, parse_web_config

FIXTURES = Path(__file__).parent / "fixtures"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STAT = (b"4312 (nginx: worker) S 4311 4311 4311 0 -1 4194624 1520 0 0 0 250 75 0 0 20 0 3 0 123456 "
        b"110968832 2813 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
IO = b"rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 6\ncancelled_write_bytes: 7\n"


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, and the seed with a random slice replaced (near-valid input finds more)."""
    spliced = st.tuples(st.integers(0, len(seed)), st.integers(0, len(seed)), st.binary(max_size=40)).map(
        lambda t: seed[:min(t[0], t[1])] + t[2] + seed[max(t[0], t[1]):])
    return st.one_of(st.binary(max_size=300), spliced)


@FUZZ
@given(mutations(STAT))
def test_fuzz_proc_stat(data: bytes) -> None:
    for parse in (process_parsers.parse_stat, lambda d: process_parsers.sample_from_stat(1, d, 0.0),
                  hang_linux.parse_task_stat):
        try:
            parse(data)
        except ValueError:
            pass


@FUZZ
@given(mutations(IO))
def test_fuzz_proc_io_and_status(data: bytes) -> None:
    try:
        io = process_parsers.parse_io(data)
        assert min(io.read_bytes, io.write_bytes, io.syscr, io.syscw) >= -(2**63)
    except process_parsers.ParseError:
        pass
    text = data.decode("utf-8", "replace")
    for parse in (process_parsers.parse_cgroup, process_parsers.parse_btime, process_parsers.parse_uid,
                  process_parsers.parse_capabilities):
        try:
            parse(text)
        except ValueError:
            pass
    try:
        hang_linux.parse_switches(data)
    except ValueError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_proc_connector_datagrams(data: bytes) -> None:
    try:
        connector_linux.parse_proc_events(data)
    except ValueError:
        pass


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_linux_crash_texts(text: str) -> None:
    for parse in (reports_linux.parse_kmsg_record, reports_linux.parse_coredump_name, reports_linux.parse_core_pattern,
                  reports_linux.parse_apport_headers):
        try:
            parse(text)
        except ValueError:
            pass



IPS = next((p.read_text(errors="replace") for p in sorted((FIXTURES / "crash").glob("ips_*.ips"))), "")
CRASH = next((p.read_text(errors="replace") for p in sorted((FIXTURES / "crash").glob("crash_macos*.crash"))), "")
NETTOP = next((p.read_text(errors="replace") for p in sorted((FIXTURES / "network").glob("*nettop*"))), "")


def text_mutations(seed: str) -> st.SearchStrategy[str]:
    spliced = st.tuples(st.integers(0, len(seed)), st.integers(0, len(seed)), st.text(max_size=40)).map(
        lambda t: seed[:min(t[0], t[1])] + t[2] + seed[max(t[0], t[1]):])
    return st.one_of(st.text(max_size=300), spliced)


def test_fuzz_seeds_exist() -> None:
    assert IPS and CRASH and NETTOP, "fixtures for the macOS report and nettop fuzzers are missing"


@FUZZ
@given(text_mutations(IPS))
def test_fuzz_ips_reports(text: str) -> None:
    try:
        reports_darwin.parse_ips(text)
    except reports_darwin.ReportError:
        pass


@FUZZ
@given(text_mutations(CRASH))
def test_fuzz_text_crash_and_hang_reports(text: str) -> None:
    for parse in (reports_darwin.parse_crash_text, reports_darwin.parse_hang_text):
        try:
            parse(text)
        except reports_darwin.ReportError:
            pass


@FUZZ
@given(text_mutations(NETTOP))
def test_fuzz_nettop_csv(text: str) -> None:
    frame = network_darwin.parse_nettop_csv(text)
    assert frame is None or isinstance(frame, network_darwin.NettopFrame)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
config_keys = st.sampled_from(["apps", "max_apps", "hang", "crash", "network", "csv", "retention_seconds", "x"])


@FUZZ
@given(st.dictionaries(config_keys, yaml_values, max_size=4) | yaml_values)
def test_fuzz_config_trees(raw: object) -> None:
    try:
        parse_config(raw, "fuzz.yml")
    except ConfigError as err:
        assert str(err).startswith("fuzz.yml")


@FUZZ
@given(st.dictionaries(st.sampled_from(["tls_server_config", "basic_auth_users", "http_server_config", "x"]),
                       yaml_values, max_size=3) | yaml_values)
def test_fuzz_web_config_trees(raw: object) -> None:
    try:
        parse_web_config(raw, "web.yml")
    except WebConfigError as err:
        assert "web.yml" in str(err)


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_basic_authorization_header(header: str) -> None:
    parse_basic_authorization(header)
