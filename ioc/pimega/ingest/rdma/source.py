"""RDMA ingest: senders write frames straight into the engine's frame rings.

:class:`RdmaSource` is the engine's frame source over any :class:`~.verbs.Verbs`: one accept
loop, and per connection one completion loop (busy-poll with a bounded back-off), both on
threads the engine owns. A connection carries any set of modules (the sender offers them;
each module's ring has its own credits), as a TCP connection may. For it, the loop registers
those modules' ring ``slots`` (the payloads) and an array of header cells, hands the sender
ring slots it acquired as producer as credits, and for each write with immediate parses and
checks the header cell (geometry, size, CRC), counts into the module's
:class:`~pimega.ingest.counters.ModuleCounters` as TCP does, and commits the slot — the
payload is never copied. A full ring gives no credits: the sender waits (back-pressure) or,
where it cannot, drops frames that the receiver counts as gaps. A bad immediate (a slot out
of range, a duplicate) or a bad header is counted as corrupt and the stream goes on; when the
sender goes, the slots it held go back to the rings and the next connection is accepted.

Acquisition boundaries: the engine resets the rings between acquisitions, which orphans the
slots a producer holds (a frame committed into one vanishes). The ring does not tell, but the
engine zeroes a module's counters right after resetting its ring, so the loop takes a drop of
the counters (against what it saw and added itself) as a reset. A credit is *trusted* — its
frame committed in place — when it was given while armed, after the module counted a frame
in this acquisition, and no reset was seen since. A frame in any other credit is copied into
a slot acquired then and its own slot released: a few frames per acquisition, since no more
than ``untrusted_credits`` such credits are out at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pimega.core.errors import WireError
from pimega.core.wire import FrameHeader, check_payload, parse_header

from ..counters import ModuleCounters
from ..framing import IngestSink
from ..ring import FrameRing
from ..source import Spawn
from . import protocol
from .errors import ProtocolError, RdmaDisconnected, RdmaError
from .protocol import HEADER_CELL, ModuleLayout, Msg, ReceiverBook
from .pyverbs_impl import default_verbs
from .verbs import Completion, Connection, Op, Verbs, back_off

log = logging.getLogger(__name__)

ACCEPT_POLL_S = 0.2  # how often the accept loop looks at stop
HANDSHAKE_S = 5.0  # how long a new connection may take to offer its modules
POLL_BATCH = 64  # completions taken per poll
JOIN_S = 5.0


class _Credit(NamedTuple):
    epoch: int  # the module's reset count when the credit was given
    trusted: bool  # given while armed, after a frame counted in this acquisition


@dataclass(slots=True)
class _Landed:
    slot: int
    header: FrameHeader
    credit: _Credit


class _Module:
    """One module on one connection: its ring, counters, header cells and landed frames."""

    def __init__(self, module: int, ring: FrameRing, counters: ModuleCounters,
                 cells: np.ndarray) -> None:
        self.module = module
        self.ring = ring
        self.counters = counters
        self.cells = cells  # (n_slots, HEADER_CELL) uint8
        self.landed: deque[_Landed] = deque()  # checked frames, in order, not yet committed
        self.epoch = 0
        self._seen = self._activity()

    def _activity(self) -> int:
        c = self.counters
        return c.frames + c.corrupt + c.dropped_idle

    def check_reset(self) -> None:
        """Count a reset of the ring when the counters fell below what was seen and added."""
        now = self._activity()
        if now < self._seen:
            self.epoch += 1
        self._seen = now

    def credit(self, armed: bool) -> _Credit:
        return _Credit(self.epoch, armed and self._seen > 0)

    def commit(self, slot: int, header: FrameHeader) -> None:
        self.counters.frames += 1
        self.counters.bytes += header.frame_size
        self._seen += 1
        self.ring.commit(slot, header)

    def corrupt(self, reason: str) -> None:
        self.counters.note_corrupt(reason)
        self._seen += 1

    def idle(self) -> None:
        self.counters.dropped_idle += 1
        self._seen += 1


class _Session:
    """The completion loop of one connection."""

    def __init__(self, conn: Connection, sink: IngestSink, stop: threading.Event,
                 untrusted_credits: int, max_backoff_s: float) -> None:
        self.conn = conn
        self._sink = sink
        self._stop = stop
        self._untrusted = untrusted_credits
        self._max_backoff_s = max_backoff_s
        self._book: ReceiverBook[_Credit] = ReceiverBook((), 1)
        self._modules: dict[int, _Module] = {}
        self._cap = 0
        self.cpu_s = 0.0
        self.done = threading.Event()

    @property
    def resyncs(self) -> int:
        return self._book.resyncs

    def run(self) -> None:
        clock = time.thread_time()
        try:
            self._handshake()
            idle = 0
            while not self._stop.is_set():
                events = self.conn.poll(POLL_BATCH)
                for mod in self._modules.values():
                    mod.check_reset()  # after the poll: what it returned landed before
                for event in events:
                    self._take(event)
                for mod in self._modules.values():
                    self._deliver(mod)
                granted = self._grant()
                now = time.thread_time()
                self.cpu_s += now - clock
                clock = now
                idle = 0 if events or granted else back_off(idle, self._max_backoff_s)
        except RdmaDisconnected as err:
            log.info("rdma %s: %s", self.conn.peer, err)
        except ProtocolError as err:
            log.warning("rdma %s: closing the connection: %s", self.conn.peer, err)
            self._refuse(str(err))
        finally:
            self._teardown()
            self.cpu_s += time.thread_time() - clock
            self.done.set()

    def _handshake(self) -> None:
        """Wait for the sender's OFFER; register its modules' rings; send the LAYOUT."""
        deadline = time.monotonic() + HANDSHAKE_S
        idle = 0
        while not (events := self.conn.poll(1)):
            if self._stop.is_set() or time.monotonic() > deadline:
                raise RdmaDisconnected(f"no offer of modules within {HANDSHAKE_S} s")
            idle = back_off(idle, self._max_backoff_s)
        (event,) = events
        msg = protocol.parse(event.message) if event.kind is Op.MESSAGE else None
        if msg is None or msg.kind is not Msg.OFFER:
            raise ProtocolError("a connection must begin with an offer of modules")
        modules = msg.values
        rings = self._sink.rings
        if not modules or len(set(modules)) != len(modules) or max(modules) >= len(rings):
            raise ProtocolError(f"offered modules {list(modules)}; this node has modules "
                                f"0 … {len(rings) - 1}, each at most once")
        n_slots = rings[modules[0]].n_slots
        if n_slots < 2 or any(rings[m].n_slots != n_slots for m in modules):
            raise ProtocolError("the rings of the offered modules need equal sizes of at "
                                "least 2 slots")
        self._book = ReceiverBook(modules, n_slots)
        cells = np.zeros((len(modules), n_slots, HEADER_CELL), np.uint8)
        cell_region = self.conn.register(cells)
        layouts = []
        for i, m in enumerate(modules):
            ring = rings[m]
            region = self.conn.register(ring.slots)
            layouts.append(ModuleLayout(m, n_slots, ring.slot_bytes, region.addr, region.rkey,
                                        cell_region.addr + i * n_slots * HEADER_CELL,
                                        cell_region.rkey))
            counters = self._sink.counters[m]
            self._modules[m] = _Module(m, ring, counters, cells[i])
            counters.connections += 1
            counters.connected = True
        self._cap = max(1, min(n_slots - 1, self.conn.max_inflight // len(modules)))
        self.conn.send(protocol.layout(layouts))
        log.info("rdma %s: sending modules %s", self.conn.peer, list(modules))

    def _take(self, event: Completion) -> None:
        if event.kind is Op.MESSAGE:
            self.conn.send(self._book.answer(event.message))
            return
        try:
            module, slot, credit = self._book.land(event.imm)
        except ProtocolError as err:  # counted, and the stream goes on
            blamed = err.module if err.module is not None else self._book.modules[0]
            self._modules[blamed].corrupt(str(err))
            log.warning("rdma %s: %s", self.conn.peer, err)
            return
        mod = self._modules[module]
        try:
            header = self._check(mod, slot)
        except WireError as err:
            mod.ring.release(slot)
            mod.corrupt(f"frame in slot {slot}: {err}")
            log.warning("rdma %s: module %d: dropped a frame in slot %d: %s",
                        self.conn.peer, module, slot, err)
            return
        mod.counters.note_frame_number(header.frame_number)
        mod.landed.append(_Landed(slot, header, credit))

    def _check(self, mod: _Module, slot: int) -> FrameHeader:
        """The header in the slot's cell, checked against the module, geometry and payload."""
        header = parse_header(mod.cells[slot])
        if header.module_id != mod.module:
            raise WireError(f"header of module {header.module_id} in a slot of module "
                            f"{mod.module}")
        if header.header_size > HEADER_CELL:
            raise WireError(f"header of {header.header_size} bytes exceeds the {HEADER_CELL}-"
                            "byte header cell")
        self._sink.expected.check(header)
        if header.payload_size > mod.ring.slot_bytes:
            raise WireError(f"payload of {header.payload_size} bytes exceeds the "
                            f"{mod.ring.slot_bytes} bytes of a ring slot")
        check_payload(header, mod.ring.view(slot)[: header.payload_size])
        return header

    def _deliver(self, mod: _Module) -> None:
        """Commit landed frames in order: in place, or copied where the credit is not trusted
        (waiting while the ring has no free slot); not armed, drop them as idle."""
        armed = self._sink.armed.is_set()
        ring = mod.ring
        while mod.landed:
            item = mod.landed[0]
            if not armed:
                ring.release(item.slot)
                mod.idle()
            elif item.credit.trusted and item.credit.epoch == mod.epoch:
                mod.commit(item.slot, item.header)
            else:
                fresh = ring.acquire(0)
                if fresh is None:
                    return
                size = item.header.payload_size
                ring.slots[fresh, :size] = ring.slots[item.slot, :size]
                ring.release(item.slot)
                mod.commit(fresh, item.header)
            mod.landed.popleft()

    def _grant(self) -> bool:
        """Credit free ring slots, up to the cap (a few while no credit can be trusted)."""
        armed = self._sink.armed.is_set()
        granted = False
        for m, mod in self._modules.items():
            credit = mod.credit(armed)
            limit = self._cap if credit.trusted else min(self._cap, self._untrusted)
            held = self._book.outstanding(m) + len(mod.landed)
            grants = []
            while held < limit and (slot := mod.ring.acquire(0)) is not None:
                grants.append((slot, credit))
                held += 1
            for message in self._book.credit(m, grants):
                self.conn.send(message)
            granted = granted or bool(grants)
        return granted

    def _refuse(self, reason: str) -> None:
        with contextlib.suppress(RdmaError):  # it may be gone already
            self.conn.send(protocol.refuse(reason))

    def _teardown(self) -> None:
        """Return every slot the sender held or that waits here; the modules are disconnected."""
        for m, credited in self._book.teardown().items():
            for slot in credited:
                self._modules[m].ring.release(slot)
        for mod in self._modules.values():
            self._deliver(mod)
            for item in mod.landed:
                mod.ring.release(item.slot)
                mod.corrupt(f"frame {item.header.frame_number} lost: the sender left while "
                            "the ring had no free slot for it")
            mod.landed.clear()
            mod.counters.connected = False
        self.conn.close()


class RdmaSource:
    """Frames from RDMA senders connecting to ``host:port`` (see :attr:`address`).

    ``verbs`` is the device (default: pyverbs, which raises
    :class:`~.errors.RdmaUnavailable` with the reason where pyverbs or a device is missing)
    or the in-process :class:`~.loopback.LoopbackFabric`.
    """

    def __init__(self, host: str, port: int = 0, *, verbs: Verbs | None = None,
                 untrusted_credits: int = 2, max_backoff_s: float = 5e-4) -> None:
        if untrusted_credits < 1:
            raise ValueError("at least one credit must be given while none can be trusted")
        self._verbs = verbs if verbs is not None else default_verbs()
        self._listener = self._verbs.listen(host, port)
        self._untrusted = untrusted_credits
        self._max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sessions: list[_Session] = []
        self._opened = False
        self._accepting = False
        self._done_cpu_s = 0.0
        self._done_resyncs = 0

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    @property
    def description(self) -> str:
        return "rdma {}:{} ({})".format(*self.address, self._verbs.name)

    @property
    def running(self) -> bool:
        return self._accepting

    @property
    def connections(self) -> int:
        return len(self._sessions)

    @property
    def cpu_s(self) -> float:
        """CPU seconds spent by the completion loops (all connections, past and present)."""
        with self._lock:
            return self._done_cpu_s + sum(s.cpu_s for s in self._sessions)

    @property
    def resyncs(self) -> int:
        """Credit resynchronisations answered: each one a sender that ran out of credits."""
        with self._lock:
            return self._done_resyncs + sum(s.resyncs for s in self._sessions)

    def open(self, sink: IngestSink, spawn: Spawn) -> None:
        self._opened = self._accepting = True
        spawn("rdma-accept", lambda: self._accept_loop(sink, spawn))

    def close(self) -> None:
        self._stop.set()
        if not self._opened:
            self._listener.close()

    def _accept_loop(self, sink: IngestSink, spawn: Spawn) -> None:
        try:
            while not self._stop.is_set():
                conn = self._listener.accept(ACCEPT_POLL_S)
                if conn is not None:
                    session = _Session(conn, sink, self._stop, self._untrusted,
                                       self._max_backoff_s)
                    with self._lock:
                        self._sessions.append(session)
                    spawn(f"rdma-{conn.peer}", lambda s=session: self._serve(s))
        except RdmaError as err:
            log.error("rdma: no more connections: %s", err)
        finally:
            self._accepting = False
            for session in list(self._sessions):
                session.done.wait(JOIN_S)
            self._listener.close()

    def _serve(self, session: _Session) -> None:
        try:
            session.run()
        finally:
            with self._lock:
                self._sessions.remove(session)
                self._done_cpu_s += session.cpu_s
                self._done_resyncs += session.resyncs
