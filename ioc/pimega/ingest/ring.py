"""FrameRing: preallocated frame slots handed between one producer and one consumer.

Only slot indices move; frame bytes stay where the producer wrote them. Ownership rule —
a slot belongs to exactly one party at a time, and only its owner touches its memory::

    free ──acquire()──▶ producer ──commit()──▶ filled ──next_filled()──▶ consumer
      ▲                    │                                                │
      └────release()───────┴──────────────────release()─────────────────────┘

The producer releases a slot it acquired but could not fill (a corrupt frame). ``reset()``
(between acquisitions) drops committed frames; a slot still held by the producer or the
consumer then returns to the free list when its holder commits or releases it, so nobody
writes a slot that someone is still reading.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from pimega.core.errors import ConfigError
from pimega.core.wire import FrameHeader

_FREE, _PRODUCER, _FILLED, _CONSUMER, _ORPHAN = range(5)
_STATE_NAMES = ("free", "held by the producer", "filled", "held by the consumer", "orphaned")

Allocator = Callable[..., np.ndarray]


class FrameRing:
    """``n_slots`` frames of ``slot_bytes`` each, in one 2-D uint8 array ``slots``.

    ``allocator(shape, dtype=...)`` makes that array: ``np.empty`` by default, pinned host
    memory (``cupyx.empty_pinned``) when the pipeline copies frames to a GPU.
    """

    def __init__(self, n_slots: int, slot_bytes: int, allocator: Allocator = np.empty) -> None:
        if n_slots < 1 or slot_bytes < 1:
            raise ConfigError(f"a ring needs slots and bytes, got {n_slots} x {slot_bytes}")
        self.slots: np.ndarray = allocator((n_slots, slot_bytes), dtype=np.uint8)
        self._views = [memoryview(row) for row in self.slots]
        self._state = bytearray(n_slots)
        self._free: deque[int] = deque()
        self._filled: deque[tuple[int, FrameHeader]] = deque()
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._frame_filled = threading.Condition(self._lock)
        self._closed = False
        self.reset()

    @property
    def n_slots(self) -> int:
        return len(self._state)

    @property
    def slot_bytes(self) -> int:
        return self.slots.shape[1]

    @property
    def used(self) -> int:
        """Slots not free: held by producer or consumer, or filled and waiting."""
        return self.n_slots - len(self._free)

    @property
    def closed(self) -> bool:
        return self._closed

    def view(self, slot: int) -> memoryview:
        """The whole slot as a writable byte view (made once, at construction)."""
        return self._views[slot]

    def acquire(self, timeout: float | None = None) -> int | None:
        """A free slot for the producer; None after ``timeout`` seconds or once closed."""
        with self._lock:
            self._slot_freed.wait_for(self._can_acquire, timeout)
            if self._closed or not self._free:
                return None
            slot = self._free.popleft()
            self._state[slot] = _PRODUCER
            return slot

    def commit(self, slot: int, header: FrameHeader) -> None:
        """Hand a filled slot to the consumer (frames come out in commit order)."""
        with self._lock:
            if self._check(slot, (_PRODUCER, _ORPHAN), "commit") == _ORPHAN:
                self._to_free(slot)
                return
            self._state[slot] = _FILLED
            self._filled.append((slot, header))
            self._frame_filled.notify()

    def next_filled(self, timeout: float | None = None) -> tuple[int, FrameHeader] | None:
        """The oldest committed frame for the consumer; None after ``timeout``.

        Once closed, frames committed before still come out, then None at once.
        """
        with self._lock:
            self._frame_filled.wait_for(self._can_take, timeout)
            if not self._filled:
                return None
            item = self._filled.popleft()
            self._state[item[0]] = _CONSUMER
            return item

    def release(self, slot: int) -> None:
        """Return a slot its holder (producer or consumer) is done with."""
        with self._lock:
            self._check(slot, (_PRODUCER, _CONSUMER, _ORPHAN), "release")
            self._to_free(slot)

    def reset(self) -> None:
        """Drop committed frames, free every slot nobody holds, reopen (between acquisitions)."""
        with self._lock:
            self._filled.clear()
            self._free.clear()
            for slot, state in enumerate(self._state):
                if state in (_PRODUCER, _CONSUMER, _ORPHAN):
                    self._state[slot] = _ORPHAN
                else:
                    self._state[slot] = _FREE
                    self._free.append(slot)
            self._closed = False
            self._slot_freed.notify_all()

    def close(self) -> None:
        """Wake every blocked caller: acquire() returns None, the consumer drains what is left."""
        with self._lock:
            self._closed = True
            self._slot_freed.notify_all()
            self._frame_filled.notify_all()

    def _can_acquire(self) -> bool:
        return bool(self._free) or self._closed

    def _can_take(self) -> bool:
        return bool(self._filled) or self._closed

    def _to_free(self, slot: int) -> None:
        self._state[slot] = _FREE
        self._free.append(slot)
        self._slot_freed.notify()

    def _check(self, slot: int, allowed: tuple[int, ...], action: str) -> int:
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"cannot {action} slot {slot}: the ring has {self.n_slots} slots")
        state = self._state[slot]
        if state not in allowed:
            raise ValueError(f"cannot {action} slot {slot}: it is {_STATE_NAMES[state]}")
        return state
