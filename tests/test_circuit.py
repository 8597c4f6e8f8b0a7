"""The IOC's circuits (decision 14): a message goes out in pieces — the bytes on the wire are
the message's, in order, in pieces of at most PIECE_BYTES, a piece inside one large buffer a
slice of it (no copy); a put is answered after the monitor updates it caused. A large image
and control puts through a real IOC: test_preview_waveform.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import epics
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pimega.iocs.circuit import PIECE_BYTES, PacedCircuit, PacedContext, pieces

from .tinyioc import Camera


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
def paced_camera() -> Iterator[str]:
    """The tiny IOC's Camera served by `PacedContext` on a thread of this process."""
    prefix = "ORDER:"
    serving: dict[str, Any] = {}
    started = threading.Event()

    async def serve() -> None:
        async def ready(async_lib: Any) -> None:
            started.set()

        serving["loop"], serving["task"] = asyncio.get_running_loop(), asyncio.current_task()
        await PacedContext(Camera(prefix=prefix).pvdb).run(startup_hook=ready)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10), "the server did not start"
    yield prefix
    serving["loop"].call_soon_threadsafe(serving["task"].cancel)
    thread.join(10)


def test_a_readback_monitor_arrives_before_the_put_completes(paced_camera):
    """pyepics answers ``get`` from its monitor cache, updated in the order messages arrive:
    the readback must be there when the put returns (caproto alone sent it ~10 ms later)."""
    readback = epics.PV(paced_camera + "Exposure_RBV", auto_monitor=True)
    assert readback.wait_for_connection(10)
    for n in range(1, 21):
        assert epics.caput(paced_camera + "Exposure", 0.25 * n, wait=True, timeout=5) == 1
        assert readback.get(use_monitor=True) == 0.25 * n, f"put {n}: the monitor lagged"


def test_a_refused_put_is_answered_after_what_it_posted(paced_camera):
    """A putter that posts something and then refuses: the client sees both, in order."""
    readback = epics.PV(paced_camera + "Exposure_RBV", auto_monitor=True)
    assert readback.wait_for_connection(10)
    assert epics.caput(paced_camera + "Exposure", 2.0, wait=True, timeout=5) == 1
    assert readback.get(use_monitor=True) == 2.0
    epics.caput(paced_camera + "Exposure", -1.0, wait=True, timeout=5)  # refused
    assert epics.caget(paced_camera + "Exposure_RBV", timeout=5) == 2.0
