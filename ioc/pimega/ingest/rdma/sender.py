"""The sending end of the RDMA frame protocol: wire-format v1 frames into a receiver's rings.

:class:`RdmaLink` is what a detector (or ``pimega-sim --transport rdma``) holds: one
connection over any :class:`~.verbs.Verbs` carrying the modules it offered. Each frame is an
RDMA WRITE of its header into the slot's header cell, then an RDMA WRITE WITH IMMEDIATE of the
payload into the slot (the connection is ordered, so the header is in place first). Payloads
the caller reuses (a counter cycle) are registered once with :meth:`RdmaLink.pin` and written
from where they are; others are copied into a registered staging buffer of the slot first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from . import protocol
from .errors import ProtocolError
from .protocol import HEADER_CELL, Msg, SenderBook
from .verbs import Connection, MemoryRegion, Op, Verbs, back_off

HANDSHAKE_S = 10.0


class RdmaLink:
    """Frames of ``modules`` over ``conn`` (made by :meth:`connect`).

    Without a credit :meth:`send_frame` waits up to ``wait_s`` (None: as long as it takes, as
    TCP back-pressure would); a module without credits for ``resync_s`` asks the receiver for
    its credit set again (one may have been lost).
    """

    def __init__(self, conn: Connection, modules: Sequence[int], *,
                 timeout: float = HANDSHAKE_S, resync_s: float = 0.05,
                 max_backoff_s: float = 5e-4) -> None:
        self._conn = conn
        self._resync_s = resync_s
        self._max_backoff_s = max_backoff_s
        conn.send(protocol.offer(modules))
        layouts = self._await_layout(timeout)
        if sorted(lay.module for lay in layouts) != sorted(modules):
            raise ProtocolError(f"offered modules {list(modules)}, the receiver laid out "
                                f"{[lay.module for lay in layouts]}")
        self._book = SenderBook(layouts)
        self._index = {m: i for i, m in enumerate(modules)}
        self._max_slots = max(lay.n_slots for lay in layouts)
        self._cells = np.zeros((len(modules), self._max_slots, HEADER_CELL), np.uint8)
        self._cell_region = conn.register(self._cells)
        self._pinned: dict[int, tuple[np.ndarray, MemoryRegion]] = {}
        self._staging: dict[tuple[int, int], tuple[np.ndarray, MemoryRegion]] = {}
        self._starved_since: dict[int, float] = {}
        self.resyncs = 0  # STARVED messages sent

    @classmethod
    def connect(cls, verbs: Verbs, host: str, port: int, modules: Sequence[int],
                timeout: float = HANDSHAKE_S, **options: float) -> RdmaLink:
        """Connect to the receiver at ``host:port`` (retrying until ``timeout``) and offer
        ``modules``."""
        conn = verbs.connect(host, port, timeout)
        try:
            return cls(conn, modules, timeout=timeout, **options)
        except BaseException:
            conn.close()
            raise

    def pin(self, payload: np.ndarray) -> None:
        """Register ``payload`` so that frames sent from it are written in place (keep it
        unchanged while frames from it may be in flight)."""
        if id(payload) not in self._pinned:
            self._pinned[id(payload)] = (payload, self._conn.register(payload))

    def send_frame(self, module: int, header: bytes, payload: np.ndarray,
                   wait_s: float | None = None) -> bool:
        """Write one frame of ``module``; False when no credit came within ``wait_s``."""
        lay = self._book.layouts.get(module)
        if lay is None:
            raise ValueError(f"module {module} was not offered on this link")
        if len(header) > HEADER_CELL or payload.nbytes > lay.slot_bytes:
            raise ValueError(f"a frame of {len(header)} + {payload.nbytes} bytes does not fit "
                             f"a {HEADER_CELL}-byte header cell and a {lay.slot_bytes}-byte slot")
        slot = self._credit(module, wait_s)
        if slot is None:
            return False
        i = self._index[module]
        self._cells[i, slot, : len(header)] = np.frombuffer(header, np.uint8)
        self._conn.write(self._cell_region, (i * self._max_slots + slot) * HEADER_CELL,
                         len(header), lay.cell_addr + slot * HEADER_CELL, lay.cell_rkey)
        region = self._payload_region(module, slot, payload)
        self._conn.write(region, 0, payload.nbytes, lay.slot_addr + slot * lay.slot_bytes,
                         lay.slot_rkey, imm=protocol.immediate(module, slot))
        return True

    def close(self) -> None:
        self._conn.close()

    def _await_layout(self, timeout: float) -> tuple[protocol.ModuleLayout, ...]:
        deadline = time.monotonic() + timeout
        idle = 0
        while not (events := self._conn.poll(1)):
            if time.monotonic() > deadline:
                raise ProtocolError(f"the receiver sent no layout within {timeout} s")
            idle = back_off(idle, self._max_backoff_s)
        msg = protocol.parse(events[0].message)
        if msg.kind is Msg.REFUSE:
            raise ProtocolError(f"the receiver refused: {msg.reason}")
        if msg.kind is not Msg.LAYOUT:
            raise ProtocolError(f"expected the layout, got {msg.kind.name}")
        return msg.layouts

    def _credit(self, module: int, wait_s: float | None) -> int | None:
        """A credited slot; polls for credits, asking for a resync while starved."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        idle = 0
        while True:
            self._take_messages()
            slot = self._book.take(module)
            if slot is not None:
                self._starved_since.pop(module, None)
                return slot
            now = time.monotonic()
            since = self._starved_since.setdefault(module, now)
            if now - since >= self._resync_s:
                self._starved_since[module] = now
                message = self._book.starved(module)
                if message is not None:
                    self._conn.send(message)
                    self.resyncs += 1
            if deadline is not None and now >= deadline:
                return None
            idle = back_off(idle, self._max_backoff_s)

    def _take_messages(self) -> None:
        for event in self._conn.poll():
            if event.kind is not Op.MESSAGE:
                raise ProtocolError("a receiver writes nothing into the sender's memory")
            self._book.receive(event.message)

    def _payload_region(self, module: int, slot: int, payload: np.ndarray) -> MemoryRegion:
        pinned = self._pinned.get(id(payload))
        if pinned is not None and pinned[0] is payload:
            return pinned[1]
        staging = self._staging.get((module, slot))
        if staging is None:
            buffer = np.empty(self._book.layouts[module].slot_bytes, np.uint8)
            staging = self._staging[module, slot] = (buffer, self._conn.register(buffer))
        np.copyto(staging[0][: payload.nbytes], np.ascontiguousarray(payload).view(np.uint8)
                  .reshape(-1))
        return staging[1]
