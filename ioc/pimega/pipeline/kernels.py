"""Fused numba kernels: unpack module payloads and place their chips in the image in one pass.

Each kernel runs ``prange`` over work items, one per pixel row of one chip of one module
(module, chip row, chip column, pixel row: the payload's own order, so reads stream). An item
decodes one row of the chip's bit stream and writes it as one contiguous image row segment; a
rotated chip's stream row ``k`` lands on image row ``r·s + s − 1 − k`` with its columns
reversed, decided once per item, never per pixel.

The fast kernels write each byte group of the stream as one store into a view of the image
(little-endian host, as every numba target is): 3 bytes → one uint32 holding 2 uint16 pixels
(12 bit) or 4 uint8 (6 bit); 1 byte → one uint64 holding 8 uint8 (1 bit); at 24 bit the 3
bytes go byte by byte into the 4 bytes of a uint32 pixel, which LLVM turns into byte
shuffles. A reversed row stores its groups from the end (index ``−1 − g``) with the pixels
inside each word swapped; ``reverse`` is a constant after inlining, so both directions
vectorise. These kernels need whole groups in a chip row (chip size a multiple of 8 / 4 / 2 /
1 for 1 / 6 / 12 / 24 bit, true for the real 256); :func:`assemble_any` takes every other
size pixel by pixel.

Arguments are plain arrays and ints so ``cache=True`` works:

- ``stream``: 1-D uint8 holding every module's payload; module ``m``'s starts at
  ``payload_offsets[m]``.
- ``words``: 1-D view of the C-contiguous (H, W) image as :data:`STORE_DTYPE` (fast kernels);
  ``image_bytes``: its uint8 view (:func:`assemble_any`).
- ``geometry``: (W in pixels, chips_x, chips_y, chip_size).
- ``origins``: (n_modules, 2) int64 image (row, column) of each module's top-left pixel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pimega.core.bitpack import dtype_for_depth
from pimega.core.geometry import BIT_DEPTHS, ArrayLayout, ModuleGeometry

#: Pixels per byte group of the stream (3 bytes; 1 byte at 1 bit).
GROUP_PIXELS = {1: 8, 6: 4, 12: 2, 24: 1}
#: The image view a fast kernel stores into, per depth.
STORE_DTYPE = {1: np.dtype(np.uint64), 6: np.dtype(np.uint32), 12: np.dtype(np.uint32),
              24: np.dtype(np.uint8)}

_kernel = njit(parallel=True, cache=True, nogil=True)  # one options set for every kernel


@njit(inline="always")
def _n_items(origins, geometry):
    _, chips_x, chips_y, chip_size = geometry
    return origins.shape[0] * chips_y * chips_x * chip_size


@njit(inline="always")
def _work_item(item, payload_offsets, origins, geometry, bit_depth):
    """Where work item ``item`` reads and writes.

    Returns (first stream byte of the chip, pixel row k of the chip stream, flat image index
    of the first pixel of the destination row segment, whether the chip is rotated by 180°).
    """
    width, chips_x, chips_y, s = geometry
    per_chip_row = chips_x * s
    per_module = chips_y * per_chip_row
    module = item // per_module
    rest = item - module * per_module
    chip_row = rest // per_chip_row
    rest -= chip_row * per_chip_row
    chip_col = rest // s
    k = rest - chip_col * s
    chip_bytes = (s * s * bit_depth + 7) // 8
    chip_start = payload_offsets[module] + (chip_row * chips_x + chip_col) * chip_bytes
    rotated = chip_row < chips_y // 2
    image_row = origins[module, 0] + chip_row * s + (s - 1 - k if rotated else k)
    image_col = origins[module, 1] + chip_col * s
    return chip_start, k, image_row * width + image_col, rotated


@njit(inline="always")
def _fast_row(row, item, stream, payload_offsets, words, origins, geometry, bit_depth,
              group_pixels, group_words):
    """Decode work item ``item``'s stream row with ``row`` and store it, forward or reversed.

    ``group_pixels``: pixels per stream byte group; ``group_words``: stores of the ``words``
    view per group (4 bytes a 24-bit pixel, else one word).
    """
    chip_start, k, dst_pixel, rotated = _work_item(item, payload_offsets, origins, geometry,
                                                   bit_depth)
    chip_size = geometry[3]
    row_bytes = chip_size * bit_depth // 8
    src = stream[chip_start + k * row_bytes : chip_start + (k + 1) * row_bytes]
    first = dst_pixel // group_pixels * group_words
    dst = words[first : first + chip_size // group_pixels * group_words]
    if rotated:  # two calls with constant ``reverse``: each one vectorises on its own
        row(src, dst, True)
    else:
        row(src, dst, False)


@njit(inline="always")
def _group(src, g):
    """The 3-byte little-endian group ``g`` of a stream row, as an int."""
    b0 = np.uint32(src[3 * g])
    b1 = np.uint32(src[3 * g + 1])
    b2 = np.uint32(src[3 * g + 2])
    return b0 | (b1 << 8) | (b2 << 16)


@njit(inline="always")
def _row_24(src, dst, reverse):
    # byte by byte into a uint8 view of the uint32 image: LLVM makes it a byte shuffle
    for g in range(src.size // 3):
        o = -4 - 4 * g if reverse else 4 * g
        dst[o] = src[3 * g]
        dst[o + 1] = src[3 * g + 1]
        dst[o + 2] = src[3 * g + 2]
        dst[o + 3] = 0


@njit(inline="always")
def _row_12(src, dst, reverse):
    for g in range(dst.size):
        w = _group(src, g)
        lo = w & 0xFFF
        hi = w >> 12
        dst[-1 - g if reverse else g] = (hi | (lo << 16)) if reverse else (lo | (hi << 16))


@njit(inline="always")
def _row_6(src, dst, reverse):
    for g in range(dst.size):
        w = _group(src, g)
        p0 = w & 0x3F
        p1 = (w >> 6) & 0x3F
        p2 = (w >> 12) & 0x3F
        p3 = w >> 18
        word = (p3 | (p2 << 8) | (p1 << 16) | (p0 << 24)) if reverse else (
            p0 | (p1 << 8) | (p2 << 16) | (p3 << 24))
        dst[-1 - g if reverse else g] = word


@njit(inline="always")
def _row_1(src, dst, reverse):
    for g in range(dst.size):
        b = np.int64(src[g])
        if reverse:  # bit i to byte 7 - i
            x = ((b & 0x0F) << 32) | (b >> 4)
            x = ((x & 0x0000000300000003) << 16) | ((x >> 2) & 0x0000000300000003)
            x = ((x & 0x0001000100010001) << 8) | ((x >> 1) & 0x0001000100010001)
        else:  # bit i to byte i
            x = (b | (b << 28)) & 0x0000000F0000000F
            x = (x | (x << 14)) & 0x0003000300030003
            x = (x | (x << 7)) & 0x0101010101010101
        dst[-1 - g if reverse else g] = x


# One kernel per depth, so each compiles (and caches) its own specialised row loops.
@_kernel
def assemble_24(stream, payload_offsets, words, origins, geometry):
    for i in prange(_n_items(origins, geometry)):
        _fast_row(_row_24, np.int64(i), stream, payload_offsets, words, origins, geometry, 24,
                  1, 4)


@_kernel
def assemble_12(stream, payload_offsets, words, origins, geometry):
    for i in prange(_n_items(origins, geometry)):
        _fast_row(_row_12, np.int64(i), stream, payload_offsets, words, origins, geometry, 12,
                  2, 1)


@_kernel
def assemble_6(stream, payload_offsets, words, origins, geometry):
    for i in prange(_n_items(origins, geometry)):
        _fast_row(_row_6, np.int64(i), stream, payload_offsets, words, origins, geometry, 6,
                  4, 1)


@_kernel
def assemble_1(stream, payload_offsets, words, origins, geometry):
    for i in prange(_n_items(origins, geometry)):
        _fast_row(_row_1, np.int64(i), stream, payload_offsets, words, origins, geometry, 1,
                  8, 1)


@_kernel
def assemble_any(stream, payload_offsets, image_bytes, origins, geometry, bit_depth,
                 pixel_bytes):
    """Any chip size and depth, pixel by pixel (rows that start inside a byte group)."""
    s = geometry[3]
    mask = (1 << bit_depth) - 1
    for i in prange(_n_items(origins, geometry)):
        chip_start, k, dst_pixel, rotated = _work_item(np.int64(i), payload_offsets, origins,
                                                       geometry, bit_depth)
        for j in range(s):
            bit = (k * s + j) * bit_depth
            first_byte = chip_start + (bit >> 3)
            value = 0
            for n in range(((bit & 7) + bit_depth + 7) >> 3):
                value |= np.int64(stream[first_byte + n]) << (8 * n)
            value = (value >> (bit & 7)) & mask
            o = (dst_pixel + (s - 1 - j if rotated else j)) * pixel_bytes
            for n in range(pixel_bytes):
                image_bytes[o + n] = (value >> (8 * n)) & 0xFF


FAST_KERNELS = {24: assemble_24, 12: assemble_12, 6: assemble_6, 1: assemble_1}


def run_assemble(stream: np.ndarray, payload_offsets: np.ndarray, image: np.ndarray,
                 origins: np.ndarray, layout: ArrayLayout, bit_depth: int) -> None:
    """Run the right kernel: the fast one for ``bit_depth`` when chip rows hold whole groups.

    ``image`` is the C-contiguous (H, W) output of :func:`dtype_for_depth`; the other arrays
    are as in the module docstring.
    """
    module = layout.module
    flat = image.reshape(-1)
    sizes = (layout.width, module.chips_x, module.chips_y, module.chip_size)
    geometry = tuple(int(n) for n in sizes)  # plain ints: one numba signature
    if module.chip_size % GROUP_PIXELS[bit_depth] == 0:
        words = flat.view(STORE_DTYPE[bit_depth])
        FAST_KERNELS[bit_depth](stream, payload_offsets, words, origins, geometry)
    else:
        assemble_any(stream, payload_offsets, flat.view(np.uint8), origins, geometry, bit_depth,
                     image.itemsize)


def warm_up() -> None:
    """Compile (or load from the cache) every kernel on a tiny geometry, before the first frame.

    For writeable payloads, as frame rings hold; read-only ones (``np.frombuffer`` of
    ``bytes``) are a separate numba specialisation, compiled (then cached) on first use.
    """
    for chip_size in (8, 3):  # 8 takes every fast kernel, 3 the pixel-by-pixel one
        layout = ArrayLayout(ModuleGeometry(1, 2, chip_size))
        origins = np.zeros((1, 2), dtype=np.int64)
        offsets = np.zeros(1, dtype=np.int64)
        for depth in BIT_DEPTHS:
            stream = np.zeros(layout.module.payload_size(depth), dtype=np.uint8)
            image = np.empty(layout.shape, dtype=dtype_for_depth(depth))
            run_assemble(stream, offsets, image, origins, layout, depth)
