"""A Channel Access circuit that sends a large message in pieces, yielding between them, and
answers a put only after the monitor updates it caused.

caproto's asyncio circuit joins a message's buffers into one bytes object and writes it in
one go: a 1536² preview (4.7 MB) costs the event loop a 4.7 MB copy and a loopback send of
several milliseconds per viewer, and a control put arriving meanwhile on another circuit waits
for all of them. Here a message is written in pieces of `PIECE_BYTES` (small buffers joined up
to that size, large ones sliced without a copy), and the loop runs other tasks between two
pieces, so a put waits for at most one piece per busy circuit. The circuit's send lock is held
for the whole message: pieces of two messages never interleave on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

import caproto as ca
from caproto.asyncio.server import Context, VirtualCircuit

#: Bytes written at a time: a loopback send of this much takes ~0.1 ms.
PIECE_BYTES = 256 * 1024
#: Longest wait for more monitor updates to send with those at hand.
GATHER_S = 0.001
#: Longest a put's answer waits for the monitor updates queued before it.
UPDATES_FIRST_S = 0.1


def pieces(buffers: Iterable[Any], size: int = PIECE_BYTES) -> Iterator[bytes | memoryview]:
    """``buffers``' bytes in order, in pieces of ``size`` (the last one shorter): a slice of
    one buffer where a piece lies inside it, else the joined parts."""
    parts: list[memoryview] = []
    held = 0
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        while len(view):
            part, view = view[:size - held], view[size - held:]
            parts.append(part)
            held += len(part)
            if held == size:
                yield parts[0] if len(parts) == 1 else b"".join(parts)
                parts, held = [], 0
    if parts:
        yield parts[0] if len(parts) == 1 else b"".join(parts)


class PacedCircuit(VirtualCircuit):
    """caproto's asyncio circuit, sending each message in `pieces` and a put's answer after
    the monitor updates queued before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answers_waiting = 0
        self._updates_sent = asyncio.Event()  # the update task holds none and waits for more

    async def get_from_sub_queue(self, timeout: float | None = None) -> Any:
        """caproto's update task takes the next update here; ``timeout`` None: it has sent
        all it took, else it gathers more (for at most `GATHER_S`, not at all while an
        answer waits)."""
        if timeout is None:
            self._updates_sent.set()
        elif self._answers_waiting and self.subscription_queue.empty():
            return None
        try:
            return await super().get_from_sub_queue(
                None if timeout is None else min(timeout, GATHER_S))
        finally:
            self._updates_sent.clear()

    async def _send_buffers(self, *buffers: Any) -> None:
        writer = self.client.writer
        try:
            async with self.client.send_lock:
                for piece in pieces(buffers):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)  # let other circuits' commands in
        except OSError as exc:
            raise ca.CaprotoNetworkError(f"Failed to send to {self.client.getpeername()}") \
                from exc

    async def send(self, *commands: Any) -> None:
        if (any(isinstance(c, (ca.WriteNotifyResponse, ca.ErrorResponse)) for c in commands)
                and any(self.subscriptions.values())):  # else no update could come first
            await self._after_queued_updates()
        await super().send(*commands)

    async def _after_queued_updates(self) -> None:
        """Return once the updates queued so far are on the wire, or after `UPDATES_FIRST_S`.

        An update goes from the server's queue (all circuits) to this circuit's queue, then to
        the wire by the circuit's update task: both queues empty and the task waiting for more
        means sent.
        """
        shared = self.context.subscription_queue
        self._answers_waiting += 1
        try:
            async with asyncio.timeout(UPDATES_FIRST_S):
                while not (shared.empty() and self.subscription_queue.empty()
                           and self._updates_sent.is_set()):
                    if shared.empty() and self.subscription_queue.empty():
                        await self._updates_sent.wait()  # the task is sending what it took
                    else:
                        await asyncio.sleep(0)  # let the queues' tasks move them on
        except TimeoutError:
            pass  # events off, or a stream that never pauses: answer anyway
        finally:
            self._answers_waiting -= 1


class PacedContext(Context):
    """caproto's asyncio server with `PacedCircuit` circuits."""

    CircuitClass = PacedCircuit
