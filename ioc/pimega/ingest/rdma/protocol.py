"""The RDMA frame protocol as plain state: control messages and each end's book of credits.

Frames go one way over one reliable connection (RC: operations arrive in the order posted),
straight into the receiver's frame rings::

    sender                                             receiver
    OFFER(modules)                     ──SEND──▶
                                       ◀──SEND──   LAYOUT(per module: slots, slot bytes,
                                                          ring and header-cell addresses)
                                       ◀──SEND──   CREDIT(module, slots): ring slots it
                                                          holds as producer, batched
    WRITE header     → header cell (m, s)
    WRITE+IMM payload → ring slot (m, s) ───────▶ completion with imm = m << 16 | s:
                                                   parse the cell, check, commit slot s
                                       ◀──SEND──   CREDIT(module, slots): free slots again
    STARVED(module)                    ──SEND──▶   (no credit for a while: one may be lost)
                                       ◀──SEND──   SYNC(module, every slot still credited)

A sender writes only slots it holds a credit for, each credit once. The connection is ordered,
so when the receiver reads STARVED it has seen every write the sender made for that module
before it: SYNC lists exactly the slots the sender may still use. Between STARVED and SYNC the
sender ignores CREDITs for that module (SYNC holds them), so a lost CREDIT is recovered and
no slot is ever held twice. Slot indices wrap around the ring: a slot is credited again each
time the receiver gets it back from the ring.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, TypeVar

from .errors import ProtocolError
from .verbs import MAX_MESSAGE

VERSION = 1
HEADER_CELL = 64  # bytes of a header cell: the largest frame header this transport carries
_HEAD = struct.Struct("<BBHH")  # kind, version, module, count of items
_SLOT = struct.Struct("<H")
_LAYOUT = struct.Struct("<HIIQIQI")  # module, slots, slot bytes, ring addr/key, cells addr/key
MAX_SLOTS = (MAX_MESSAGE - _HEAD.size) // _SLOT.size  # a SYNC names every slot in one message

T = TypeVar("T")


class Msg(IntEnum):
    OFFER = 1  # sender → receiver: the modules it will send
    LAYOUT = 2  # receiver → sender: where each module's slots and header cells are
    CREDIT = 3  # receiver → sender: slots it may write, once each
    STARVED = 4  # sender → receiver: no credit for a while
    SYNC = 5  # receiver → sender: every slot still credited (replaces the sender's set)
    REFUSE = 6  # receiver → sender: why the connection is refused


@dataclass(frozen=True, slots=True)
class ModuleLayout:
    """Where the sender writes one module's frames: payload ``s`` goes to
    ``slot_addr + s * slot_bytes``, its header to ``cell_addr + s * HEADER_CELL``."""

    module: int
    n_slots: int
    slot_bytes: int
    slot_addr: int
    slot_rkey: int
    cell_addr: int
    cell_rkey: int


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed control message; ``values`` holds slots (CREDIT, SYNC) or modules (OFFER)."""

    kind: Msg
    module: int = 0
    values: tuple[int, ...] = ()
    layouts: tuple[ModuleLayout, ...] = ()
    reason: str = ""


def immediate(module: int, slot: int) -> int:
    """The 32-bit immediate that names slot ``slot`` of module ``module``."""
    if not (0 <= module <= 0xFFFF and 0 <= slot <= 0xFFFF):
        raise ValueError(f"module {module} / slot {slot} do not fit an immediate")
    return module << 16 | slot


def offer(modules: Sequence[int]) -> bytes:
    return _pack(Msg.OFFER, 0, _slots(modules), len(modules))


def layout(layouts: Sequence[ModuleLayout]) -> bytes:
    body = b"".join(_LAYOUT.pack(lay.module, lay.n_slots, lay.slot_bytes, lay.slot_addr,
                                 lay.slot_rkey, lay.cell_addr, lay.cell_rkey)
                    for lay in layouts)
    return _pack(Msg.LAYOUT, 0, body, len(layouts))


def refuse(reason: str) -> bytes:
    text = reason.encode()[: MAX_MESSAGE - _HEAD.size]
    return _pack(Msg.REFUSE, 0, text, len(text))


def starved(module: int) -> bytes:
    return _pack(Msg.STARVED, module)


def parse(message: bytes) -> Message:
    """Parse a control message; :class:`ProtocolError` when it is not one of version 1."""
    if len(message) < _HEAD.size:
        raise ProtocolError(f"control message of {len(message)} bytes is shorter than a header")
    kind, version, module, count = _HEAD.unpack_from(message)
    if version != VERSION:
        raise ProtocolError(f"control message of version {version}, this end speaks {VERSION}")
    body = message[_HEAD.size :]
    try:
        kind = Msg(kind)
    except ValueError:
        raise ProtocolError(f"unknown control message kind {kind}") from None
    item = {Msg.LAYOUT: _LAYOUT.size, Msg.REFUSE: 1, Msg.STARVED: 0}.get(kind, _SLOT.size)
    if len(body) != count * item:
        raise ProtocolError(f"{kind.name} message of {len(body)} bytes for {count} items")
    if kind is Msg.LAYOUT:
        return Message(kind, module, layouts=tuple(
            ModuleLayout(*fields) for fields in _LAYOUT.iter_unpack(body)))
    if kind is Msg.REFUSE:
        return Message(kind, module, reason=body.decode(errors="replace"))
    return Message(kind, module, values=tuple(v for (v,) in _SLOT.iter_unpack(body)))


class ReceiverBook(Generic[T]):
    """The receiver's side of one connection: per module, the slots the sender holds a credit
    for, each with the receiver's own tag (what it knew when it gave the credit)."""

    def __init__(self, modules: Iterable[int], n_slots: int) -> None:
        if not 0 < n_slots <= MAX_SLOTS:
            raise ValueError(f"rings of {n_slots} slots; this protocol carries 1 … {MAX_SLOTS}")
        self.n_slots = n_slots
        self._credited: dict[int, dict[int, T]] = {m: {} for m in modules}
        self.resyncs = 0  # SYNCs answered: each one a sender that ran out of credits

    @property
    def modules(self) -> tuple[int, ...]:
        return tuple(self._credited)

    def outstanding(self, module: int) -> int:
        return len(self._credited[module])

    def credit(self, module: int, grants: Iterable[tuple[int, T]]) -> list[bytes]:
        """Record credits for ``(slot, tag)`` pairs; the CREDIT messages that give them."""
        credited = self._credited[module]
        slots = []
        for slot, tag in grants:
            if slot in credited or not 0 <= slot < self.n_slots:
                raise ValueError(f"slot {slot} of module {module} cannot be credited now")
            credited[slot] = tag
            slots.append(slot)
        return [_pack(Msg.CREDIT, module, _slots(slots[i : i + MAX_SLOTS]),
                      len(slots[i : i + MAX_SLOTS]))
                for i in range(0, len(slots), MAX_SLOTS)]

    def land(self, imm: int) -> tuple[int, int, T]:
        """A write with immediate ``imm`` completed: (module, slot, tag) of the credit it used.

        :class:`ProtocolError` for a slot out of range, a module not carried, or a slot the
        sender holds no credit for (a duplicate or stray immediate); the book is unchanged.
        """
        module, slot = imm >> 16, imm & 0xFFFF
        credited = self._credited.get(module)
        if credited is None:
            raise ProtocolError(f"immediate {imm:#010x} names module {module}, which this "
                                "connection does not carry")
        if slot >= self.n_slots:
            raise ProtocolError(f"immediate {imm:#010x} names slot {slot} of module {module}, "
                                f"outside its ring of {self.n_slots}", module)
        if slot not in credited:
            raise ProtocolError(f"write into slot {slot} of module {module} without a credit "
                                "(a duplicate or stray immediate)", module)
        return module, slot, credited.pop(slot)

    def answer(self, message: bytes) -> bytes:
        """The SYNC that answers a STARVED message."""
        msg = parse(message)
        if msg.kind is not Msg.STARVED:
            raise ProtocolError(f"a sender does not send {msg.kind.name}")
        if msg.module not in self._credited:
            raise ProtocolError(f"STARVED for module {msg.module}, which this connection "
                                "does not carry")
        self.resyncs += 1
        slots = sorted(self._credited[msg.module])
        return _pack(Msg.SYNC, msg.module, _slots(slots), len(slots))

    def teardown(self) -> dict[int, dict[int, T]]:
        """Every credit still out, per module; the book is empty afterwards."""
        out = self._credited
        self._credited = {m: {} for m in out}
        return out


class SenderBook:
    """The sender's side of one connection: the credits it holds, oldest first."""

    def __init__(self, layouts: Sequence[ModuleLayout]) -> None:
        for lay in layouts:
            if not 0 < lay.n_slots <= MAX_SLOTS:
                raise ProtocolError(f"module {lay.module} has {lay.n_slots} slots; this "
                                    f"protocol carries 1 … {MAX_SLOTS}", lay.module)
        self.layouts = {lay.module: lay for lay in layouts}
        self._credits: dict[int, deque[int]] = {m: deque() for m in self.layouts}
        self._awaiting_sync: set[int] = set()

    def take(self, module: int) -> int | None:
        """A slot to write a frame of ``module`` into, or None without a credit."""
        credits = self._credits[module]
        return credits.popleft() if credits else None

    def starved(self, module: int) -> bytes | None:
        """The STARVED message to send, unless one is already waiting for its SYNC."""
        if module in self._awaiting_sync:
            return None
        self._awaiting_sync.add(module)
        return starved(module)

    def receive(self, message: bytes) -> None:
        """Take in a CREDIT or a SYNC; a REFUSE or anything else raises ProtocolError."""
        msg = parse(message)
        if msg.kind is Msg.REFUSE:
            raise ProtocolError(f"the receiver refused: {msg.reason}")
        if msg.kind not in (Msg.CREDIT, Msg.SYNC) or msg.module not in self._credits:
            raise ProtocolError(f"unexpected {msg.kind.name} for module {msg.module}")
        if any(slot >= self.layouts[msg.module].n_slots for slot in msg.values):
            raise ProtocolError(f"{msg.kind.name} names a slot outside module {msg.module}'s "
                                "ring", msg.module)
        credits = self._credits[msg.module]
        if msg.kind is Msg.SYNC:
            self._awaiting_sync.discard(msg.module)
            credits.clear()
        elif msg.module in self._awaiting_sync:
            return  # the coming SYNC names these slots
        elif set(credits).intersection(msg.values):
            raise ProtocolError(f"credit for a slot of module {msg.module} already held",
                                msg.module)
        credits.extend(msg.values)


def _slots(values: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(values)}H", *values)


def _pack(kind: Msg, module: int, body: bytes = b"", count: int = 0) -> bytes:
    message = _HEAD.pack(kind, VERSION, module, count) + body
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"{kind.name} message of {len(message)} bytes exceeds {MAX_MESSAGE}")
    return message
