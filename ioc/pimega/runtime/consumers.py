"""Consumers: what takes processed frames off the pipeline thread, each on its own thread.

A :class:`Consumer` (the file writer, live reconstruction, a forwarder, a test's counter)
is registered with the engine once. For every processed frame the pipeline asks
:meth:`Consumer.wants`; a wanted frame's pooled image is handed to the consumer's thread
through a bounded queue and given back when :meth:`Consumer.consume` returns. A lossless
consumer (the writer) makes the pipeline wait for room — losing nothing; any other consumer
that falls behind skips the frame, counted in its ``dropped``, and never stalls the rest.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pimega.core.frame import Frame, FrameInfo

from .meters import StageTimer
from .pool import ImagePool

log = logging.getLogger(__name__)

POLL_S = 0.1


class Consumer(Protocol):
    name: str
    lossless: bool

    def wants(self, info: FrameInfo) -> bool:
        """On the pipeline thread, once per frame: take this one? (may count it as routed)"""
        ...

    def consume(self, frame: Frame) -> None:
        """On the consumer's thread; ``frame.image`` is valid until this returns."""
        ...

    def skipped(self, info: FrameInfo) -> None:
        """On the pipeline thread: a wanted frame it had no room for (a lossy consumer
        behind, or any consumer closing), so it can say which frames it lacks."""
        ...


@dataclass(frozen=True, slots=True)
class _Delivery:
    pool: ImagePool
    index: int
    info: FrameInfo


@dataclass(slots=True)
class _Call:
    """Work run on the consumer's thread in order with its frames (open, close, flush)."""

    action: Callable[[], Any]
    done: threading.Event


class ConsumerRunner:
    """A consumer's thread and bounded queue; the engine spawns :meth:`run`."""

    def __init__(self, consumer: Consumer, queue_size: int) -> None:
        self.consumer = consumer
        self.timer = StageTimer()
        self._queue: queue.Queue[_Delivery | _Call | None] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self.alive = False

    @property
    def name(self) -> str:
        return self.consumer.name

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def queue_size(self) -> int:
        return self._queue.maxsize

    def offer(self, pool: ImagePool, index: int, info: FrameInfo) -> None:
        """Hand slot ``index`` over if the consumer wants it (pipeline thread)."""
        if not self.consumer.wants(info):
            return
        pool.retain(index)
        delivery = _Delivery(pool, index, info)
        if not self.consumer.lossless:
            try:
                self._queue.put_nowait(delivery)
            except queue.Full:
                self._skip(pool, index, info)
            return
        while not self._closing.is_set():
            try:
                self._queue.put(delivery, timeout=POLL_S)
                return
            except queue.Full:
                continue
        self._skip(pool, index, info)

    def _skip(self, pool: ImagePool, index: int, info: FrameInfo) -> None:
        pool.release(index)
        self.timer.dropped += 1
        self.consumer.skipped(info)

    def call(self, action: Callable[[], Any]) -> threading.Event:
        """Run ``action`` on the consumer's thread after what is queued; set when done."""
        done = threading.Event()
        self._queue.put(_Call(action, done))
        return done

    def close(self) -> None:
        self._closing.set()
        self._queue.put(None)

    def run(self) -> None:
        self.alive = True
        try:
            while (item := self._queue.get()) is not None:
                if isinstance(item, _Call):
                    self._run_call(item)
                else:
                    self._deliver(item)
        finally:
            self.alive = False

    def _run_call(self, call: _Call) -> None:
        try:
            call.action()
        except Exception:  # a consumer's failure must not end its thread
            log.exception("%s: %s failed", self.name, call.action)
        finally:
            call.done.set()

    def _deliver(self, item: _Delivery) -> None:
        t0 = time.perf_counter()
        try:
            self.consumer.consume(Frame(item.info, item.pool.images[item.index]))
            self.timer.add(time.perf_counter() - t0)
        except Exception:
            log.exception("%s failed on frame %d", self.name, item.info.frame_number)
            self.timer.dropped += 1
        finally:
            item.pool.release(item.index)
