"""Ingest: FrameRing ownership, ModuleCounters, and the TCP receiver against raw-socket senders."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from pimega.core import bitpack, wire
from pimega.core.wire import FrameHeader, ImageKey
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.framing import FrameExpectation, IngestSink
from pimega.ingest.ring import FrameRing
from pimega.ingest.tcp import TcpListener, TcpSource

GEOM = {"chips_x": 2, "chips_y": 2, "chip_size": 16}
WAIT_S = 10.0  # generous bound on waits; no test relies on it to pass


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.005)


def make_frame(
    frame_number: int, *, module: int = 0, depth: int = 24, geom: dict = GEOM,
    crc: bool = False, image_key: ImageKey | None = None,
) -> tuple[FrameHeader, bytes]:
    """A header and a packed payload of random counts, different for every frame."""
    rng = np.random.default_rng(1000 * module + frame_number)
    n_chips = geom["chips_x"] * geom["chips_y"]
    pixels = rng.integers(0, 1 << depth, size=(n_chips, geom["chip_size"] ** 2), dtype=np.uint32)
    payload = bitpack.pack(pixels, depth).tobytes()
    header = wire.make_header(
        module_id=module, bit_depth=depth, frame_number=frame_number, timestamp_ns=7 * frame_number,
        payload=payload, with_crc=crc, image_key=image_key,
        angle_deg=0.5 * frame_number if image_key is not None else 0.0, **geom,
    )
    return header, payload


def wire_bytes(header: FrameHeader, payload: bytes) -> bytes:
    return header.pack() + payload


class Rig:
    """A TCP source with rings and counters, its loops on threads as the engine runs them."""

    def __init__(
        self, *, modules: int = 1, depth: int = 24, geom: dict = GEOM, n_slots: int = 8,
        rcvbuf: int | None = None,
    ) -> None:
        self.expected = FrameExpectation(bit_depth=depth, **geom)
        self.rings = [FrameRing(n_slots, self.expected.payload_size) for _ in range(modules)]
        self.counters = [ModuleCounters() for _ in range(modules)]
        self.armed = threading.Event()
        self.armed.set()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.source = TcpSource("127.0.0.1", 0, rcvbuf=rcvbuf)
        self.source.open(IngestSink(self.rings, self.counters, self.expected, self.armed),
                         self._spawn)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as err:  # surfaced by close()
                self.errors.append(err)

        thread = threading.Thread(target=run, name=name)
        thread.start()
        self.threads.append(thread)

    def connect(self, sndbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.settimeout(WAIT_S)
        sock.connect(self.source.address)
        return sock

    def take(self, n: int, module: int = 0) -> list[tuple[FrameHeader, bytes]]:
        """The next ``n`` frames of ``module`` from its ring, copied out, slots released."""
        ring = self.rings[module]
        frames = []
        for _ in range(n):
            item = ring.next_filled(timeout=WAIT_S)
            assert item is not None, f"module {module}: only {len(frames)} of {n} frames came"
            slot, header = item
            frames.append((header, ring.slots[slot, : header.payload_size].tobytes()))
            ring.release(slot)
        return frames

    def close(self) -> None:
        self.source.close()
        for thread in self.threads:
            thread.join(WAIT_S)
        assert not any(t.is_alive() for t in self.threads), "receiver did not stop"
        assert not self.errors, self.errors


@pytest.fixture
def make_rig() -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(**kwargs) -> Rig:
        rigs.append(Rig(**kwargs))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


# --- FrameRing ---------------------------------------------------------------------------


def run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    return thread, result


def header(frame_number: int) -> FrameHeader:
    return wire.make_header(module_id=0, bit_depth=1, frame_number=frame_number, timestamp_ns=0,
                            payload_size=4, chips_x=1, chips_y=1, chip_size=4)


def test_ring_hands_frames_in_commit_order():
    ring = FrameRing(3, 4)
    a, b = ring.acquire(0), ring.acquire(0)
    assert a is not None and b is not None and a != b
    ring.commit(b, header(1))
    ring.commit(a, header(2))
    assert ring.next_filled(0) == (b, header(1))
    assert ring.next_filled(0) == (a, header(2))
    assert ring.next_filled(0) is None


def test_ring_used_counts_every_slot_not_free():
    ring = FrameRing(3, 4)
    assert ring.used == 0 and ring.n_slots == 3 and ring.slot_bytes == 4
    slot = ring.acquire(0)
    assert ring.used == 1
    ring.commit(slot, header(0))
    assert ring.used == 1
    item = ring.next_filled(0)
    assert item is not None and ring.used == 1
    ring.release(item[0])
    assert ring.used == 0


def test_ring_acquire_blocks_until_a_slot_is_released():
    ring = FrameRing(1, 4)
    held = ring.acquire(0)
    assert held is not None
    assert ring.acquire(timeout=0.01) is None
    thread, result = run_in_thread(lambda: ring.acquire(timeout=WAIT_S))
    ring.release(held)
    thread.join(WAIT_S)
    assert result == [held]


def test_ring_close_wakes_blocked_callers_and_lets_the_consumer_drain():
    ring = FrameRing(2, 4)
    slot = ring.acquire(0)
    ring.commit(slot, header(5))
    other = ring.acquire(0)
    assert other is not None
    producer, acquired = run_in_thread(lambda: ring.acquire(timeout=None))
    ring.close()
    producer.join(WAIT_S)
    assert acquired == [None]
    assert ring.next_filled(timeout=None) == (slot, header(5))
    consumer, taken = run_in_thread(lambda: ring.next_filled(timeout=None))
    consumer.join(WAIT_S)
    assert taken == [None]


def test_ring_close_wakes_a_waiting_consumer():
    ring = FrameRing(2, 4)
    consumer, taken = run_in_thread(lambda: ring.next_filled(timeout=None))
    ring.close()
    consumer.join(WAIT_S)
    assert taken == [None]


def test_ring_reset_drops_filled_frames_and_waits_for_held_slots():
    ring = FrameRing(4, 4)
    filled = ring.acquire(0)
    ring.commit(filled, header(0))
    consumed = ring.acquire(0)
    ring.commit(consumed, header(1))
    assert ring.next_filled(0) == (filled, header(0))
    producing = ring.acquire(0)
    ring.close()
    ring.reset()
    assert not ring.closed
    assert ring.used == 2  # the slots still held come back when their holders let go
    ring.commit(producing, header(2))  # a frame of the old acquisition: not delivered
    ring.release(filled)
    assert ring.used == 0
    assert ring.next_filled(0) is None
    assert sorted(ring.acquire(0) for _ in range(4)) == [0, 1, 2, 3]


def test_ring_refuses_a_slot_its_caller_does_not_hold():
    ring = FrameRing(2, 4)
    with pytest.raises(ValueError, match="free"):
        ring.release(0)
    with pytest.raises(ValueError, match="free"):
        ring.commit(1, header(0))
    with pytest.raises(ValueError, match="2 slots"):
        ring.release(-1)


def test_ring_allocator_hook_makes_the_slots():
    calls = []

    def allocator(shape, dtype):
        calls.append((shape, dtype))
        return np.zeros(shape, dtype)

    ring = FrameRing(3, 10, allocator=allocator)
    assert calls == [((3, 10), np.uint8)]
    slot = ring.acquire(0)
    ring.view(slot)[:3] = b"abc"
    assert ring.slots[slot, :3].tobytes() == b"abc"


# --- ModuleCounters ----------------------------------------------------------------------


def test_counters_count_gaps_and_reset_per_acquisition():
    counters = ModuleCounters()
    for n in (0, 1, 2, 5, 6, 9, 0, 1, 1):
        counters.note_frame_number(n)
    assert counters.gaps == 2 + 2
    counters.frames, counters.connected, counters.connections = 3, True, 1
    counters.reset_acquisition()
    snap = counters.snapshot()
    assert snap["frames"] == snap["gaps"] == 0
    assert snap["connected"] is True and snap["connections"] == 1
    assert set(snap) >= {"frames", "bytes", "corrupt", "gaps", "dropped_idle", "connections",
                         "connected", "last_error"}


# --- TCP receiver: good input ------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 6, 12, 24])
def test_frames_arrive_bit_exact(make_rig, depth):
    rig = make_rig(depth=depth)
    sent = [make_frame(n, depth=depth, crc=n % 2 == 0) for n in range(6)]
    with rig.connect() as sock:
        sock.sendall(b"".join(wire_bytes(*frame) for frame in sent))
        assert rig.take(len(sent)) == sent
    counters = rig.counters[0]
    wait_until(lambda: not counters.connected, "the connection to end")
    expected_bytes = sum(h.frame_size for h, _ in sent)
    assert (counters.frames, counters.bytes, counters.corrupt, counters.gaps) == (
        len(sent), expected_bytes, 0, 0)
    assert counters.connections == 1


def test_tomography_extension_and_unknown_header_bytes(make_rig):
    rig = make_rig()
    tomo = make_frame(0, image_key=ImageKey.FLAT)
    plain_header, plain_payload = make_frame(1)
    longer = FrameHeader(**{**_fields(plain_header), "header_size": 64})
    with rig.connect() as sock:
        sock.sendall(wire_bytes(*tomo) + wire_bytes(longer, plain_payload))
        assert rig.take(2) == [tomo, (longer, plain_payload)]
    assert rig.counters[0].corrupt == 0


def _fields(header: FrameHeader) -> dict:
    return {name: getattr(header, name) for name in FrameHeader.__dataclass_fields__}


def test_two_modules_on_two_connections(make_rig):
    rig = make_rig(modules=2)
    sent = {m: [make_frame(n, module=m) for n in range(5)] for m in (0, 1)}
    socks = {m: rig.connect() for m in (0, 1)}
    for n in range(5):
        for m in (1, 0):
            socks[m].sendall(wire_bytes(*sent[m][n]))
    for m in (0, 1):
        assert rig.take(5, module=m) == sent[m]
        wait_until(lambda m=m: rig.counters[m].connected, "module counted as connected")
    for sock in socks.values():
        sock.close()
    for m in (0, 1):
        wait_until(lambda m=m: not rig.counters[m].connected, "disconnect")
        assert rig.counters[m].connections == 1
        assert rig.counters[m].frames == 5


def test_a_connection_may_carry_another_module(make_rig):
    rig = make_rig(modules=2)
    first, second = make_frame(0, module=0), make_frame(0, module=1)
    with rig.connect() as sock:
        sock.sendall(wire_bytes(*first) + wire_bytes(*second))
        assert rig.take(1, module=0) == [first]
        assert rig.take(1, module=1) == [second]
    assert rig.counters[0].corrupt == rig.counters[1].corrupt == 0


def test_idle_frames_are_counted_dropped(make_rig):
    rig = make_rig()
    rig.armed.clear()
    with rig.connect() as sock:
        sock.sendall(b"".join(wire_bytes(*make_frame(n)) for n in range(5)))
        wait_until(lambda: rig.counters[0].dropped_idle == 5, "idle frames to be counted")
        assert rig.rings[0].used == 0 and rig.counters[0].frames == 0
        rig.armed.set()
        kept = [make_frame(n) for n in (5, 6)]
        sock.sendall(b"".join(wire_bytes(*frame) for frame in kept))
        assert rig.take(2) == kept
    assert rig.counters[0].gaps == 0


def test_gaps_are_counted(make_rig):
    rig = make_rig()
    numbers = [0, 1, 2, 5, 6, 9, 0, 1]
    sent = [make_frame(n) for n in numbers]
    with rig.connect() as sock:
        sock.sendall(b"".join(wire_bytes(*frame) for frame in sent))
        assert rig.take(len(sent)) == sent
    assert rig.counters[0].gaps == 4


def test_back_pressure_blocks_the_sender_and_loses_nothing(make_rig):
    geom = {"chips_x": 2, "chips_y": 2, "chip_size": 64}  # 48 KiB a frame
    rig = make_rig(geom=geom, n_slots=2, rcvbuf=32 * 1024)
    sent = [make_frame(n, geom=geom, crc=True) for n in range(48)]
    sender_done = threading.Event()
    with rig.connect(sndbuf=32 * 1024) as sock:

        def send() -> None:
            sock.sendall(b"".join(wire_bytes(*frame) for frame in sent))
            sender_done.set()

        sender = threading.Thread(target=send)
        sender.start()
        wait_until(lambda: rig.rings[0].used == 2, "the ring to fill")
        assert not sender_done.wait(0.2), "sender finished although the ring is full"
        received = []
        for _ in sent:  # a slow consumer: one frame at a time
            received += rig.take(1)
            threading.Event().wait(0.001)
        sender.join(WAIT_S)
    assert received == sent
    counters = rig.counters[0]
    assert (counters.frames, counters.corrupt, counters.dropped_idle, counters.gaps) == (
        48, 0, 0, 0)


def test_stop_ends_a_receiver_blocked_on_a_full_ring(make_rig):
    rig = make_rig(n_slots=1)
    with rig.connect() as sock:
        sock.sendall(b"".join(wire_bytes(*make_frame(n)) for n in range(3)))
        wait_until(lambda: rig.rings[0].used == 1, "the ring to fill")
        rig.close()  # asserts the engine threads ended


def test_listener_accept_returns_none_when_stopped_or_closed():
    listener = TcpListener("127.0.0.1", 0)
    assert listener.address[1] > 0
    stop = threading.Event()
    stop.set()
    assert listener.accept(stop, poll_s=0.01) is None
    waiting, result = run_in_thread(lambda: listener.accept(threading.Event(), poll_s=0.01))
    listener.close()
    waiting.join(WAIT_S)
    assert result == [None]


# --- TCP receiver: bad input -------------------------------------------------------------


def garbage(n: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    return data.replace(wire.MAGIC, b"XXXX")


def test_garbage_between_frames_is_skipped(make_rig):
    rig = make_rig()
    junk = [
        garbage(100, 1),  # before the first frame too
        garbage(200_000, 2),  # longer than one scan read
        b"PMGA" + garbage(60, 3) + b"xPMGAPMG",  # false magics, a prefix just before the next
        b"\x01\x02",  # shorter than a header
    ]
    sent = [make_frame(n) for n in range(len(junk))]
    stream = b"".join(j + wire_bytes(*frame) for j, frame in zip(junk, sent, strict=True))
    with rig.connect() as sock:
        sock.sendall(stream)
        assert rig.take(len(sent)) == sent
    counters = rig.counters[0]
    assert counters.corrupt == len(junk)
    assert "bad frame header" in counters.last_error
    assert counters.frames == len(sent) and counters.gaps == 0


def test_truncated_header_then_good_frames(make_rig):
    rig = make_rig()
    cut = wire_bytes(*make_frame(0))[:20]
    sent = [make_frame(n) for n in range(3)]
    with rig.connect() as sock:
        sock.sendall(cut + b"".join(wire_bytes(*frame) for frame in sent))
        assert rig.take(3) == sent
    assert rig.counters[0].corrupt == 1


def test_wrong_payload_size_is_skipped(make_rig):
    rig = make_rig()
    header, payload = make_frame(0)
    bad = FrameHeader(**{**_fields(header), "payload_size": header.payload_size + 3})
    sent = [make_frame(n) for n in (1, 2)]
    with rig.connect() as sock:
        sock.sendall(bad.pack() + payload + b"abc" + b"".join(wire_bytes(*f) for f in sent))
        assert rig.take(2) == sent
    assert rig.counters[0].corrupt == 1
    assert "payload_size" in rig.counters[0].last_error


@pytest.mark.parametrize(
    ("odd", "reason"),
    [
        (make_frame(0, depth=12), "at 12 bit"),
        (make_frame(0, geom={**GEOM, "chips_x": 1}), "1x2 chips"),
        (make_frame(0, module=3), "module id 3"),
    ],
    ids=["depth", "geometry", "module-id"],
)
def test_frames_that_do_not_fit_the_acquisition_are_skipped(make_rig, odd, reason):
    rig = make_rig()
    sent = [make_frame(n) for n in (1, 2)]
    with rig.connect() as sock:
        sock.sendall(wire_bytes(*odd) + b"".join(wire_bytes(*frame) for frame in sent))
        assert rig.take(2) == sent
    assert rig.counters[0].corrupt == 1
    assert reason in rig.counters[0].last_error


def test_bad_crc_drops_only_that_frame(make_rig):
    rig = make_rig()
    frames = [make_frame(n, crc=True) for n in range(3)]
    header, payload = frames[1]
    flipped = bytes([payload[0] ^ 1]) + payload[1:]
    with rig.connect() as sock:
        sock.sendall(wire_bytes(*frames[0]) + wire_bytes(header, flipped) + wire_bytes(*frames[2]))
        assert rig.take(2) == [frames[0], frames[2]]
    assert rig.counters[0].corrupt == 1
    assert "CRC" in rig.counters[0].last_error
    assert rig.rings[0].used == 0


def test_short_payload_costs_that_frame_and_the_next(make_rig):
    rig = make_rig()
    frames = [make_frame(n, crc=True) for n in range(4)]
    header, payload = frames[0]
    stream = wire_bytes(header, payload[:-100]) + b"".join(wire_bytes(*f) for f in frames[1:])
    with rig.connect() as sock:
        sock.sendall(stream)
        assert rig.take(2) == frames[2:]
    assert rig.counters[0].corrupt == 2  # frame 0 fails its CRC, frame 1 lost its header


@pytest.mark.parametrize("cut_at", [10, wire.FIXED_SIZE + 50], ids=["in-header", "in-payload"])
def test_sender_gone_mid_frame_then_reconnect(make_rig, cut_at):
    rig = make_rig()
    with rig.connect() as sock:
        sock.sendall(wire_bytes(*make_frame(0))[:cut_at])
    sent = [make_frame(n) for n in range(2)]
    with rig.connect() as sock:
        sock.sendall(b"".join(wire_bytes(*frame) for frame in sent))
        assert rig.take(2) == sent
    counters = rig.counters[0]
    assert counters.corrupt == 1
    assert "stream ended inside" in counters.last_error
    assert rig.rings[0].used == 0


def test_a_flood_of_garbage_is_logged_sparingly(make_rig, caplog):
    rig = make_rig()
    episodes = 50
    stream = b"".join(garbage(64, n) + wire_bytes(*make_frame(n)) for n in range(episodes))
    with caplog.at_level(logging.WARNING, logger="pimega.ingest"), rig.connect() as sock:
        sock.sendall(stream)
        rig.take(episodes)
    assert rig.counters[0].corrupt == episodes
    lines = [r for r in caplog.records if r.name.startswith("pimega.ingest")]
    assert 1 <= len(lines) < episodes // 2
    assert "skipped" in lines[0].getMessage()
