"""The IOC's circuits send a message in pieces (decision 14): the bytes on the wire are the
message's, in order, in pieces of at most PIECE_BYTES; a piece inside one large buffer is a
slice of it (no copy), and the circuit itself writes that way. A large image and control puts
through a real IOC: test_preview_waveform.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pimega.iocs.circuit import PIECE_BYTES, PacedCircuit, pieces


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
