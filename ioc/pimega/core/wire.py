"""Wire format v1: a fixed little-endian header, an optional tomography extension, the payload.

Shared by TCP, RDMA and files. Parsing raises :class:`WireError` with the exact reason;
callers count the frame as corrupt and go on.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from .errors import WireError
from .geometry import BIT_DEPTHS, chip_stream_bytes

MAGIC = b"PMGA"
VERSION = 1
FIXED = struct.Struct("<4sHHHBBQQBBHII")
TOMO = struct.Struct("<B3xf")
FIXED_SIZE = FIXED.size  # 40
TOMO_SIZE = FIXED_SIZE + TOMO.size  # 48


class Flags(IntFlag):
    CRC = 1
    TOMO = 2


class ImageKey(IntEnum):
    """NXtomo image_key."""

    PROJECTION = 0
    FLAT = 1
    DARK = 2
    INVALID = 3


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """One frame's header. ``image_key``/``angle`` are set when the tomography extension is."""

    module_id: int
    bit_depth: int
    frame_number: int
    timestamp_ns: int
    chips_x: int
    chips_y: int
    chip_size: int
    payload_size: int
    flags: Flags = Flags(0)  # noqa: RUF009 - an immutable IntFlag value
    crc32: int = 0
    header_size: int = FIXED_SIZE
    image_key: ImageKey = ImageKey.PROJECTION
    angle_deg: float = 0.0

    @property
    def frame_size(self) -> int:
        return self.header_size + self.payload_size

    @property
    def has_tomo(self) -> bool:
        return bool(self.flags & Flags.TOMO)

    def pack(self) -> bytes:
        fixed = FIXED.pack(
            MAGIC, VERSION, self.header_size, self.module_id, self.bit_depth, int(self.flags),
            self.frame_number, self.timestamp_ns, self.chips_x, self.chips_y, self.chip_size,
            self.payload_size, self.crc32,
        )
        if self.has_tomo:
            fixed += TOMO.pack(int(self.image_key), self.angle_deg)
        return fixed.ljust(self.header_size, b"\0")


def make_header(
    *,
    module_id: int,
    bit_depth: int,
    frame_number: int,
    timestamp_ns: int,
    chips_x: int,
    chips_y: int,
    chip_size: int,
    payload: bytes | memoryview | None = None,
    payload_size: int | None = None,
    with_crc: bool = False,
    image_key: ImageKey | None = None,
    angle_deg: float = 0.0,
) -> FrameHeader:
    """Build a header for ``payload``; a CRC needs the payload, the size alone does not."""
    flags = Flags(0)
    crc = 0
    if with_crc:
        if payload is None:
            raise ValueError("a CRC needs the payload")
        flags |= Flags.CRC
        crc = zlib.crc32(payload)
    if image_key is not None:
        flags |= Flags.TOMO
    size = len(payload) if payload is not None else payload_size
    if size is None:
        raise ValueError("give payload or payload_size")
    return FrameHeader(
        module_id=module_id, bit_depth=bit_depth, frame_number=frame_number,
        timestamp_ns=timestamp_ns, chips_x=chips_x, chips_y=chips_y, chip_size=chip_size,
        payload_size=size, flags=flags, crc32=crc,
        header_size=TOMO_SIZE if image_key is not None else FIXED_SIZE,
        image_key=ImageKey(image_key or 0), angle_deg=angle_deg,
    )


def parse_header(buf: bytes | bytearray | memoryview) -> FrameHeader:
    """Parse and validate a header from the first bytes of ``buf`` (at least 40)."""
    if len(buf) < FIXED_SIZE:
        raise WireError(f"truncated header: {len(buf)} of {FIXED_SIZE} bytes")
    (magic, version, header_size, module_id, bit_depth, flags, frame_number, timestamp_ns,
     chips_x, chips_y, chip_size, payload_size, crc32) = FIXED.unpack_from(buf)
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version}, this reader speaks {VERSION}")
    flags = Flags(flags & (Flags.CRC | Flags.TOMO))
    need = TOMO_SIZE if flags & Flags.TOMO else FIXED_SIZE
    if header_size < need:
        raise WireError(f"header_size {header_size} is below the {need} bytes its flags need")
    if bit_depth not in BIT_DEPTHS:
        raise WireError(f"bit depth {bit_depth} is not one of {BIT_DEPTHS}")
    if not (chips_x and chips_y and chip_size):
        raise WireError(f"empty geometry {chips_x}x{chips_y} chips of {chip_size}")
    expected = chips_x * chips_y * chip_stream_bytes(chip_size, bit_depth)
    if payload_size != expected:
        raise WireError(
            f"payload_size {payload_size} does not match {chips_x}x{chips_y} chips of "
            f"{chip_size}² at {bit_depth} bit ({expected} bytes)"
        )
    image_key, angle = ImageKey.PROJECTION, 0.0
    if flags & Flags.TOMO:
        if len(buf) < TOMO_SIZE:
            raise WireError(f"truncated tomography extension: {len(buf)} of {TOMO_SIZE} bytes")
        key, angle = TOMO.unpack_from(buf, FIXED_SIZE)
        if key > ImageKey.INVALID:
            raise WireError(f"image_key {key} is not an NXtomo key (0..3)")
        image_key = ImageKey(key)
    return FrameHeader(
        module_id=module_id, bit_depth=bit_depth, frame_number=frame_number,
        timestamp_ns=timestamp_ns, chips_x=chips_x, chips_y=chips_y, chip_size=chip_size,
        payload_size=payload_size, flags=flags, crc32=crc32, header_size=header_size,
        image_key=image_key, angle_deg=angle,
    )


def check_payload(header: FrameHeader, payload: bytes | bytearray | memoryview) -> None:
    """Raise :class:`WireError` when the payload's length or CRC does not match the header."""
    if len(payload) != header.payload_size:
        raise WireError(f"payload is {len(payload)} bytes, header says {header.payload_size}")
    if header.flags & Flags.CRC:
        crc = zlib.crc32(payload)
        if crc != header.crc32:
            raise WireError(
                f"bad CRC in frame {header.frame_number}: {crc:#010x} != {header.crc32:#010x}"
            )


def parse_frame(frame: bytes | bytearray | memoryview) -> tuple[FrameHeader, memoryview]:
    """Parse a whole frame held in one buffer; returns the header and a view of the payload."""
    header = parse_header(frame)
    if len(frame) != header.frame_size:
        raise WireError(f"frame is {len(frame)} bytes, header says {header.frame_size}")
    payload = memoryview(frame)[header.header_size :]
    check_payload(header, payload)
    return header, payload
