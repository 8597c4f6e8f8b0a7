"""The node's events in the IOC: completions the busy records (Acquire, Capture) await.

The node calls its listeners on its own threads; the IOC hands each event to caproto's
``ThreadsafeQueue`` and :meth:`Completions.run` resolves the matching future in the event
loop — no putter polls the node to learn that something ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pimega.runtime import AcquisitionEnded, CaptureEnded, Event

_KEEP = 16  # ended runs remembered, for late joiners


def _key(event: Event) -> tuple[type, int]:
    if isinstance(event, AcquisitionEnded):
        return AcquisitionEnded, event.acquisition
    return CaptureEnded, event.capture


class Completions:
    """One future per acquisition and per capture, resolved by the node's end events."""

    def __init__(self) -> None:
        self._futures: dict[tuple[type, int], asyncio.Future[Any]] = {}

    def future(self, kind: type, number: int) -> asyncio.Future[Any]:
        key = (kind, number)
        if key not in self._futures:
            self._futures[key] = asyncio.get_running_loop().create_future()
            for old in list(self._futures)[:-_KEEP]:
                if self._futures[old].done():
                    del self._futures[old]
        return self._futures[key]

    def resolve(self, event: Event) -> None:
        future = self.future(*_key(event))
        if not future.done():
            future.set_result(event)

    async def run(self, queue: Any) -> None:
        """Resolve events from caproto's ``ThreadsafeQueue`` forever."""
        while True:
            self.resolve(await queue.async_get())


class Busy:
    """areaDetector's busy record for one action (acquisition or capture).

    :meth:`begin` starts a run and returns its number; while one runs, a start joins it (the
    caller's put-callback completes when that run ends: None is returned); after a stop was
    asked, a start waits for the stopped run to end and then starts a new one.
    """

    def __init__(self, completions: Completions, kind: type) -> None:
        self._completions = completions
        self._kind = kind
        self.number = 0
        self.stopping = False

    @property
    def active(self) -> bool:
        return self.number > 0 and not self._completions.future(self._kind, self.number).done()

    async def begin(self, start: Callable[[], int]) -> int | None:
        while self.active:
            joined = not self.stopping
            await self.wait(self.number)
            if joined:
                return None
        self.number = start()
        self.stopping = False
        return self.number

    def stop(self) -> None:
        self.stopping = self.active

    async def wait(self, number: int) -> Any:
        return await asyncio.shield(self._completions.future(self._kind, number))
