"""The wire parser under fuzzed input: whatever a sender sends, the receiver neither raises nor
loses its footing — a good frame after the garbage is still received, and every frame is
counted once, as received or refused."""

from __future__ import annotations

import io
import threading

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimega.core import bitpack, wire
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.framing import FrameExpectation, FrameReceiver, IngestSink
from pimega.ingest.ring import FrameRing

GEOM = {"chips_x": 2, "chips_y": 2, "chip_size": 8}
DEPTH = 12
MODULES = 2


def good_frame(number: int, module: int = 0) -> bytes:
    pixels = np.random.default_rng(number).integers(0, 1 << DEPTH, (4, 64), dtype=np.uint32)
    payload = bitpack.pack(pixels, DEPTH).tobytes()
    header = wire.make_header(module_id=module, bit_depth=DEPTH, frame_number=number,
                              timestamp_ns=number, payload=payload, with_crc=True, **GEOM)
    return header.pack() + payload


#: Good frames after the mess: more than a lying header_size (a u16) and one payload can eat.
TAIL_FRAMES = 2 + (1 << 16) // len(good_frame(0))


def receive(stream: bytes) -> tuple[list[ModuleCounters], list[list[int]]]:
    """Run the receiver over ``stream``; return the counters and each module's frame numbers."""
    expected = FrameExpectation(bit_depth=DEPTH, **GEOM)
    rings = [FrameRing(64, expected.payload_size) for _ in range(MODULES)]
    counters = [ModuleCounters() for _ in range(MODULES)]
    armed = threading.Event()
    armed.set()
    sink = IngestSink(rings, counters, expected, armed)
    taken: list[list[int]] = [[] for _ in range(MODULES)]

    def drain() -> None:
        for ring, numbers in zip(rings, taken, strict=True):
            while (item := ring.next_filled(timeout=0)) is not None:
                numbers.append(item[1].frame_number)
                ring.release(item[0])

    FrameReceiver(io.BytesIO(stream).readinto, sink, threading.Event(), "fuzz",
                  on_frame=drain).run()
    drain()
    return counters, taken


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.integers(1, 4), flips=mutations,
       cut=st.one_of(st.none(), st.integers(0, 1000)),
       junk=st.binary(max_size=300), module=st.integers(0, 2**16 - 1))
def test_fuzzed_frames_never_break_the_receiver(frames, flips, cut, junk, module):
    data = bytearray(b"".join(good_frame(n, n % MODULES) for n in range(frames)))
    for at, value in flips:
        data[at % len(data)] = value
    data[8:10] = module.to_bytes(2, "little") if module % 3 == 0 else data[8:10]
    if cut is not None:
        del data[cut:]
    # a damaged frame may swallow what follows it as its header (header_size is a u16: up
    # to 64 KiB) or its payload (one payload's worth); after that the stream is in step again
    tail = b"".join(good_frame(n) for n in range(1000, 1000 + TAIL_FRAMES))
    counters, taken = receive(bytes(data) + junk + b"PMGA" + tail)
    assert 999 + TAIL_FRAMES in taken[0], (counters[0], taken)
    for c, numbers in zip(counters, taken, strict=True):
        assert c.frames == len(numbers)
        assert c.corrupt <= frames + 2 + len(junk)  # refusals are counted once each


def test_a_lying_payload_size_is_refused_and_the_stream_goes_on():
    frame = bytearray(good_frame(0))
    wire.FIXED.pack_into(frame, 0, wire.MAGIC, 1, 40, 0, DEPTH, 1, 0, 0, 2, 2, 8, 10**9, 0)
    counters, taken = receive(bytes(frame) + good_frame(1))
    assert taken[0] == [1]
    assert counters[0].corrupt == 1
