"""RDMA ingest: the protocol's state, the whole receive path on the in-process verbs (rings,
credits, counters, back-pressure, faults), the engine end to end, and — marked ``rdma`` — the
same over a real device (Soft-RoCE is enough)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest

from pimega.cli import bench_rdma
from pimega.core import bitpack, wire
from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.framing import FrameExpectation, IngestSink
from pimega.ingest.rdma import (
    LoopbackFabric,
    ProtocolError,
    PyverbsVerbs,
    RdmaDisconnected,
    RdmaLink,
    RdmaSource,
    RdmaUnavailable,
    Verbs,
    device_address,
    protocol,
    unavailable_reason,
)
from pimega.ingest.rdma.protocol import Msg, ReceiverBook, SenderBook
from pimega.ingest.rdma.verbs import Completion, Connection, MemoryRegion
from pimega.ingest.ring import FrameRing
from pimega.runtime.engine import Acquisition
from pimega.runtime.settings import CaptureSettings
from pimega.sim.patterns import counter_array_image, module_payload
from pimega.sim.phantom import PhantomScan
from pimega.sim.rdma_sender import RdmaSimulator
from pimega.sim.sender import PhantomParams, SimConfig

SMALL = ModuleGeometry(2, 2, 16)
DEPTH = 24
PAYLOAD = SMALL.payload_size(DEPTH)
WAIT_S = 10.0  # generous bound on waits; no test relies on it to pass
NO_DEVICE = unavailable_reason()
requires_device = pytest.mark.skipif(NO_DEVICE is not None, reason=f"no RDMA here: {NO_DEVICE}")


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def frame(number: int, module: int = 0, *, crc: bool = True,
          geometry: ModuleGeometry = SMALL) -> tuple[bytes, np.ndarray]:
    """Header bytes and a payload of random counts, different for every module and frame."""
    rng = np.random.default_rng(1000 * module + number)
    pixels = rng.integers(0, 1 << DEPTH, size=(geometry.n_chips, geometry.chip_size ** 2),
                          dtype=np.uint32)
    payload = np.ascontiguousarray(bitpack.pack(pixels, DEPTH)).reshape(-1)
    header = wire.make_header(
        module_id=module, bit_depth=DEPTH, frame_number=number, timestamp_ns=number,
        chips_x=geometry.chips_x, chips_y=geometry.chips_y, chip_size=geometry.chip_size,
        payload=payload.tobytes(), with_crc=crc)
    return header.pack(), payload


class Rig:
    """An RdmaSource with rings, counters and a consumer, threads as the engine runs them."""

    def __init__(self, verbs: Verbs | None = None, *, modules: int = 1, n_slots: int = 4,
                 armed: bool = True, consuming: bool = True, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.verbs = verbs or LoopbackFabric()
        self.rings = [FrameRing(n_slots, PAYLOAD) for _ in range(modules)]
        self.counters = [ModuleCounters() for _ in range(modules)]
        self.sink = IngestSink(self.rings, self.counters, FrameExpectation(
            SMALL.chips_x, SMALL.chips_y, SMALL.chip_size, DEPTH), threading.Event())
        if armed:
            self.sink.armed.set()
        self.source = RdmaSource(host, port, verbs=self.verbs)
        self.received: list[list[tuple[int, bytes]]] = [[] for _ in range(modules)]
        self.image_keys: list[list[int]] = [[] for _ in range(modules)]
        self.consuming = threading.Event()
        if consuming:
            self.consuming.set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.source.open(self.sink, self._spawn)
        for m in range(modules):
            self._spawn(f"consume-{m}", lambda m=m: self._consume(m))

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _consume(self, module: int) -> None:
        ring = self.rings[module]
        while not self._stop.is_set():
            if not self.consuming.wait(0.05):
                continue
            item = ring.next_filled(timeout=0.05)
            if item is not None:
                slot, header = item
                data = bytes(ring.slots[slot, : header.payload_size])
                self.received[module].append((header.frame_number, data))
                self.image_keys[module].append(int(header.image_key))
                ring.release(slot)

    def link(self, modules: Sequence[int] = (0,), tap: Callable[[Connection], Connection]
             | None = None, **options: float) -> RdmaLink:
        conn = self.verbs.connect(*self.source.address, WAIT_S)
        return RdmaLink(tap(conn) if tap else conn, list(modules), **options)

    def new_acquisition(self) -> None:
        """What the engine does between acquisitions: disarm, reset rings and counters, arm."""
        self.sink.armed.clear()
        for ring, counters in zip(self.rings, self.counters, strict=True):
            ring.reset()
            counters.reset_acquisition()
        self.sink.armed.set()

    def close(self) -> None:
        self.source.close()
        self._stop.set()
        for ring in self.rings:
            ring.close()
        for thread in self._threads:
            thread.join(WAIT_S)
        assert not any(thread.is_alive() for thread in self._threads)


@pytest.fixture
def rig_factory():
    rigs: list[Rig] = []

    def make(*args, **kwargs) -> Rig:
        rigs.append(Rig(*args, **kwargs))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def send(link: RdmaLink, numbers: Sequence[int], module: int = 0, **kwargs) -> None:
    for number in numbers:
        header, payload = frame(number, module)
        assert link.send_frame(module, header, payload, **kwargs)


def expected(numbers: Sequence[int], module: int = 0) -> list[tuple[int, bytes]]:
    return [(n, frame(n, module)[1].tobytes()) for n in numbers]


class Tap:
    """A connection that passes everything on, except what a test changes on the way."""

    def __init__(self, conn: Connection, *, on_send: Callable[[bytes], bool] | None = None,
                 on_write: Callable[[Callable[..., None], tuple], None] | None = None) -> None:
        self.conn = conn
        self.on_send = on_send
        self.on_write = on_write

    @property
    def peer(self) -> str:
        return self.conn.peer

    @property
    def max_inflight(self) -> int:
        return self.conn.max_inflight

    def register(self, buffer: np.ndarray) -> MemoryRegion:
        return self.conn.register(buffer)

    def send(self, message: bytes) -> None:
        if self.on_send is None or self.on_send(message):
            self.conn.send(message)

    def write(self, *args, **kwargs) -> None:
        if self.on_write is None:
            self.conn.write(*args, **kwargs)
        else:
            self.on_write(self.conn.write, (*args, kwargs.get("imm")))

    def poll(self, max_events: int = 64) -> list[Completion]:
        return self.conn.poll(max_events)

    def close(self) -> None:
        self.conn.close()


class TapListener:
    def __init__(self, listener, on_send: Callable[[bytes], bool]) -> None:
        self.listener = listener
        self.on_send = on_send

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.address

    def accept(self, timeout: float) -> Connection | None:
        conn = self.listener.accept(timeout)
        return None if conn is None else Tap(conn, on_send=self.on_send)

    def close(self) -> None:
        self.listener.close()


class TapVerbs:
    """Loopback verbs whose accepted connections go through a Tap (the receiver's sends)."""

    name = "loopback"

    def __init__(self, on_send: Callable[[bytes], bool]) -> None:
        self.fabric = LoopbackFabric()
        self.on_send = on_send

    def listen(self, host: str, port: int) -> TapListener:
        return TapListener(self.fabric.listen(host, port), self.on_send)

    def connect(self, host: str, port: int, timeout: float) -> Connection:
        return self.fabric.connect(host, port, timeout)


# -- the protocol as plain state ----------------------------------------------------------


def test_messages_round_trip_and_others_are_refused():
    lay = protocol.ModuleLayout(3, 8, PAYLOAD, 1 << 40, 7, 1 << 41, 9)
    assert protocol.parse(protocol.offer([0, 3])).values == (0, 3)
    assert protocol.parse(protocol.layout([lay])).layouts == (lay,)
    assert protocol.parse(protocol.refuse("too many")).reason == "too many"
    assert protocol.parse(protocol.starved(3)) == protocol.Message(Msg.STARVED, 3)
    for bad in (b"", bytes([3, 2, 0, 0, 0, 0]), bytes([9, 1, 0, 0, 0, 0]),
                bytes([3, 1, 0, 0, 2, 0, 1, 0])):  # short, version 2, unknown, 2 slots in 2 B
        with pytest.raises(ProtocolError):
            protocol.parse(bad)
    assert protocol.immediate(3, 7) == 0x30007
    with pytest.raises(ValueError):
        protocol.immediate(1 << 16, 0)


def test_the_receiver_book_takes_each_credit_once():
    book: ReceiverBook[str] = ReceiverBook([0, 2], n_slots=4)
    (message,) = book.credit(2, [(1, "a"), (3, "b")])
    assert protocol.parse(message) == protocol.Message(Msg.CREDIT, 2, (1, 3))
    assert book.land(protocol.immediate(2, 3)) == (2, 3, "b")
    for imm, module in ((protocol.immediate(2, 3), 2),  # a duplicate
                        (protocol.immediate(2, 9), 2),  # outside the ring
                        (protocol.immediate(2, 0), 2),  # never credited
                        (protocol.immediate(1, 1), None)):  # a module not carried
        with pytest.raises(ProtocolError) as err:
            book.land(imm)
        assert err.value.module == module
    assert book.outstanding(2) == 1
    sync = protocol.parse(book.answer(protocol.starved(2)))
    assert (sync.kind, sync.module, sync.values, book.resyncs) == (Msg.SYNC, 2, (1,), 1)
    assert book.teardown() == {0: {}, 2: {1: "a"}}
    assert book.outstanding(2) == 0


def test_the_sender_book_recovers_a_lost_credit_without_holding_a_slot_twice():
    lay = protocol.ModuleLayout(0, 4, PAYLOAD, 0, 0, 0, 0)
    receiver: ReceiverBook[None] = ReceiverBook([0], n_slots=4)
    sender = SenderBook([lay])
    receiver.credit(0, [(0, None)])  # this CREDIT is lost on the way
    in_flight = receiver.credit(0, [(1, None)])  # this one arrives after STARVED
    assert sender.take(0) is None
    starved = sender.starved(0)
    assert starved is not None and sender.starved(0) is None  # one until the SYNC
    sync = receiver.answer(starved)
    for message in (*in_flight, sync):
        sender.receive(message)
    assert sorted([sender.take(0), sender.take(0)]) == [0, 1]  # type: ignore[type-var]
    assert sender.take(0) is None
    with pytest.raises(ProtocolError):
        sender.receive(protocol.refuse("gone"))


# -- the receive path on the in-process verbs ------------------------------------------------


def test_frames_arrive_bit_exact_and_in_order_through_small_rings(rig_factory):
    rig = rig_factory(modules=2, n_slots=3)
    link = rig.link([0, 1])
    numbers = range(40)  # each ring wraps around more than ten times
    for n in numbers:
        send(link, [n], 0)
        send(link, [n], 1)
    wait_until(lambda: all(len(r) == 40 for r in rig.received), "every frame")
    for m in (0, 1):
        assert rig.received[m] == expected(numbers, m)
        counters = rig.counters[m]
        assert (counters.frames, counters.lost, counters.connected) == (40, 0, True)
        assert counters.bytes == 40 * (wire.FIXED_SIZE + PAYLOAD)
    link.close()
    wait_until(lambda: not rig.counters[0].connected, "the disconnect")
    assert [ring.used for ring in rig.rings] == [0, 0]
    assert rig.source.cpu_s > 0


def test_a_full_ring_holds_the_sender_back_without_losing_frames(rig_factory):
    rig = rig_factory(n_slots=3, consuming=False)
    link = rig.link()
    sender = threading.Thread(target=send, args=(link, range(12)))
    sender.start()
    wait_until(lambda: rig.rings[0].used == 3, "a full ring")
    time.sleep(0.1)
    assert sender.is_alive() and rig.counters[0].frames <= 3  # waiting for credits
    rig.consuming.set()
    sender.join(WAIT_S)
    wait_until(lambda: len(rig.received[0]) == 12, "every frame")
    assert rig.received[0] == expected(range(12))
    assert rig.counters[0].lost == 0


def test_a_lost_credit_is_recovered_by_a_resync(rig_factory):
    dropped: list[bytes] = []

    def lose_the_first_credit(message: bytes) -> bool:
        if protocol.parse(message).kind is Msg.CREDIT and not dropped:
            dropped.append(message)
            return False
        return True

    rig = rig_factory(TapVerbs(lose_the_first_credit))
    link = rig.link()
    send(link, range(10))
    wait_until(lambda: len(rig.received[0]) == 10, "every frame")
    assert dropped and link.resyncs >= 1 and rig.source.resyncs >= 1
    assert rig.received[0] == expected(range(10))
    assert rig.counters[0].lost == 0


def test_a_duplicate_immediate_is_counted_and_ignored(rig_factory):
    rig = rig_factory()
    payload_writes: list[int] = []

    def twice_for_frame_3(write, args) -> None:
        *rest, imm = args
        write(*rest, imm=imm)
        if imm is not None:
            payload_writes.append(imm)
            if len(payload_writes) == 4:
                write(*rest, imm=imm)

    link = rig.link(tap=lambda conn: Tap(conn, on_write=twice_for_frame_3))
    send(link, range(8))
    wait_until(lambda: len(rig.received[0]) == 8, "every frame")
    assert rig.received[0] == expected(range(8))
    assert rig.counters[0].corrupt == 1
    assert "without a credit" in rig.counters[0].last_error


def test_an_out_of_range_slot_is_counted_and_its_credit_recovered(rig_factory):
    rig = rig_factory(n_slots=2)  # one credit at a time: the sender must get it back
    payload_writes: list[int] = []

    def frame_3_names_slot_99(write, args) -> None:
        *rest, imm = args
        if imm is not None:
            payload_writes.append(imm)
            if len(payload_writes) == 4:
                imm = protocol.immediate(0, 99)
        write(*rest, imm=imm)

    link = rig.link(tap=lambda conn: Tap(conn, on_write=frame_3_names_slot_99))
    send(link, range(8))
    wait_until(lambda: len(rig.received[0]) == 7, "the other frames")
    assert rig.received[0] == expected([0, 1, 2, 4, 5, 6, 7])
    counters = rig.counters[0]
    assert (counters.corrupt, counters.gaps, counters.lost) == (1, 0, 1)  # lost once
    assert "outside its ring" in counters.last_error
    assert link.resyncs >= 1


def test_bad_headers_are_counted_corrupt_and_the_stream_goes_on(rig_factory):
    rig = rig_factory(modules=2)
    link = rig.link([0, 1])
    send(link, [0])
    header, payload = frame(1)
    wrong_depth = bytearray(header)
    wrong_depth[10] = 12  # bit_depth: another geometry than this acquisition's
    bad_crc = payload.copy()
    bad_crc[0] ^= 1
    other_module = frame(2, module=1)[0]
    for bad in ((bytes(wrong_depth), payload), (header, bad_crc), (other_module, payload)):
        assert link.send_frame(0, *bad)
    send(link, [5])
    wait_until(lambda: len(rig.received[0]) == 2, "the good frames")
    assert rig.received[0] == expected([0, 5])
    assert rig.counters[0].corrupt == 3


def test_a_sender_that_disappears_gives_its_slots_back_and_the_next_is_served(rig_factory):
    rig = rig_factory()
    writes: list[int | None] = []
    taps: list[Tap] = []

    def vanish_inside_frame_5(write, args) -> None:
        *rest, imm = args
        write(*rest, imm=imm)
        writes.append(imm)
        if len(writes) == 11:  # frame 5's header is in its cell; its payload never comes
            taps[0].conn.close()

    first = rig.link(tap=lambda conn: taps.append(Tap(conn, on_write=vanish_inside_frame_5))
                     or taps[0])
    send(first, range(5))
    header, payload = frame(5)
    with pytest.raises(RdmaDisconnected):
        first.send_frame(0, header, payload)
    wait_until(lambda: rig.source.connections == 0, "the end of its connection")
    wait_until(lambda: len(rig.received[0]) == 5, "the frames before")
    assert not rig.counters[0].connected
    assert rig.rings[0].used == 0  # every credit it held is back
    second = rig.link()
    send(second, range(5, 10))
    wait_until(lambda: len(rig.received[0]) == 10, "the next sender's frames")
    assert rig.received[0] == expected(range(10))
    assert (rig.counters[0].connections, rig.counters[0].lost) == (2, 0)


def test_frames_while_not_armed_are_dropped_as_idle_then_taken_once_armed(rig_factory):
    rig = rig_factory(armed=False)
    link = rig.link()
    send(link, range(5))
    wait_until(lambda: rig.counters[0].dropped_idle == 5, "the idle frames")
    rig.new_acquisition()
    send(link, range(5))
    wait_until(lambda: len(rig.received[0]) == 5, "the armed frames")
    assert rig.received[0] == expected(range(5))
    assert (rig.counters[0].frames, rig.counters[0].dropped_idle) == (5, 0)


@pytest.mark.parametrize("frames_before", [6, 0], ids=["busy", "empty"])
def test_slots_a_ring_reset_orphans_lose_no_frame(rig_factory, frames_before):
    """Credits given in one acquisition are used in the next: the frames must still come."""
    rig = rig_factory(n_slots=4)
    link = rig.link()
    send(link, range(frames_before))
    wait_until(lambda: len(rig.received[0]) == frames_before, "the first acquisition")
    credits = 3 if frames_before else 2  # fewer while none can be trusted
    wait_until(lambda: rig.rings[0].used == credits, "credits for the next frames")
    rig.new_acquisition()  # at once: the receive loop need not see the disarmed moment
    send(link, range(10))
    wait_until(lambda: len(rig.received[0]) == frames_before + 10, "the next acquisition")
    assert rig.received[0][frames_before:] == expected(range(10))
    assert rig.counters[0].frames == 10


def test_a_sender_that_cannot_wait_counts_overruns_and_the_receiver_gaps(rig_factory):
    rig = rig_factory(n_slots=3, consuming=False)
    link = rig.link()
    sent = []
    for n in range(10):
        header, payload = frame(n)
        if link.send_frame(0, header, payload, wait_s=0):
            sent.append(n)
    overruns = 10 - len(sent)
    assert overruns > 0
    rig.consuming.set()
    send(link, [10])
    wait_until(lambda: len(rig.received[0]) == len(sent) + 1, "the frames sent")
    assert rig.received[0] == expected([*sent, 10])
    assert (rig.counters[0].gaps, rig.counters[0].corrupt) == (overruns, 0)


def test_a_connection_must_offer_modules_this_node_has(rig_factory):
    rig = rig_factory(modules=2)
    with pytest.raises(ProtocolError, match="refused"):
        rig.link([1, 2])
    assert rig.counters[1].connections == 0


# -- the engine and the simulator ----------------------------------------------------------


def run_to_file(engine: Acquisition, path: Path, n: int) -> None:
    engine.configure(bit_depth=12, n_images=n, acquire_time_s=1e-3, acquire_period_s=1e-3)
    engine.start_capture(CaptureSettings(str(path), num_capture=n))
    engine.start()
    assert engine.wait(timeout=60), "acquisition did not end"
    assert engine.wait_capture(timeout=60), "capture did not end"


def test_the_engine_writes_the_simulators_rdma_frames_bit_exact(tmp_path):
    layout = ArrayLayout.square(4, SMALL)
    fabric = LoopbackFabric()
    source = RdmaSource("127.0.0.1", 0, verbs=fabric)
    sim = RdmaSimulator(lambda modules: RdmaLink.connect(fabric, *source.address, modules),
                        SimConfig(layout=layout, with_crc=True))
    with Acquisition(layout, [source], detector=sim, ring_slots=4) as engine:
        for name, n in (("a.h5", 20), ("b.h5", 7)):  # the second starts at once
            run_to_file(engine, tmp_path / name, n)
        status = engine.status()
    assert "rdma 127.0.0.1" in source.description
    for name, n in (("a.h5", 20), ("b.h5", 7)):
        with h5py.File(tmp_path / name, "r") as f:
            data = f["/entry/data/data"][()]
        assert data.shape[0] == n
        for i in range(n):
            np.testing.assert_array_equal(data[i], counter_array_image(layout, i, 12))
    assert (status.frames_received, status.frames_dropped, status.corrupt_frames) == (7, 0, 0)
    assert sim.error is None


def test_the_simulator_sends_a_phantom_scan_and_counts_overruns(rig_factory):
    rig = rig_factory(n_slots=3)
    phantom = PhantomParams(n_darks=2, n_flats=2)
    config = SimConfig(layout=ArrayLayout(SMALL), bit_depth=DEPTH, n_frames=6,
                       pattern="phantom", phantom=phantom)
    sim = RdmaSimulator(lambda modules: rig.link(modules), config)
    sim.acquire()
    assert sim.wait(WAIT_S) and sim.error is None
    wait_until(lambda: len(rig.received[0]) == 6, "the scan")
    assert rig.image_keys[0] == [2, 2, 1, 1, 0, 0]  # darks, flats, projections
    scan = PhantomScan(SMALL, DEPTH, 2, n_darks=2, n_flats=2)
    assert [data for _, data in rig.received[0]] == [
        module_payload(image, SMALL, DEPTH).tobytes() for _, _, image in scan]
    rig.consuming.clear()
    impatient = RdmaSimulator(lambda modules: rig.link(modules), config, wait_s=0)
    impatient.acquire(n_frames=20)
    assert impatient.wait(WAIT_S)
    assert impatient.overruns > 0 and impatient.frames_sent == 20
    sim.close()
    impatient.close()


def test_the_simulator_refuses_a_run_out_of_range_before_it_connects():
    links: list[Sequence[int]] = []
    sim = RdmaSimulator(links.append, SimConfig(layout=ArrayLayout(SMALL), bit_depth=DEPTH))
    for run, reason in (({"frame_rate_hz": -1.0}, "frame rate"),
                        ({"frame_rate_hz": float("nan")}, "frame rate"),
                        ({"n_frames": -2}, "negative"), ({"bit_depth": 7}, "depth")):
        with pytest.raises(ConfigError, match=reason):
            sim.acquire(**run)
    assert links == [] and not sim.running


def test_bench_measures_throughput_and_receive_cpu_on_the_loopback():
    result = bench_rdma.run(verbs=LoopbackFabric(), module=SMALL, frames=60, ring_slots=4)
    assert result["received"] == 60 and result["lost"] == 0
    assert result["gbit_s"] > 0 and result["receive_cpu_s"] > 0
    assert result["verbs"] == "loopback"


@pytest.mark.skipif(NO_DEVICE is None, reason="an RDMA device is present")
def test_without_pyverbs_or_a_device_rdma_says_why():
    with pytest.raises(RdmaUnavailable) as err:
        RdmaSource("127.0.0.1", 18515)
    assert str(err.value) == NO_DEVICE
    assert "pyverbs" in NO_DEVICE or "rxe" in NO_DEVICE
    result = bench_rdma.run(frames=10)
    assert result["skipped"] and result["reason"] == NO_DEVICE


# -- a real device ----------------------------------------------------------------------------


@pytest.mark.rdma
@requires_device
def test_a_device_carries_frames_bit_exact_and_takes_the_next_sender(rig_factory):
    address = device_address()
    verbs = PyverbsVerbs()
    rig = rig_factory(verbs, modules=2, n_slots=4, host=address, port=18520)
    for numbers in (range(20), range(20, 30)):  # two senders, one after the other
        link = rig.link([0, 1])
        for n in numbers:
            send(link, [n], 0)
            send(link, [n], 1)
        wait_until(lambda n=numbers[-1]: all(r and r[-1][0] == n for r in rig.received),
                   "every frame")
        link.close()
        wait_until(lambda: not rig.counters[0].connected, "the disconnect")
    for m in (0, 1):
        assert rig.received[m] == expected(range(30), m)
        assert (rig.counters[m].lost, rig.counters[m].connections) == (0, 2)


@pytest.mark.rdma
@requires_device
def test_a_device_feeds_the_engine_bit_exact(tmp_path):
    layout = ArrayLayout.square(4, SMALL)
    address = device_address()
    verbs = PyverbsVerbs()
    source = RdmaSource(address, 18521, verbs=verbs)
    sim = RdmaSimulator(lambda modules: RdmaLink.connect(verbs, address, 18521, modules),
                        SimConfig(layout=layout))
    with Acquisition(layout, [source], detector=sim) as engine:
        run_to_file(engine, tmp_path / "rdma.h5", 30)
    with h5py.File(tmp_path / "rdma.h5", "r") as f:
        data = f["/entry/data/data"][()]
    for i in range(30):
        np.testing.assert_array_equal(data[i], counter_array_image(layout, i, 12))
