"""ImagePool: preallocated output images shared by the pipeline and its consumers.

Only indices move. A slot is held by reference count: the pipeline takes it with
:meth:`acquire` (count 1), :meth:`retain` adds a holder per consumer it is handed to, and
every holder calls :meth:`release`; the slot is free again when the count reaches 0.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import numpy as np


class ImagePool:
    def __init__(self, n: int, shape: tuple[int, int], dtype: np.dtype,
                 allocate: Callable[..., np.ndarray] = np.empty) -> None:
        self.images = allocate((n, *shape), dtype)
        self._refs = [0] * n
        self._free = deque(range(n))
        self._lock = threading.Condition()

    @property
    def size(self) -> int:
        return len(self._refs)

    def fits(self, shape: tuple[int, int], dtype: np.dtype) -> bool:
        return self.images.shape[1:] == shape and self.images.dtype == dtype

    def acquire(self, timeout: float) -> int | None:
        """A free slot (held once), or None after ``timeout`` seconds."""
        with self._lock:
            if not self._lock.wait_for(lambda: bool(self._free), timeout):
                return None
            index = self._free.popleft()
            self._refs[index] = 1
            return index

    def retain(self, index: int) -> None:
        with self._lock:
            if self._refs[index] < 1:
                raise ValueError(f"image slot {index} is free: nothing to retain")
            self._refs[index] += 1

    def release(self, index: int) -> None:
        with self._lock:
            if self._refs[index] < 1:
                raise ValueError(f"image slot {index} is free already")
            self._refs[index] -= 1
            if self._refs[index] == 0:
                self._free.append(index)
                self._lock.notify()

    @property
    def used(self) -> int:
        return self.size - len(self._free)
