"""The proc connector: process fork, exec and exit events from NETLINK_CONNECTOR / CN_IDX_PROC.

`parse_proc_events(datagram)` is pure and returns `ProcEvent`s; an exit carries the wait status
(`exit_code`), from which the crash source counts crashes and `atlas_app_exits_total`:

    atlas_app_exits_total{app="etl",outcome="error"} 3.0
    atlas_app_crashes_total{app="nginx",reason="SIGSEGV"} 1.0

`SequenceGaps` counts events the kernel dropped (`atlas_crash_reports_skipped_total{reason="lost_events"}`).
`ProcConnector` is the subscribed socket (root or CAP_NET_ADMIN); it only reads, never blocks.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

# --- netlink / proc connector constants (linux/netlink.h, linux/connector.h, linux/cn_proc.h)
NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CNMSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVHDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FOUR = struct.Struct("=iiii")
_EXIT = struct.Struct("=iiII")  # pid, tgid, exit_code, exit_signal

EVENT_NAMES = {0x0: "none", 0x1: "fork", 0x2: "exec", 0x80000000: "exit"}


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One proc connector event. For fork, `pid`/`tgid` are the child's, `parent_*` the parent's.

    For `none` (the subscription acknowledgement) `exit_code` carries the error number and
    `ack` the acknowledgement number. `seq` is the sending CPU's (`cpu`) event counter: the
    kernel numbers every event it sends per CPU, so a gap means events were lost.
    """

    what: str
    timestamp_ns: int
    pid: int = 0
    tgid: int = 0
    parent_pid: int = 0
    parent_tgid: int = 0
    exit_code: int = 0
    ack: int = 0
    seq: int = 0
    cpu: int = 0


def parse_proc_events(data: bytes) -> list[ProcEvent]:
    """Decode one netlink datagram from the proc connector.

    Event types other than fork, exec, exit and the acknowledgement come back as `other`,
    with only their sequence number and CPU (see `SequenceGaps`).
    """
    events: list[ProcEvent] = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, _type, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            raise ValueError(f"netlink message length {length} out of range")
        body = offset + _NLMSG.size
        if length >= _NLMSG.size + _CNMSG.size + _EVHDR.size:
            idx, val, cseq, ack, _clen, _cflags = _CNMSG.unpack_from(data, body)
            ev = body + _CNMSG.size
            what, cpu, ts = _EVHDR.unpack_from(data, ev)
            payload = ev + _EVHDR.size
            name = EVENT_NAMES.get(what)
            if (idx, val) == (CN_IDX_PROC, CN_VAL_PROC):
                if name is not None:
                    events.append(_decode_event(name, ts, data, payload, offset + length, ack, cseq, cpu))
                else:  # uid, sid, comm, coredump, ... events: kept only for their sequence number
                    events.append(ProcEvent(what="other", timestamp_ns=ts, seq=cseq, cpu=cpu))
        offset += (length + 3) & ~3
    return events


def _decode_event(name: str, ts: int, data: bytes, payload: int, end: int, ack: int, seq: int,
                  cpu: int) -> ProcEvent:
    def need(size: int) -> None:
        if payload + size > end:
            raise ValueError(f"{name} event truncated")

    if name == "none":
        need(4)
        (err,) = struct.unpack_from("=I", data, payload)
        return ProcEvent(what=name, timestamp_ns=ts, exit_code=err, ack=ack)
    if name == "fork":
        need(_FOUR.size)
        ppid, ptgid, cpid, ctgid = _FOUR.unpack_from(data, payload)
        return ProcEvent(what=name, timestamp_ns=ts, pid=cpid, tgid=ctgid, parent_pid=ppid, parent_tgid=ptgid,
                         seq=seq, cpu=cpu)
    if name == "exec":
        need(8)
        pid, tgid = struct.unpack_from("=ii", data, payload)
        return ProcEvent(what=name, timestamp_ns=ts, pid=pid, tgid=tgid, seq=seq, cpu=cpu)
    need(_EXIT.size)
    pid, tgid, code, _sig = _EXIT.unpack_from(data, payload)
    parent_pid = parent_tgid = 0
    if payload + _EXIT.size + 8 <= end:  # Linux 4.18+: the parent's pid and tgid follow
        parent_pid, parent_tgid = struct.unpack_from("=ii", data, payload + _EXIT.size)
    return ProcEvent(what=name, timestamp_ns=ts, pid=pid, tgid=tgid, exit_code=code,
                     parent_pid=parent_pid, parent_tgid=parent_tgid, seq=seq, cpu=cpu)


class SequenceGaps:
    """Counts proc connector events lost, from gaps in each CPU's event sequence numbers.

    The kernel numbers the events it sends on each CPU (`cn_msg.seq`, per-CPU, 32 bits); when
    the socket's buffer overflows, recv fails once with ENOBUFS (one overrun, any number of
    events) and the numbers skip. The first event seen on a CPU sets its baseline.
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self.lost = 0

    def see(self, cpu: int, seq: int) -> int:
        """Record one event; returns how many events of that CPU were lost just before it."""
        last = self._last.get(cpu)
        self._last[cpu] = seq
        if last is None:
            return 0
        gap = (seq - last - 1) & 0xFFFFFFFF
        if gap >= 1 << 31:  # older than the last one seen (or a repeat): nothing lost
            self._last[cpu] = last
            return 0
        self.lost += gap
        return gap


def listen_message(op: int = PROC_CN_MCAST_LISTEN, ack: int = 0) -> bytes:
    """The netlink datagram that subscribes to (or leaves) the proc connector."""
    payload = struct.pack("=I", op)
    cn = _CNMSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    return _NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


class ProcConnector:
    """A subscribed NETLINK_CONNECTOR socket for proc events (root or CAP_NET_ADMIN)."""

    def __init__(self, ack_timeout: float = 2.0) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 * 1024 * 1024)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            self.sock.bind((0, CN_IDX_PROC))
            self.sock.send(listen_message(PROC_CN_MCAST_LISTEN, ack=0x41544C))
            self.pending: list[ProcEvent] = []
            self._await_ack(ack_timeout)
        except BaseException:
            self.sock.close()
            raise

    def _await_ack(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise PermissionError(errno.EPERM, "no acknowledgement from the proc connector")
            for event in parse_proc_events(self.sock.recv(65536)):
                if event.what == "none" and event.ack == 0x41544C + 1:
                    if event.exit_code:
                        raise OSError(event.exit_code, os.strerror(event.exit_code))
                    return
                if event.what != "none":
                    self.pending.append(event)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[ProcEvent]:
        """The events of one datagram, without blocking.

        Raises BlockingIOError when none is waiting and OSError(ENOBUFS) when the kernel
        dropped events because the reader fell behind.
        """
        events, self.pending = self.pending, []
        if events:
            return events
        return parse_proc_events(self.sock.recv(65536, socket.MSG_DONTWAIT))

    def close(self) -> None:
        try:
            self.sock.send(listen_message(PROC_CN_MCAST_IGNORE))
        except OSError:
            pass
        self.sock.close()
