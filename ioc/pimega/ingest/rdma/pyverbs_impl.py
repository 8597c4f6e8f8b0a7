"""Verbs on a real RDMA device (RoCE, InfiniBand, Soft-RoCE) through rdma-core's pyverbs.

pyverbs is imported when a :class:`PyverbsVerbs` is made, never at import time, so the rest of
the package runs where it is missing; :func:`unavailable_reason` says why RDMA cannot run.

Set-up follows rdma-core's own pyverbs tests of connections with an external queue pair: the
asynchronous rdma_cm API, an RC queue pair and one completion queue of our own (rdma_cm's post
helpers have no WRITE WITH IMMEDIATE), moved to RTS with the attributes rdma_cm computes.
pyverbs holds the GIL while it waits for an rdma_cm event, so the event channel's descriptor
is polled with a timeout first and an event is read only once one is there.

Limits of this pyverbs: a listener needs the address of the RDMA device's network interface
(rdma_cm finds the device by address) and a port other than 0 (it cannot tell which port it
chose); it serves one connection at a time (an rdma_cm event does not say which connection it
is for, and a listener shares its event channel with its connections, so each end event is
taken for the oldest connection not yet ended); and the rdma_cm id of a finished connection
is kept until the listener closes, since closing it would also close the device context and
protection domain it shares with the listener.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RdmaDisconnected, RdmaError, RdmaUnavailable
from .verbs import MAX_MESSAGE, Completion, MemoryRegion, Op, buffer_address

log = logging.getLogger(__name__)

SEND_DEPTH = 256  # send work requests in flight (writes and messages)
RECV_DEPTH = 512  # receive work requests posted (writes with immediate and messages)
CONTROL_RESERVE = 32  # receives kept for control messages
POLL_BATCH = 64
BACKLOG = 4
RETRY = 7  # transport retries; for RNR 7 means: retry for ever (the receiver's queue refills)
CONNECT_RETRY_S = 0.1
DRAIN_S = 5.0  # how long close() waits for posted writes to complete
SIOCGIFADDR = 0x8915
RDMA_CM_DEVICE = "/dev/infiniband/rdma_cm"
SYSFS = Path("/sys/class/infiniband")
SOFT_ROCE_HINT = ("create a Soft-RoCE device with `rdma link add rxe0 type rxe netdev IF` "
                  "(IF: a network interface), or use --transport tcp")
_channel_lock = threading.Lock()


@dataclass(frozen=True)
class _Api:
    """The pyverbs modules this file uses."""

    cmid: Any
    cq: Any
    qp: Any
    mr: Any
    wr: Any
    enums: Any
    cm: Any
    device: Any
    error: Any


def _api() -> _Api:
    names = ("cmid", "cq", "qp", "mr", "wr", "enums", "cm_enums", "device", "pyverbs_error")
    try:
        return _Api(*(import_module(f"pyverbs.{name}") for name in names))
    except ImportError as err:
        raise RdmaUnavailable(
            f"pyverbs does not load ({err}): install the system's python3-pyverbs, or the "
            "rdma extra built for the system's rdma-core (see README, RDMA)") from None


def unavailable_reason() -> str | None:
    """Why RDMA cannot run here (no pyverbs, no device), or None when it can."""
    try:
        api = _api()
    except RdmaUnavailable as err:
        return str(err)
    try:
        devices = api.device.get_device_list()
    except api.error.PyverbsError as err:  # a kernel without RDMA
        return f"no RDMA device ({err}): {SOFT_ROCE_HINT}"
    return None if devices else f"no RDMA device: {SOFT_ROCE_HINT}"


def default_verbs() -> PyverbsVerbs:
    """The verbs of this machine's RDMA device; :class:`RdmaUnavailable` with the reason."""
    return PyverbsVerbs()


def device_address() -> str:
    """The IPv4 address of the first RDMA device's network interface (for rdma_cm)."""
    for ndev in sorted(SYSFS.glob("*/ports/*/gid_attrs/ndevs/*")):
        try:
            name = ndev.read_text().strip()
        except OSError:  # an unused GID entry
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on it
                continue
        return socket.inet_ntoa(packed[20:24])
    raise RdmaUnavailable(f"no RDMA device with an IPv4 address: {SOFT_ROCE_HINT}")


class _Channel:
    """An rdma_cm event channel whose events can be waited for with a timeout."""

    def __init__(self, api: _Api) -> None:
        self._api = api
        with _channel_lock:
            before = _cm_descriptors()
            self.channel = api.cmid.CMEventChannel()
            new = _cm_descriptors() - before
        if len(new) != 1:
            self.channel.close()
            raise RdmaError("cannot find the descriptor of the rdma_cm event channel")
        self._poller = select.poll()
        self._poller.register(new.pop(), select.POLLIN)

    def next(self, timeout: float) -> Any:
        """The next event (to be acknowledged), or None after ``timeout`` seconds."""
        if not self._poller.poll(max(0, round(timeout * 1000))):
            return None
        return self._api.cmid.CMEvent(self.channel)

    def expect(self, wanted: int, timeout: float, what: str) -> None:
        event = self.next(timeout)
        if event is None:
            raise RdmaError(f"{what}: no answer within {timeout:.1f} s")
        kind, name = event.event_type, event.event_str()
        event.ack_cm_event()
        if kind != wanted:
            raise _Refused(f"{what}: {name}")

    def close(self) -> None:
        self.channel.close()


class _Refused(RdmaError):
    """rdma_cm answered a connection step with another event (nobody listens, rejected)."""


def _cm_descriptors() -> set[int]:
    found = set()
    for entry in os.scandir("/proc/self/fd"):
        try:
            if os.readlink(entry.path) == RDMA_CM_DEVICE:
                found.add(int(entry.name))
        except OSError:
            continue
    return found


class PyverbsConnection:
    """One RC queue pair with its completion queue, control-message buffers and regions."""

    def __init__(self, api: _Api, cmid: Any, peer: str, channel: _Channel | None) -> None:
        e = api.enums
        self._api = api
        self._cmid = cmid
        self._peer = peer
        self._channel = channel  # the active side owns its event channel
        self._closed = False
        self._broken: str | None = None
        self._regions: list[Any] = []
        self._stash: list[Completion] = []  # receive completions met while reaping sends
        self._in_flight = 0
        self._next_message = 0
        self._cq = api.cq.CQ(cmid.context, SEND_DEPTH + RECV_DEPTH)
        cap = api.qp.QPCap(max_send_wr=SEND_DEPTH, max_recv_wr=RECV_DEPTH, max_send_sge=1,
                           max_recv_sge=1)
        init = api.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self._cq, rcq=self._cq, cap=cap,
                                 sq_sig_all=1)
        self._qp = api.qp.QP(cmid.pd, init, api.qp.QPAttr())
        self._recv = api.mr.MR(cmid.pd, RECV_DEPTH * MAX_MESSAGE, e.IBV_ACCESS_LOCAL_WRITE)
        self._send = api.mr.MR(cmid.pd, SEND_DEPTH * MAX_MESSAGE, e.IBV_ACCESS_LOCAL_WRITE)
        for index in range(RECV_DEPTH):
            self._post_recv(index)

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def max_inflight(self) -> int:
        return RECV_DEPTH - CONTROL_RESERVE

    @property
    def qp_num(self) -> int:
        return self._qp.qp_num

    @property
    def closed(self) -> bool:
        return self._closed

    def conn_param(self) -> Any:
        return self._api.cmid.ConnParam(retry=RETRY, rnr_retry=RETRY, qp_num=self.qp_num)

    def to_rts(self) -> None:
        """INIT → RTR → RTS with the attributes rdma_cm computed for this connection."""
        e = self._api.enums
        for state in (e.IBV_QPS_INIT, e.IBV_QPS_RTR, e.IBV_QPS_RTS):
            attr, mask = self._cmid.init_qp_attr(state)
            self._qp.modify(attr, mask)

    def lost(self, reason: str) -> None:
        """The peer is gone (an rdma_cm event said so): poll raises once drained."""
        self._broken = self._broken or reason

    def register(self, buffer: np.ndarray) -> MemoryRegion:
        e = self._api.enums
        addr, length = buffer_address(buffer)
        mr = self._api.mr.MR(self._cmid.pd, length,
                             e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE, address=addr)
        self._regions.append((buffer, mr))
        return MemoryRegion(mr.buf, mr.rkey, length, mr)

    def send(self, message: bytes) -> None:
        if len(message) > MAX_MESSAGE:
            raise ValueError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        index, self._next_message = self._next_message, (self._next_message + 1) % SEND_DEPTH
        self._send.write(message, len(message), index * MAX_MESSAGE)
        self._post(self._api.enums.IBV_WR_SEND, self._send.buf + index * MAX_MESSAGE,
                   len(message), self._send.lkey)

    def write(self, region: MemoryRegion, offset: int, length: int, remote_addr: int,
              rkey: int, imm: int | None = None) -> None:
        e = self._api.enums
        opcode = e.IBV_WR_RDMA_WRITE if imm is None else e.IBV_WR_RDMA_WRITE_WITH_IMM
        self._post(opcode, region.addr + offset, length, region.handle.lkey,
                   (rkey, remote_addr), imm or 0)

    def poll(self, max_events: int = POLL_BATCH) -> list[Completion]:
        self._watch_channel()
        events, self._stash = self._stash, []
        events += self._reap(max_events)
        if not events and self._broken is not None:
            raise RdmaDisconnected(self._broken)
        return events

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + DRAIN_S
        while self._in_flight and self._broken is None and time.monotonic() < deadline:
            self._stash += self._reap(POLL_BATCH)  # a disconnect would flush unsent writes
        with contextlib.suppress(self._api.error.PyverbsError):  # the peer may have gone first
            self._cmid.disconnect()
        for _, mr in self._regions:
            mr.close()
        for resource in (self._recv, self._send, self._qp, self._cq):
            resource.close()
        if self._channel is not None:
            self._cmid.close()
            self._channel.close()

    def _post(self, opcode: int, addr: int, length: int, lkey: int,
              remote: tuple[int, int] | None = None, imm: int = 0) -> None:
        if self._broken is not None or self._closed:
            raise RdmaDisconnected(self._broken or "connection closed")
        while self._in_flight >= SEND_DEPTH:  # completions come in order: a slot frees soon
            self._stash += self._reap(POLL_BATCH)
            if self._broken is not None:
                raise RdmaDisconnected(self._broken)
        wr_api = self._api.wr
        wr = wr_api.SendWR(opcode=opcode, num_sge=1, sg=[wr_api.SGE(addr, length, lkey)],
                           imm_data=imm)
        if remote is not None:
            wr.set_wr_rdma(*remote)
        self._qp.post_send(wr)
        self._in_flight += 1

    def _post_recv(self, index: int) -> None:
        wr_api = self._api.wr
        sge = wr_api.SGE(self._recv.buf + index * MAX_MESSAGE, MAX_MESSAGE, self._recv.lkey)
        self._qp.post_recv(wr_api.RecvWR(wr_id=index, num_sge=1, sg=[sge]))

    def _reap(self, max_events: int) -> list[Completion]:
        e = self._api.enums
        _, wcs = self._cq.poll(max_events)
        events = []
        for wc in wcs:
            if wc.status != e.IBV_WC_SUCCESS:
                describe = getattr(self._api.cq, "cqe_status_to_str", str)
                self._broken = self._broken or f"work completion failed: {describe(wc.status)}"
            elif wc.opcode == e.IBV_WC_RECV:
                message = self._recv.read(wc.byte_len, wc.wr_id * MAX_MESSAGE)
                self._post_recv(wc.wr_id)
                events.append(Completion(Op.MESSAGE, message=message))
            elif wc.opcode == e.IBV_WC_RECV_RDMA_WITH_IMM:
                self._post_recv(wc.wr_id)
                events.append(Completion(Op.WRITE, imm=wc.imm_data))
            else:
                self._in_flight -= 1
        return events

    def _watch_channel(self) -> None:
        """The active side learns from its own event channel that the receiver went."""
        if self._channel is None or self._broken is not None:
            return
        event = self._channel.next(0)
        if event is not None:
            name = event.event_str()
            event.ack_cm_event()
            self._broken = f"rdma_cm: {name}"


class PyverbsListener:
    """Listens with rdma_cm on ``host:port``; one connection at a time (see the module doc)."""

    def __init__(self, api: _Api, host: str, port: int) -> None:
        if not port:
            raise RdmaError("an RDMA listener needs a port other than 0")
        if host in ("", "0.0.0.0", "::"):
            raise RdmaError("an RDMA listener needs the address of the RDMA device's interface, "
                            "not a wildcard")
        self._api = api
        self._address = (host, port)
        self._channel = _Channel(api)
        self._ids: list[Any] = []  # the rdma_cm ids of connections, closed with the listener
        self._active: PyverbsConnection | None = None
        self._open: deque[PyverbsConnection] = deque()  # accepted, their end not yet seen
        self._id = api.cmid.CMID(creator=self._channel.channel, port_space=api.cm.RDMA_PS_TCP)
        try:
            self._id.bind_addr(api.cmid.AddrInfo(src=host, src_service=str(port),
                                                 port_space=api.cm.RDMA_PS_TCP,
                                                 flags=api.cm.RAI_PASSIVE))
            self._id.listen(BACKLOG)
        except api.error.PyverbsError as err:
            self.close()
            raise RdmaError(f"cannot listen for RDMA on {host}:{port}: {err}") from err

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def accept(self, timeout: float) -> PyverbsConnection | None:
        event = self._channel.next(timeout)
        if event is None:
            return None
        cm = self._api.cm
        if event.event_type != cm.RDMA_CM_EVENT_CONNECT_REQUEST:
            ends = (cm.RDMA_CM_EVENT_DISCONNECTED, cm.RDMA_CM_EVENT_CONNECT_ERROR,
                    cm.RDMA_CM_EVENT_UNREACHABLE, cm.RDMA_CM_EVENT_REJECTED)
            if event.event_type in ends and self._open:  # each connection ends once, in order
                self._open.popleft().lost(f"rdma_cm: {event.event_str()}")
            event.ack_cm_event()
            return None
        child = self._api.cmid.CMID(creator=event, listen_id=self._id)
        event.ack_cm_event()
        self._ids.append(child)
        if self._active is not None and not self._active.closed:
            log.warning("rdma: refused a second sender while one is connected")
            child.reject()
            return None
        try:
            conn = PyverbsConnection(self._api, child, f"rdma-peer-{len(self._ids)}", None)
            child.accept(conn.conn_param())
            conn.to_rts()
        except self._api.error.PyverbsError as err:
            log.warning("rdma: could not accept a connection: %s", err)
            return None
        self._active = conn
        self._open.append(conn)
        return conn

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
        for child in self._ids:
            child.close()
        self._id.close()
        self._channel.close()


class PyverbsVerbs:
    """This machine's RDMA device; :class:`RdmaUnavailable` with the reason when it has none."""

    name = "pyverbs"

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RdmaUnavailable(reason)
        self._api = _api()

    def listen(self, host: str, port: int) -> PyverbsListener:
        return PyverbsListener(self._api, host, port)

    def connect(self, host: str, port: int, timeout: float) -> PyverbsConnection:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._connect(host, port, max(deadline - time.monotonic(), 0.5))
            except _Refused as err:  # nobody listens there yet
                if time.monotonic() > deadline:
                    raise RdmaError(f"no RDMA receiver at {host}:{port}: {err}") from None
                time.sleep(CONNECT_RETRY_S)

    def _connect(self, host: str, port: int, timeout: float) -> PyverbsConnection:
        api, cm = self._api, self._api.cm
        channel = _Channel(api)
        cmid = conn = None
        try:
            cmid = api.cmid.CMID(creator=channel.channel, port_space=cm.RDMA_PS_TCP)
            ms = round(timeout * 1000)
            cmid.resolve_addr(api.cmid.AddrInfo(dst=host, dst_service=str(port),
                                                port_space=cm.RDMA_PS_TCP), ms)
            channel.expect(cm.RDMA_CM_EVENT_ADDR_RESOLVED, timeout, "resolving the address")
            cmid.resolve_route(ms)
            channel.expect(cm.RDMA_CM_EVENT_ROUTE_RESOLVED, timeout, "resolving the route")
            conn = PyverbsConnection(api, cmid, f"{host}:{port}", channel)
            cmid.connect(conn.conn_param())
            channel.expect(cm.RDMA_CM_EVENT_CONNECT_RESPONSE, timeout, "connecting")
            conn.to_rts()
            cmid.establish()
            return conn
        except BaseException as err:
            if conn is not None:
                conn.close()
            else:
                if cmid is not None:
                    cmid.close()
                channel.close()
            if isinstance(err, api.error.PyverbsError):
                raise RdmaError(f"RDMA connection to {host}:{port} failed: {err}") from err
            raise
