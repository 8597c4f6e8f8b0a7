"""The IOC's circuits (decision 14): a message goes out in pieces — the bytes on the wire are
the message's, in order, in pieces of at most PIECE_BYTES, a piece inside one large buffer a
slice of it (no copy); a put is answered after the monitor updates it caused, without
Nagle's wait. A large image and control puts through a real IOC: test_preview_waveform.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import caproto as ca
import epics
import numpy as np
import pytest
from caproto.asyncio.utils import _TransportWrapper
from hypothesis import given
from hypothesis import strategies as st

from pimega.iocs.circuit import PIECE_BYTES, PacedCircuit, pieces

from .caprocess import tiny_ioc
from .tinyioc import PACED_PREFIX as PREFIX


@given(st.lists(st.binary(max_size=300), max_size=12), st.integers(1, 257))
def test_the_pieces_are_the_message_in_order(buffers, size):
    out = list(pieces(buffers, size))
    assert b"".join(bytes(p) for p in out) == b"".join(buffers)
    assert all(len(p) == size for p in out[:-1])
    assert all(0 < len(p) <= size for p in out)


def test_a_large_image_is_sliced_without_a_copy():
    header = b"\x00" * 16  # a CA header
    image = np.arange(3 * PIECE_BYTES // 2, dtype=">u2")  # a big-endian waveform payload
    out = list(pieces([header, image]))
    assert b"".join(bytes(p) for p in out) == header + image.tobytes()
    assert [len(p) for p in out] == [PIECE_BYTES] * 3 + [len(header)]
    inner = out[1]  # lies inside the image: a view of it
    assert isinstance(inner, memoryview) and inner.obj is image


class _RecordingWriter:
    """Where a circuit's transport would take the bytes: records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    async def drain(self) -> None:
        return None


def test_the_circuit_writes_a_large_message_in_pieces():
    circuit = PacedCircuit.__new__(PacedCircuit)  # only its transport matters here
    writer = _RecordingWriter()
    circuit.client = SimpleNamespace(writer=writer, send_lock=asyncio.Lock(),
                                     getpeername=lambda: ("127.0.0.1", 0))
    image = np.arange(PIECE_BYTES, dtype=">u2")
    asyncio.run(circuit._send_buffers(b"header", image))
    assert b"".join(writer.writes) == b"header" + image.tobytes()
    assert len(writer.writes) == 3 and max(map(len, writer.writes)) == PIECE_BYTES


def test_small_messages_stay_one_piece():
    assert list(pieces([b"ab", bytearray(b"cd"), memoryview(b"ef")])) == [b"abcdef"]


# --- a put's answer follows the monitor updates it caused ---------------------------------


@pytest.fixture(scope="module")
def paced_camera() -> Iterator[None]:
    """The tiny IOC's Camera served by `PacedContext` in a process of its own (an in-process
    server left its sockets behind: the next IOC's search requests went to them)."""
    with tiny_ioc("paced", None, dict(os.environ)) as server:
        server.expect("ready")
        yield


def test_a_readback_monitor_arrives_before_the_put_completes(paced_camera):
    """pyepics answers ``get`` from its monitor cache, updated in the order messages arrive:
    the readback must be there when the put returns (caproto alone sent it ~10 ms later)."""
    readback = epics.PV(PREFIX + "Exposure_RBV", auto_monitor=True)
    assert readback.wait_for_connection(10)
    for n in range(1, 21):
        assert epics.caput(PREFIX + "Exposure", 0.25 * n, wait=True, timeout=5) == 1
        assert readback.get(use_monitor=True) == 0.25 * n, f"put {n}: the monitor lagged"


def test_a_refused_put_on_a_monitoring_circuit_is_answered_and_changes_nothing(paced_camera):
    """The refusal (an ErrorResponse) goes through the update queue too: it must arrive (libca
    completes the put with it), not leave the client waiting for its timeout."""
    exposure = epics.PV(PREFIX + "Exposure", auto_monitor=True)  # the circuit has monitors
    assert exposure.wait_for_connection(10)
    assert exposure.put(2.0, wait=True, timeout=5) == 1
    answered = threading.Event()
    exposure.put(-1.0, callback=lambda **_: answered.set())
    assert answered.wait(5), "the refusal never arrived"
    assert epics.caget(PREFIX + "Exposure_RBV", timeout=5) == 2.0
    assert exposure.get(use_monitor=True) == 2.0


@asynccontextmanager
async def accepted_circuit() -> AsyncIterator[tuple[PacedCircuit, asyncio.StreamReader]]:
    """A `PacedCircuit` on a socket accepted from a listener made as caproto makes its
    (proto 0), and the client's end of the connection."""
    accepted: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()
    listener = socket.create_server(("127.0.0.1", 0))
    server = await asyncio.start_server(lambda *pair: accepted.set_result(pair), sock=listener)
    client_reader, client = await asyncio.open_connection(*listener.getsockname())
    reader, writer = await accepted
    try:
        peer = writer.get_extra_info("socket").getpeername()
        yield (PacedCircuit(ca.VirtualCircuit(ca.SERVER, peer, None),
                            _TransportWrapper(reader, writer), SimpleNamespace()), client_reader)
    finally:
        for stream in (writer, client):
            stream.close()
            await stream.wait_closed()
        server.close()
        await server.wait_closed()


def test_every_circuit_sends_without_nagle():
    """asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP, not on those a
    listener like caproto's accepts: a put's answer then waited for the client's delayed ACK
    of a monitor update (40 ms). rsrv sets it; so does PacedCircuit."""
    async def nodelay() -> int:
        async with accepted_circuit() as (circuit, _):
            sock = circuit.client.writer.get_extra_info("socket")
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    assert asyncio.run(nodelay())


def test_an_answer_follows_its_updates_even_when_a_slow_client_loses_them():
    """Driving the circuit as caproto's update task does: an answer waits for the two updates
    queued before it; when caproto empties the queue (a client far behind), the batch in hand
    is the last before the answer, which must not wait for the update dropped."""
    async def wire() -> list[type]:
        async with accepted_circuit() as (circuit, client_reader):
            hello = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 0), 0).send(
                ca.VersionRequest(priority=0, version=13), ca.HostNameRequest("test"),
                ca.ClientNameRequest("test"))
            for command in circuit.circuit.recv(b"".join(hello))[0]:
                circuit.circuit.process_command(command)  # the server may send now
            circuit._sub_task = asyncio.current_task()  # this test is the update task
            for _ in range(2):
                circuit.subscription_queue.put_nowait(lambda: ca.VersionResponse(13))
            await circuit.answer_after_queued(ca.EchoResponse())  # stands in for an answer
            first = await circuit.get_from_sub_queue(timeout=0.01)
            circuit.subscription_queue.clear()  # caproto: "dropping all queued responses"
            await circuit.send(first())
            return await read_commands(client_reader, 2)

    assert asyncio.run(wire()) == [ca.VersionResponse, ca.EchoResponse]


async def read_commands(reader: asyncio.StreamReader, count: int) -> list[type]:
    """The types of the next ``count`` messages a client reads (or fewer after 5 s)."""
    circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 0), 0)
    commands: list[type] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while len(commands) < count:
                received, _ = circuit.recv(await reader.read(4096))
                commands += [type(c) for c in received]
    return commands
