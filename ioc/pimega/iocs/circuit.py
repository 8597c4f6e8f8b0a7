"""A Channel Access circuit that sends a large message in pieces, yielding between them, and
answers a put after the monitor updates the put caused.

caproto's asyncio circuit joins a message's buffers into one bytes object and writes it in
one go: a 1536² preview (4.7 MB) costs the event loop a 4.7 MB copy and a loopback send of
several milliseconds per viewer, and a control put arriving meanwhile on another circuit waits
for all of them. Here a message is written in pieces of `PIECE_BYTES` (small buffers joined up
to that size, large ones sliced without a copy), and the loop runs other tasks between two
pieces, so a put waits for at most one piece per busy circuit. The circuit's send lock is held
for the whole message: pieces of two messages never interleave on the wire.

caproto sends monitor updates from a task of their own, through two queues (the server's,
then the circuit's), while a put's answer goes out at once: a client that reads its monitor
cache when the put completes (pyepics' ``caget``, ophyd's signals) could see the readback
from before the put. Here a put's answer, on a circuit with subscriptions, joins the server's
update queue behind the updates posted before it and goes out after them (decision 15).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import caproto as ca
from caproto.asyncio.server import Context, VirtualCircuit
from caproto.server.common import DisconnectedCircuit

#: Bytes written at a time: a loopback send of this much takes ~0.1 ms.
PIECE_BYTES = 256 * 1024
#: Longest a batch of monitor updates waits for more (caproto: 10 ms, then up to 1 s while
#: updates keep coming, which a steady 100 Hz counter does).
GATHER_S = 0.001
#: What answers a put: sent after the updates the put caused.
ANSWERS = (ca.WriteNotifyResponse, ca.ErrorResponse)


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


class UpdateQueue(asyncio.Queue):
    """A circuit's queue of monitor updates, bounded as caproto means it to be: when a client
    has fallen so far behind that it is full, ``put`` raises QueueFull and caproto drops that
    circuit's queued updates (``clear``). caproto's asyncio circuit has a plain queue, whose
    ``put`` waits for room instead: one stalled client then held the server's update task, so
    every client's monitors stopped and the server's own queue grew without bound."""

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def clear(self) -> None:
        while not self.empty():
            self.get_nowait()


@dataclass(frozen=True, eq=False)
class _Answer:
    """A put's answer, in the server's update queue behind the updates posted before it."""

    circuit: PacedCircuit
    command: ca.Message


class PacedCircuit(VirtualCircuit):
    """caproto's asyncio circuit, sending each message in `pieces`, a put's answer after the
    updates posted before it.

    The circuit's update task takes updates from its queue (counted in ``_taken``) and sends
    them in batches; when it sends one, or waits with none in hand, every update it took is
    on the wire or dropped (``_done``). An answer waits for the updates queued before it:
    those taken or still in the queue when the server's task hands it over.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # as rsrv does; asyncio sets it only on sockets made with proto=IPPROTO_TCP, which
        # caproto's listener is not: Nagle then held a put's answer behind an unacknowledged
        # monitor update until the client's delayed ACK (40 ms)
        self.client.writer.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.subscription_queue = UpdateQueue(ca.MAX_TOTAL_SUBSCRIPTION_BACKLOG)
        self._taken = self._done = 0
        self._waiting: deque[tuple[int, ca.Message]] = deque()  # (updates before it, answer)

    async def send(self, *commands: Any) -> None:
        if (commands and all(isinstance(c, ANSWERS) for c in commands)
                and self.events_on.is_set() and any(self.subscriptions.values())):
            for answer in commands:  # else no update can be before it
                await self.context.subscription_queue.put(_Answer(self, answer))
            return
        await super().send(*commands)
        if asyncio.current_task() is self._sub_task:  # a batch of updates is on the wire
            await self._updates_done()

    async def answer_after_queued(self, answer: ca.Message) -> None:
        """Send ``answer`` once the updates queued here so far are sent (the server's task)."""
        self._waiting.append((self._taken + self.subscription_queue.qsize(), answer))
        if self._taken == self._done and self.subscription_queue.empty():  # none before it
            self.tasks.create(self._send_answers(self._done))  # not on the server's task

    async def get_from_sub_queue(self, timeout: float | None = None) -> Any:
        """The update task's next update; None: send the batch in hand. ``timeout`` None: it
        holds none unsent. A batch waits at most `GATHER_S` for more, and not at all once it
        holds every update an answer waits for."""
        if timeout is None:
            await self._updates_done()
        elif self._waiting and self._taken >= self._waiting[0][0]:
            return None
        else:
            timeout = min(timeout, GATHER_S)
        update = await super().get_from_sub_queue(timeout)
        self._taken += update is not None
        return update

    async def _updates_done(self) -> None:
        """Every update taken is sent or dropped: send the answers that waited for them (all
        of them when the queue is empty: caproto clears it when a client falls far behind)."""
        self._done = self._taken
        empty = self.subscription_queue.empty()
        await self._send_answers(self._waiting[-1][0] if empty and self._waiting else self._done)

    async def _send_answers(self, due: int) -> None:
        """Send the answers that wait for at most ``due`` updates."""
        while self._waiting and self._waiting[0][0] <= due:
            try:
                await VirtualCircuit.send(self, self._waiting.popleft()[1])
            except DisconnectedCircuit:  # the circuit's own tasks end it
                self._waiting.clear()

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


class PacedContext(Context):
    """caproto's asyncio server with `PacedCircuit` circuits."""

    CircuitClass = PacedCircuit

    async def subscription_queue_loop(self) -> NoReturn:
        """caproto's: hand each update to its circuits, and each answer to its circuit."""
        while True:
            item = await self.subscription_queue.get()
            if isinstance(item, _Answer):
                await item.circuit.answer_after_queued(item.command)
            else:
                await self._subscription_queue_iteration(*item)
