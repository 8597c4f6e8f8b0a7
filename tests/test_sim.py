"""Simulated detector: counter and phantom patterns, payload mapping, TCP round trips, CLI."""

from __future__ import annotations

import itertools
import logging
import math
import socket
import threading
import time

import numpy as np
import pytest

from pimega.cli.sim import main as sim_main
from pimega.core import bitpack
from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.core.wire import FIXED_SIZE, Flags, FrameHeader, ImageKey, parse_frame, parse_header
from pimega.sim.patterns import (
    COUNTER_PERIOD,
    counter_array_image,
    counter_image,
    module_payload,
)
from pimega.sim.phantom import MODIFIED_SHEPP_LOGAN_3D, PhantomScan, line_integrals
from pimega.sim.sender import PhantomParams, SimConfig, Simulator

DEPTHS = (1, 6, 12, 24)
TINY = ModuleGeometry(chips_x=2, chips_y=2, chip_size=16)
FULL = ModuleGeometry()
IO_TIMEOUT_S = 20.0  # only guards against a hung test; no assertion depends on it


# -- helpers: an independent receiver and assembler ---------------------------------------


def recv_exactly(conn: socket.socket, n_bytes: int) -> bytes:
    buf = bytearray(n_bytes)
    view = memoryview(buf)
    got = 0
    while got < n_bytes:
        n = conn.recv_into(view[got:])
        if not n:
            raise EOFError(f"connection closed after {got} of {n_bytes} bytes")
        got += n
    return bytes(buf)


def read_frame(conn: socket.socket) -> tuple[FrameHeader, memoryview]:
    fixed = recv_exactly(conn, FIXED_SIZE)
    header_size = int.from_bytes(fixed[6:8], "little")
    head = fixed + recv_exactly(conn, header_size - FIXED_SIZE)
    payload_size = parse_header(head).payload_size
    return parse_frame(head + recv_exactly(conn, payload_size))


def assemble(header: FrameHeader, payload: memoryview) -> np.ndarray:
    """Place chips by the DESIGN.md rule, written here apart from the simulator's code."""
    s, across, down = header.chip_size, header.chips_x, header.chips_y
    streams = np.frombuffer(payload, dtype=np.uint8).reshape(across * down, -1)
    pixels = bitpack.unpack(streams, header.bit_depth, s * s)
    image = np.zeros((down * s, across * s), dtype=pixels.dtype)
    for index in range(across * down):
        r, c = divmod(index, across)
        tile = pixels[index].reshape(s, s)
        if r < down // 2:
            tile = np.rot90(tile, 2)
        image[r * s : (r + 1) * s, c * s : (c + 1) * s] = tile
    return image


def receive(conns: list[socket.socket], n_frames: int) -> dict[int, list]:
    """``n_frames`` frames from each connection, keyed by module_id."""
    by_module: dict[int, list] = {}
    for conn in conns:
        frames = [read_frame(conn) for _ in range(n_frames)]
        module_ids = {header.module_id for header, _ in frames}
        assert len(module_ids) == 1, "one connection carries one module"
        by_module[module_ids.pop()] = frames
    return by_module


class Receiver:
    """A listening socket on 127.0.0.1; closes what it accepted when the test ends."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT_S)
        self.port: int = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []

    def accept(self, n: int) -> list[socket.socket]:
        conns = [self.listener.accept()[0] for _ in range(n)]
        for conn in conns:
            conn.settimeout(IO_TIMEOUT_S)
        self.conns += conns
        return conns

    def close(self) -> None:
        for conn in [*self.conns, self.listener]:
            conn.close()


@pytest.fixture
def receiver():
    rx = Receiver()
    yield rx
    rx.close()


def simulator(receiver: Receiver, **config) -> Simulator:
    sim = Simulator("127.0.0.1", receiver.port, SimConfig(**config))
    sim.connect(timeout=IO_TIMEOUT_S)
    return sim


# -- counter pattern ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
def test_counter_fits_depth_and_uses_its_range(depth):
    image = counter_image(3, 5, FULL, depth)
    assert image.shape == FULL.shape
    assert image.dtype == bitpack.dtype_for_depth(depth)
    assert int(image.max()) < 2**depth
    top_bit = (image >> (depth - 1)) & 1
    assert 0.4 < top_bit.mean() < 0.6, "the top bit is exercised"
    if depth < 24:
        assert len(np.unique(image)) == 2**depth


@pytest.mark.parametrize("depth", (6, 12, 24))
@pytest.mark.parametrize("geometry", (TINY, FULL), ids=("2x2of16", "6x6of256"))
def test_counter_neighbours_and_chips_differ(depth, geometry):
    image = counter_image(1, 7, geometry, depth)
    assert (image[:, 1:] != image[:, :-1]).all()
    assert (image[1:, :] != image[:-1, :]).all()
    s = geometry.chip_size
    tiles = [
        image[r * s : (r + 1) * s, c * s : (c + 1) * s]
        for r in range(geometry.chips_y)
        for c in range(geometry.chips_x)
    ]
    for a, b in itertools.combinations(tiles, 2):
        assert (a != b).any(), "a chip moved to another chip's place must show"
    for tile in tiles:
        assert (np.rot90(tile, 2) != tile).any(), "a chip rotated in place must show"
        assert (tile != tile.T).any(), "a chip transposed in place must show"


def test_counter_at_one_bit_is_a_checkerboard_inverted_by_each_frame():
    image = counter_image(0, 0, TINY, 1)
    assert set(np.unique(image)) == {0, 1}
    assert (image[1:, :] != image[:-1, :]).all()
    inside_chip = np.arange(1, TINY.width) % TINY.chip_size != 0
    assert (image[:, 1:] != image[:, :-1])[:, inside_chip].all()
    assert (counter_image(0, 1, TINY, 1) == 1 - image).all()
    assert (counter_image(0, 2, TINY, 1) == image).all()


@pytest.mark.parametrize("depth", (6, 12, 24))
def test_counter_frames_and_modules_differ_within_a_period(depth):
    images = {
        (m, k): counter_image(m, k, TINY, depth) for m in range(4) for k in range(COUNTER_PERIOD)
    }
    for (key_a, a), (key_b, b) in itertools.combinations(images.items(), 2):
        assert (a != b).any(), f"{key_a} and {key_b} look the same"
    for m in range(4):
        for k in range(COUNTER_PERIOD):
            assert (images[m, k] != images[m, (k + 1) % COUNTER_PERIOD]).all()
    assert (counter_image(2, 3 + COUNTER_PERIOD, TINY, depth) == images[2, 3]).all()
    assert (counter_image(2, 3 + 4, TINY, depth, period=4) == images[2, 3]).all()


def test_counter_array_image_places_modules_at_their_origins():
    layout = ArrayLayout(TINY, 2, 2)
    image = counter_array_image(layout, 9, 12)
    assert image.shape == layout.shape
    for module_id in range(4):
        row, col = layout.module_origin(module_id)
        tile = image[row : row + TINY.height, col : col + TINY.width]
        assert (tile == counter_image(module_id, 9, TINY, 12)).all()


# -- image -> payload -------------------------------------------------------------------------


def bit_stream(values: list[int], depth: int) -> bytes:
    """Pixel i at bits [d·i, d·i + d) of a little-endian stream (DESIGN.md), via Python ints."""
    number = sum(value << (depth * i) for i, value in enumerate(values))
    return number.to_bytes((len(values) * depth + 7) // 8, "little")


def test_module_payload_hand_built_case():
    # Image of a module of 2×2 chips of 2 pixels; the top chip row arrives rotated by 180°.
    #   0  1 |  2  3
    #   4  5 |  6  7
    #   -----+------
    #   8  9 | 10 11
    #  12 13 | 14 15
    geometry = ModuleGeometry(chips_x=2, chips_y=2, chip_size=2)
    image = np.arange(16, dtype=np.uint16).reshape(4, 4)
    chip_pixels = [[5, 4, 1, 0], [7, 6, 3, 2], [8, 9, 12, 13], [10, 11, 14, 15]]
    payload = module_payload(image, geometry, 12)
    assert payload.dtype == np.uint8
    assert payload.size == geometry.payload_size(12) == 4 * 6
    assert bytes(payload[:6]) == bytes([0x05, 0x40, 0x00, 0x01, 0x00, 0x00])
    assert bytes(payload) == b"".join(bit_stream(chip, 12) for chip in chip_pixels)


@pytest.mark.parametrize("depth", DEPTHS)
def test_module_payload_matches_the_bit_stream_rule_at_every_depth(depth):
    geometry = ModuleGeometry(chips_x=3, chips_y=4, chip_size=3)
    rng = np.random.default_rng(depth)
    image = rng.integers(0, 2**depth, geometry.shape).astype(bitpack.dtype_for_depth(depth))
    expected = b""
    for r in range(geometry.chips_y):
        for c in range(geometry.chips_x):
            tile = image[3 * r : 3 * r + 3, 3 * c : 3 * c + 3]
            if r < 2:
                tile = tile[::-1, ::-1]
            expected += bit_stream([int(v) for v in tile.ravel()], depth)
    assert bytes(module_payload(image, geometry, depth)) == expected


def test_module_payload_refuses_a_value_beyond_the_depth():
    image = np.full(TINY.shape, 64, dtype=np.uint8)
    with pytest.raises(ConfigError, match="does not fit 6 bit"):
        module_payload(image, TINY, 6)


# -- phantom --------------------------------------------------------------------------------


def test_line_integrals_conserve_the_phantom_mass_at_every_angle():
    mass = sum(
        density * 4 / 3 * math.pi * a * b * c for density, a, b, c, *_ in MODIFIED_SHEPP_LOGAN_3D
    )
    shape = (200, 240)
    pixel_area = (2 / min(shape)) ** 2
    for angle in (0.0, 33.0, 90.0, 151.0):
        assert line_integrals(shape, angle).sum() * pixel_area == pytest.approx(mass, rel=2e-3)


def test_line_integral_of_a_sphere_is_its_chord():
    sphere = np.array([[1.5, 0.5, 0.5, 0.5, 0.2, -0.3, 0.1, 40.0, 20.0, 10.0]])
    shape = (201, 201)  # pixel 100 is the axis; the unit ball spans 201 pixels
    radius_px = 100.5
    paths = line_integrals(shape, 0.0, sphere)
    rows, cols = np.mgrid[0:201, 0:201]
    u = (cols - 100) / radius_px - 0.2  # at 0°, detector u runs along x
    v = (100 - rows) / radius_px - 0.1
    expected = 1.5 * 2 * np.sqrt(np.maximum(0.25 - u**2 - v**2, 0))
    np.testing.assert_allclose(paths, expected, atol=1e-5)


def test_phantom_scan_order_keys_and_angles():
    scan = PhantomScan(TINY, 12, n_projections=6, n_darks=2, n_flats=3, angle_range=180.0)
    frames = list(scan)
    assert len(frames) == len(scan) == 11
    assert [f.image_key for f in frames] == [2, 2, 1, 1, 1] + [0] * 6
    assert [f.angle_deg for f in frames] == [0.0] * 5 + [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]
    darks, flats, projections = frames[:2], frames[2:5], frames[5:]
    assert max(f.image.mean() for f in darks) < 10
    assert min(f.image.mean() for f in flats) == pytest.approx(1002, rel=0.05)
    assert all(f.image.mean() < flats[0].image.mean() for f in projections)


@pytest.mark.parametrize("depth", DEPTHS)
def test_phantom_values_fit_every_depth(depth):
    scan = PhantomScan(ModuleGeometry(2, 2, 32), depth, n_projections=2, n_darks=1, n_flats=1,
                       flat_level=5000.0)
    frames = list(scan)
    for frame in frames:
        assert frame.image.dtype == bitpack.dtype_for_depth(depth)
        assert frame.image.shape == (64, 64)
        assert int(frame.image.max()) < 2**depth
    dark, flat, projection = (f.image.astype(float) for f in frames[:3])
    assert dark.mean() < flat.mean()
    assert projection.min() < flat.mean() * 0.8, "the phantom attenuates"
    if depth == 1:
        assert (dark == 0).all() and (flat == 1).all()
    if depth == 6:
        assert flat.mean() == pytest.approx(0.6 * 63, rel=0.05)


def test_phantom_noise_follows_the_seed():
    def first_projection(seed: int) -> np.ndarray:
        return next(iter(PhantomScan(TINY, 12, 1, n_darks=0, n_flats=0, seed=seed))).image

    assert (first_projection(1) == first_projection(1)).all()
    assert (first_projection(1) != first_projection(2)).any()


# -- simulator over TCP --------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("n_modules", (1, 4))
def test_counter_round_trip_is_bit_exact(receiver, n_modules, depth):
    n_frames = COUNTER_PERIOD + 4
    layout = ArrayLayout.square(n_modules, TINY)
    with simulator(receiver, layout=layout, bit_depth=depth, with_crc=depth == 12) as sim:
        conns = receiver.accept(n_modules)
        sim.acquire(n_frames)
        by_module = receive(conns, n_frames)
        assert sim.wait(IO_TIMEOUT_S)
        assert sim.frames_sent == (n_frames,) * n_modules
        assert sim.errors == (None,) * n_modules
    assert sorted(by_module) == list(range(n_modules))
    for module_id, frames in by_module.items():
        assert [h.frame_number for h, _ in frames] == list(range(n_frames))
        for header, payload in frames:
            assert (header.bit_depth, header.chips_x, header.chips_y, header.chip_size) == (
                depth, 2, 2, 16)
            assert bool(header.flags & Flags.CRC) == (depth == 12)
            assert not header.has_tomo
            expected = counter_image(module_id, header.frame_number, TINY, depth)
            assert (assemble(header, payload) == expected).all()
        assert sim.bytes_sent[module_id] == sum(h.frame_size for h, _ in frames)


def test_repeated_acquisitions_restart_frame_numbers(receiver):
    with simulator(receiver, layout=ArrayLayout.square(4, TINY), bit_depth=12) as sim:
        conns = receiver.accept(4)
        for n_frames, depth in ((3, 12), (5, 24), (2, 12)):
            sim.acquire(n_frames, bit_depth=depth)
            by_module = receive(conns, n_frames)
            assert sim.wait(IO_TIMEOUT_S)
            for module_id, frames in by_module.items():
                assert [h.frame_number for h, _ in frames] == list(range(n_frames))
                assert {h.bit_depth for h, _ in frames} == {depth}
                header, payload = frames[-1]
                expected = counter_image(module_id, n_frames - 1, TINY, depth)
                assert (assemble(header, payload) == expected).all()
            assert sim.frames_sent == (n_frames,) * 4
        with pytest.raises(ConfigError):
            sim.acquire(1, bit_depth=7)


def test_paced_frames_arrive_in_order_with_rising_timestamps(receiver):
    n_frames = 12
    with simulator(receiver, layout=ArrayLayout.square(4, TINY), frame_rate_hz=400.0) as sim:
        conns = receiver.accept(4)
        sim.acquire(n_frames)
        by_module = receive(conns, n_frames)
        assert sim.wait(IO_TIMEOUT_S)
    for frames in by_module.values():
        stamps = [h.timestamp_ns for h, _ in frames]
        assert stamps == sorted(stamps)
        assert [h.frame_number for h, _ in frames] == list(range(n_frames))


def test_frame_k_leaves_when_its_exposure_ends_stamped_in_epoch_time(receiver):
    """As a detector: frame k is sent at start + (k+1)/rate, not at the start of its
    exposure; its timestamp is ns since the Unix epoch."""
    n_frames, rate = 3, 10.0
    with simulator(receiver, frame_rate_hz=rate) as sim:
        (conn,) = receiver.accept(1)
        before_ns = time.time_ns()
        sim.acquire(n_frames)
        frames = receive([conn], n_frames)[0]
        assert sim.wait(IO_TIMEOUT_S)
    assert sim.elapsed_s >= n_frames / rate * 0.95
    offsets = [(h.timestamp_ns - before_ns) / 1e9 for h, _ in frames]
    for k, offset in enumerate(offsets):
        assert offset >= (k + 1) / rate * 0.9, offsets


def test_phantom_frames_carry_the_scan(receiver):
    layout = ArrayLayout.square(4, TINY)
    params = PhantomParams(n_darks=2, n_flats=1, seed=5)
    n_frames = 7
    config = dict(layout=layout, pattern="phantom", phantom=params, with_crc=True)
    with simulator(receiver, **config) as sim:
        conns = receiver.accept(4)
        sim.acquire(n_frames)
        by_module = receive(conns, n_frames)
        assert sim.wait(IO_TIMEOUT_S)
    scan = PhantomScan(layout, 12, n_projections=4, n_darks=2, n_flats=1, seed=5)
    for frame_number, (key, angle, image) in enumerate(scan):
        received = np.zeros(layout.shape, dtype=np.uint16)
        for module_id, frames in by_module.items():
            header, payload = frames[frame_number]
            assert header.has_tomo
            assert (header.image_key, header.angle_deg) == (key, angle)
            row, col = layout.module_origin(module_id)
            received[row : row + TINY.height, col : col + TINY.width] = assemble(header, payload)
        assert (received == image).all()
    assert [f.image_key for f in scan] == [ImageKey.DARK] * 2 + [ImageKey.FLAT] + [0] * 4


def test_stop_under_back_pressure_ends_promptly_and_sends_again(receiver):
    # The receiver does not read: 7 MB frames fill the socket buffers and the sender blocks.
    with simulator(receiver, layout=ArrayLayout(FULL), bit_depth=24, period=1) as sim:
        [conn] = receiver.accept(1)
        sim.acquire(1000)
        time.sleep(1.0)
        sim.stop()
        assert not sim.running
        sent_before = sim.frames_sent[0]
        assert sent_before < 1000
        torn = sim.errors[0] is not None  # stopped mid-frame: that link is cut, a new one opens
        sim.acquire(2, bit_depth=6)
        if torn:
            [conn] = receiver.accept(1)
        else:
            receive([conn], sent_before)
        by_module = receive([conn], 2)
        assert sim.wait(IO_TIMEOUT_S)
    assert [h.frame_number for h, _ in by_module[0]] == [0, 1]
    assert (assemble(*by_module[0][1]) == counter_image(0, 1, FULL, 6, period=1)).all()


def test_receiver_going_away_ends_the_module_quietly(receiver, caplog):
    geometry = ModuleGeometry(6, 6, 64)
    with simulator(receiver, layout=ArrayLayout(geometry), bit_depth=24, period=1) as sim:
        [conn] = receiver.accept(1)
        sim.acquire(500)
        read_frame(conn)
        conn.close()
        assert sim.wait(IO_TIMEOUT_S)
    assert sim.frames_sent[0] < 500
    assert "receiver went away" in (sim.errors[0] or "")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert "went away" in warnings[0].getMessage()


def test_connect_times_out_with_the_address():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    sim = Simulator("127.0.0.1", port, SimConfig())
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        sim.connect(timeout=0.2)


def test_bad_configurations_are_refused():
    with pytest.raises(ConfigError, match="pattern"):
        SimConfig(pattern="noise")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="depth"):
        SimConfig(bit_depth=8)
    with pytest.raises(ConfigError, match="ports"):
        Simulator("127.0.0.1", [1, 2], SimConfig(layout=ArrayLayout.square(4)))
    for rate in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="frame rate must be a finite number"):
            SimConfig(frame_rate_hz=rate)
        with pytest.raises(ConfigError, match="frame rate must be a finite number"):
            Simulator("127.0.0.1", 1, SimConfig()).acquire(frame_rate_hz=rate)  # before connecting


# -- command line ---------------------------------------------------------------------------


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sim_main(["--help"])
    assert exit_info.value.code == 0
    assert "--depth" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "5000", "--depth", "7"], "invalid choice: 7"),
        (["--port", "5000", "--chips", "6by6"], "ACROSSxDOWN"),
        (["--port", "5000", "--pattern", "noise"], "invalid choice"),
        (["--port", "5000", "--frames", "-1"], "negative"),
        (["--port", "5000", "--rate", "nan"], "--rate: must be finite and ≥ 0, got nan"),
        (["--port", "5000", "--rate", "inf"], "must be finite"),  # would crash / never pace
        (["--port", "5000", "--rate", "-5"], "must be finite and ≥ 0"),
        (["--port", "5000", "--connect-timeout", "inf"], "--connect-timeout: must be finite"),
    ],
)
def test_cli_bad_arguments_exit_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        sim_main(argv)
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_cli_sends_and_prints_a_summary(receiver, capsys):
    n_frames = 5
    received: list[int] = []

    def drain() -> None:
        conns = receiver.accept(4)
        for frames in receive(conns, n_frames).values():
            received.extend(h.frame_number for h, _ in frames)

    reader = threading.Thread(target=drain)
    reader.start()
    argv = ["--port", str(receiver.port), "--modules", "4", "--chips", "2x2",
            "--chip-size", "16", "--depth", "6", "--frames", str(n_frames), "--crc"]
    assert sim_main(argv) == 0
    reader.join(IO_TIMEOUT_S)
    assert sorted(received) == sorted(list(range(n_frames)) * 4)
    out = capsys.readouterr().out
    assert f"{n_frames} frames x 4 modules" in out and "Gbit/s" in out


@pytest.mark.parametrize("geometry", [ModuleGeometry(2, 2, 16), ModuleGeometry(1, 2, 8),
                                      ModuleGeometry(2, 2, 3)], ids=str)
@pytest.mark.parametrize("depth", [1, 6, 12, 24])
def test_fast_packing_matches_the_reference_payload(geometry, depth):
    from pimega.core.bitpack import dtype_for_depth, module_payload
    from pimega.sim.packing import pack_module

    rng = np.random.default_rng(depth)
    image = rng.integers(0, 1 << depth, geometry.shape).astype(dtype_for_depth(depth))
    np.testing.assert_array_equal(pack_module(image, geometry, depth),
                                  module_payload(image, geometry, depth))
