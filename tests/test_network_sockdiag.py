"""sock_diag parsers on real captured netlink datagrams (tests/fixtures/network/*.bin).

The expected values come from `ss -tinoe` run at capture time (expected.json, ss_tinoe.txt), not
from our parser. `capture_sockdiag.py` re-records the fixtures.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_exporter.collectors.network.sockdiag_linux import (
    DUMP_STATES,
    INET_DIAG_CGROUP_ID,
    INET_DIAG_INFO,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOCK_DIAG_BY_FAMILY,
    TCP_LISTEN,
    build_dump_request,
    parse_inet_diag_msg,
    parse_netlink_buffer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "network"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())["established"]


def nlmsg(kind: int, payload: bytes, flags: int = 2) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, flags, 1, 0) + payload + b"\0" * (-length % 4)


def rta(kind: int, body: bytes) -> bytes:
    length = 4 + len(body)
    return struct.pack("=HH", length, kind) + body + b"\0" * (-length % 4)


def diag_msg(*, family: int = socket.AF_INET, state: int = 1, sport: int = 80, dport: int = 5555,
             cookie: int = 0x1_0000_0002, uid: int = 1000, inode: int = 4242, attrs: bytes = b"") -> bytes:
    src = socket.inet_pton(family, "127.0.0.1" if family == socket.AF_INET else "::1").ljust(16, b"\0")
    head = struct.pack("=BBBB", family, state, 0, 0)
    sockid = struct.pack("!HH", sport, dport) + src + b"\0" * 16 + struct.pack("=III", 0, cookie & 0xFFFFFFFF,
                                                                                 cookie >> 32)
    tail = struct.pack("=IIIII", 0, 0, 0, uid, inode)
    return head + sockid + tail + attrs


def tcp_info(acked: int, received: int, size: int = 232) -> bytes:
    body = bytearray(size)
    if size >= 128:
        struct.pack_into("=Q", body, 120, acked)
    if size >= 136:
        struct.pack_into("=Q", body, 128, received)
    return bytes(body)


def test_real_dump_matches_ss() -> None:
    batch = parse_netlink_buffer((FIXTURES / "dump_tcp.bin").read_bytes())
    assert batch.malformed == 0 and batch.error == 0
    by_cookie = {s.cookie: s for s in batch.sockets}
    for want in EXPECTED:
        got = by_cookie[want["cookie"]]
        assert (got.sport, got.dport, got.inode) == (want["sport"], want["dport"], want["inode"])
        assert (got.bytes_acked, got.bytes_received) == (want["bytes_acked"], want["bytes_received"])
        assert got.state == 1
        assert got.cgroup_id is not None
    families = {by_cookie[w["cookie"]].family for w in EXPECTED}
    assert families == {socket.AF_INET, socket.AF_INET6}
    listeners = [s for s in batch.sockets if s.state == TCP_LISTEN]
    assert {w["dport"] for w in EXPECTED} & {s.sport for s in listeners}


def test_real_dump_has_one_done_per_family() -> None:
    data = (FIXTURES / "dump_tcp.bin").read_bytes()
    off = dones = 0
    while off < len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        dones += kind == NLMSG_DONE
        off += (length + 3) & ~3
    assert dones == 2
    assert parse_netlink_buffer(data).done


def test_real_destroy_messages_carry_final_counts_and_no_inode() -> None:
    batch = parse_netlink_buffer((FIXTURES / "destroy_tcp.bin").read_bytes())
    assert batch.malformed == 0
    final = {s.cookie: s for s in batch.sockets}
    for want in EXPECTED:
        got = final[want["cookie"]]
        assert got.inode == 0
        assert got.cgroup_id is None
        # closing adds at most the FIN to each sequence space
        assert want["bytes_acked"] <= got.bytes_acked <= want["bytes_acked"] + 1
        assert want["bytes_received"] <= got.bytes_received <= want["bytes_received"] + 1


def test_dump_request_layout() -> None:
    request = build_dump_request(socket.AF_INET6, seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (len(request), SOCK_DIAG_BY_FAMILY, 0x301, 7)
    family, protocol, ext, states = struct.unpack_from("=BBBxI", request, 16)
    assert (family, protocol, ext, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1),
                                               DUMP_STATES)
    assert len(request) == 16 + 56
    assert not DUMP_STATES & (1 << 6)  # TIME_WAIT has no tcp_info


def test_synthetic_message_fields() -> None:
    cookie = (7 << 32) | 9
    msg = diag_msg(family=socket.AF_INET6, sport=443, dport=50000, cookie=cookie, uid=33, inode=777,
                   attrs=rta(INET_DIAG_INFO, tcp_info(1234, 5678)) + rta(INET_DIAG_CGROUP_ID, struct.pack("=Q", 99)))
    info = parse_inet_diag_msg(msg, 0, len(msg))
    assert info is not None
    assert (info.family, info.sport, info.dport, info.cookie, info.uid, info.inode) == (
        socket.AF_INET6, 443, 50000, cookie, 33, 777)
    assert (info.bytes_acked, info.bytes_received, info.cgroup_id) == (1234, 5678, 99)
    assert info.src == socket.inet_pton(socket.AF_INET6, "::1")


def test_short_tcp_info_gives_none_not_zero() -> None:
    old = diag_msg(attrs=rta(INET_DIAG_INFO, tcp_info(1, 2, size=104)))  # a pre-4.1 kernel's tcp_info
    info = parse_inet_diag_msg(old, 0, len(old))
    assert info is not None and info.bytes_acked is None and info.bytes_received is None
    half = diag_msg(attrs=rta(INET_DIAG_INFO, tcp_info(5, 6, size=128)))
    info = parse_inet_diag_msg(half, 0, len(half))
    assert info is not None and info.bytes_acked == 5 and info.bytes_received is None
    bare = diag_msg()
    info = parse_inet_diag_msg(bare, 0, len(bare))
    assert info is not None and info.bytes_acked is None


def test_error_message_reports_errno() -> None:
    data = nlmsg(NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + b"\0" * 16)
    batch = parse_netlink_buffer(data)
    assert batch.error == errno.EPERM and batch.done and batch.sockets == []


def test_truncated_and_inconsistent_messages_are_counted_not_raised() -> None:
    good = nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg(attrs=rta(INET_DIAG_INFO, tcp_info(10, 20))))
    short = nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg()[:40])
    bad_attr = nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg() + struct.pack("=HH", 200, INET_DIAG_INFO))
    unknown_family = nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg().replace(b"\x02", b"\x07", 1))
    batch = parse_netlink_buffer(good + short + bad_attr + unknown_family)
    assert [s.bytes_acked for s in batch.sockets] == [10]
    assert batch.malformed == 3
    cut = parse_netlink_buffer(good[:-10])
    assert cut.sockets == [] and cut.malformed == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    batch = parse_netlink_buffer(data)
    assert batch.malformed >= 0


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1),
       st.integers(min_value=0, max_value=2**64 - 1))
def test_counters_and_cookie_round_trip(acked: int, received: int, cookie: int) -> None:
    msg = nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg(cookie=cookie, attrs=rta(INET_DIAG_INFO, tcp_info(acked, received))))
    (info,) = parse_netlink_buffer(msg).sockets
    assert (info.bytes_acked, info.bytes_received, info.cookie) == (acked, received, cookie)
