"""Core: geometry, wire format v1 and bit packing."""

import struct
import zlib

import numpy as np
import pytest

from pimega.core import bitpack, wire
from pimega.core.errors import ConfigError, WireError
from pimega.core.geometry import ArrayLayout, ModuleGeometry


def test_module_and_array_geometry():
    module = ModuleGeometry()
    assert module.shape == (1536, 1536)
    assert module.payload_size(24) == 36 * 256 * 256 * 3
    assert module.payload_size(12) == 36 * 256 * 384
    array = ArrayLayout.square(4, module)
    assert array.shape == (3072, 3072)
    assert array.module_origin(3) == (1536, 1536)
    assert array.module_origin(1) == (0, 1536)
    assert [ModuleGeometry(2, 2, 16).chip_rotated(r) for r in (0, 1)] == [True, False]
    with pytest.raises(ConfigError):
        array.module_origin(4)
    with pytest.raises(ConfigError, match="counter depth 7"):
        module.payload_size(7)


def _header(**over):
    fields = dict(module_id=1, bit_depth=12, frame_number=7, timestamp_ns=123, chips_x=2,
                  chips_y=2, chip_size=16)
    fields.update(over)
    return fields


def test_header_layout_is_the_documented_struct():
    payload = bytes(range(256)) * 6  # 2x2 chips of 16 px at 12 bit = 1536 bytes
    header = wire.make_header(**_header(), payload=payload, with_crc=True)
    raw = header.pack()
    assert len(raw) == 40
    fields = struct.unpack("<4sHHHBBQQBBHII", raw)
    assert fields == (b"PMGA", 1, 40, 1, 12, 1, 7, 123, 2, 2, 16, 1536, zlib.crc32(payload))
    parsed, view = wire.parse_frame(raw + payload)
    assert parsed == header
    assert bytes(view) == payload


def test_tomography_extension_and_longer_headers():
    header = wire.make_header(**_header(), payload_size=1536, image_key=wire.ImageKey.DARK,
                              angle_deg=12.5)
    raw = header.pack()
    assert len(raw) == 48 and raw[40:48] == struct.pack("<B3xf", 2, 12.5)
    parsed = wire.parse_header(raw)
    assert parsed.image_key is wire.ImageKey.DARK and parsed.angle_deg == 12.5
    # a future v1 writer may append bytes this reader does not know
    longer = bytearray(raw) + b"\xff" * 8
    struct.pack_into("<H", longer, 6, 56)
    assert wire.parse_header(longer).header_size == 56


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:39], "truncated header"),
        (lambda b: b"XMGA" + b[4:], "bad magic"),
        (lambda b: b[:4] + struct.pack("<H", 2) + b[6:], "unsupported wire version 2"),
        (lambda b: b[:10] + bytes([7]) + b[11:], "bit depth 7"),
        (lambda b: b[:32] + struct.pack("<I", 1535) + b[36:], "payload_size 1535"),
        (lambda b: b[:6] + struct.pack("<H", 39) + b[8:], "header_size 39"),
    ],
)
def test_bad_headers_name_the_problem(mutate, message):
    raw = mutate(wire.make_header(**_header(), payload_size=1536).pack())
    with pytest.raises(WireError, match=message):
        wire.parse_header(raw)


def test_bad_crc_and_wrong_length_are_refused():
    payload = bytearray(1536)
    frame = bytearray(wire.make_header(**_header(), payload=bytes(payload), with_crc=True).pack())
    frame += payload
    frame[-1] ^= 1
    with pytest.raises(WireError, match="bad CRC"):
        wire.parse_frame(frame)
    with pytest.raises(WireError, match="frame is 1575 bytes"):
        wire.parse_frame(frame[:-1])


@pytest.mark.parametrize("depth", [1, 6, 12, 24])
@pytest.mark.parametrize("n_pixels", [256 * 256, 25, 7])
def test_pack_unpack_round_trip(depth, n_pixels):
    rng = np.random.default_rng(depth)
    pixels = rng.integers(0, 2**depth, size=(3, n_pixels), dtype=np.uint32)
    stream = bitpack.pack(pixels, depth)
    assert stream.shape == (3, (n_pixels * depth + 7) // 8)
    back = bitpack.unpack(stream, depth, n_pixels)
    assert back.dtype == bitpack.dtype_for_depth(depth)
    np.testing.assert_array_equal(back, pixels)


def test_bit_order_matches_the_wire_definition():
    # 12 bit: two pixels in three bytes, pixel 0 in the low 12 bits
    assert bytes(bitpack.pack(np.array([0xABC, 0x123]), 12)) == b"\xbc\x3a\x12"
    # 1 bit: pixel i is bit i of the byte
    assert bytes(bitpack.pack(np.array([1, 0, 0, 0, 0, 0, 0, 1]), 1)) == b"\x81"
    # 6 bit: four pixels in three bytes
    assert bytes(bitpack.pack(np.array([0x3F, 0, 0, 0]), 6)) == b"\x3f\x00\x00"
    assert bytes(bitpack.pack(np.array([0, 0, 0, 0x3F]), 6)) == b"\x00\x00\xfc"
    # 24 bit: three little-endian bytes a pixel
    assert bytes(bitpack.pack(np.array([0x123456]), 24)) == b"\x56\x34\x12"


def test_pack_refuses_values_beyond_the_depth():
    with pytest.raises(ConfigError, match="does not fit 6 bit"):
        bitpack.pack(np.array([64]), 6)
