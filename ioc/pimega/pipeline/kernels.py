"""Fused numba kernels: unpack module payloads and place their chips in the image in one pass.

12 and 24 bit, chips of at least one block (32 / 16 pixels): :func:`assemble_blocks`
-------------------------------------------------------------------------------------
The image is written in 64-byte blocks, one cache line: 32 pixels of 12 bit or 16 of 24 bit,
decoded from the 48 bytes that carry them by one byte shuffle (plus a shift and a mask),
written as LLVM vector code from small intrinsics (``vpermb`` + ``vpsrlvw`` on AVX-512, a few
``pshufb`` elsewhere). A rotated chip's block takes the mirrored shuffle, so reversing a row
costs nothing. Work items are runs of up to :data:`ROWS_PER_ITEM` pixel rows of one chip row
band of one module, taken in stream order; each row goes out chip by chip as one image row
segment, while the next stream row of every chip is prefetched (six chips' streams at once
are more than the hardware prefetcher follows).

With ``streaming`` (the default of :func:`run_assemble`), every whole cache line of the item
is written with a non-temporal store: the image goes to memory without first being read into
the cache (a plain store reads each line before writing it, 1.5× the traffic of the write at
12 bit). A line that starts in one chip and ends in the next (or, when the module spans the
image's width, in the next image row) is put together in a small scratch buffer and streamed
from there. Only the two partial lines at the ends of an item's run (shared with whatever
lies beside it) take plain scalar stores, so no line ever gets both kinds of store; each item
ends with a store fence, so the image is complete when the kernel returns. A row whose start
is not 4-byte aligned within its line, and ``streaming=False``, take plain (unaligned)
64-byte stores instead.

1 and 6 bit, and smaller chips: ``assemble_1/6/12/24``
------------------------------------------------------
Each kernel runs ``prange`` over work items, one per pixel row of one chip of one module
(module, chip row, chip column, pixel row: the payload's own order, so reads stream). An item
decodes one row of the chip's bit stream and writes it as one contiguous image row segment; a
rotated chip's stream row ``k`` lands on image row ``r·s + s − 1 − k`` with its columns
reversed, decided once per item, never per pixel.

These kernels write each byte group of the stream as one store into a view of the image
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
- ``image``: the C-contiguous (H, W) image flattened, in its own dtype
  (:func:`assemble_blocks`); ``words``: a 1-D view of it as :data:`STORE_DTYPE` (the group
  kernels); ``image_bytes``: its uint8 view (:func:`assemble_any`).
- ``geometry``: (W in pixels, chips_x, chips_y, chip_size).
- ``origins``: (n_modules, 2) int64 image (row, column) of each module's top-left pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic as _numba_intrinsic

from pimega.core.bitpack import dtype_for_depth
from pimega.core.geometry import BIT_DEPTHS, ArrayLayout, ModuleGeometry


def intrinsic(func: Callable[..., Any]) -> Any:
    """numba's ``intrinsic``, typed as what it makes: a function jitted code calls without
    the typing context (pyright reads the undecorated signature otherwise)."""
    return _numba_intrinsic(func)


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


# --- 12 and 24 bit: 64-byte blocks, streamed to memory -----------------------------------

#: Bytes of an image block: one cache line. It holds :data:`BLOCK_PIXELS` pixels, decoded from
#: 48 bytes of the stream.
LINE = 64
BLOCK_PIXELS = {12: 32, 24: 16}
#: Pixel rows of one chip row band per work item of :func:`assemble_blocks`: 192 items a
#: 256-pixel module, to share among many cores; each adds two partial lines at most.
ROWS_PER_ITEM = 8

_I8, _I32 = ir.IntType(8), ir.IntType(32)


def _block_shuffle(itemsize: int, reverse: bool) -> tuple[list[int], list[int] | None]:
    """Byte shuffle (indices into the 48 stream bytes) and per-lane right shifts of a block.

    12 bit (uint16 lanes): pixel ``p`` is bits 12·p… of the bytes, so its lane takes bytes
    ``3·(p//2) + p%2`` and the next, shifted right by 0 or 4 and masked to 12 bits. 24 bit
    (uint32 lanes): bytes ``3p … 3p+2`` and one spare byte, masked to 24 bits. ``reverse``
    fills the lanes last pixel first.
    """
    n = LINE // itemsize
    order = range(n - 1, -1, -1) if reverse else range(n)
    if itemsize == 2:
        index = [b for p in order for b in (3 * (p // 2) + p % 2, 3 * (p // 2) + p % 2 + 1)]
        return index, [4 * (p % 2) for p in order]
    return [b for p in order for b in (3 * p, 3 * p + 1, 3 * p + 2, 3 * p + 2)], None


def _is_stream(t: types.Type) -> bool:
    return (isinstance(t, types.Array) and t.dtype == types.uint8 and t.ndim == 1
            and t.layout == "C")


def _is_image(t: types.Type) -> bool:
    return (isinstance(t, types.Array) and t.dtype in (types.uint16, types.uint32)
            and t.ndim == 1 and t.layout == "C" and t.mutable)


def _element_pointer(context, builder, array_type, array, index, pointee):
    data = context.make_array(array_type)(context, builder, value=array).data
    return builder.bitcast(builder.gep(data, [index]), pointee.as_pointer())


def _decode_block(context, builder, stream_type, stream, at, itemsize, reverse):
    """The block decoded from the 48 stream bytes at ``stream[at]``, as an LLVM vector."""
    v32 = ir.VectorType(_I8, 32)
    # bytes 0-31 and 16-47: two whole loads inside the 48 bytes, no partial register
    low = builder.load(_element_pointer(context, builder, stream_type, stream, at, v32), align=1)
    at16 = builder.add(at, ir.Constant(at.type, 16))
    high = builder.load(_element_pointer(context, builder, stream_type, stream, at16, v32),
                        align=1)
    index, shifts = _block_shuffle(itemsize, reverse)
    index = [i if i < 32 else i + 16 for i in index]  # byte i ≥ 32 is byte i − 16 of ``high``
    block = builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(_I32, LINE), index))
    lanes = ir.VectorType(ir.IntType(8 * itemsize), LINE // itemsize)
    block = builder.bitcast(block, lanes)
    if shifts is not None:
        block = builder.lshr(block, ir.Constant(lanes, shifts))
    mask = (1 << (6 * itemsize)) - 1  # 12 bit in 2 bytes, 24 in 4
    return builder.and_(block, ir.Constant(lanes, [mask] * lanes.count))


def _streaming_store(builder, value, pointer):
    store = builder.store(value, pointer, align=LINE)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))


def _block_intrinsic(reverse: bool, streaming: bool):
    """``f(stream, at, image, to)``: decode the block at ``stream[at]`` into ``image[to:]``.

    ``streaming``: a non-temporal store, ``image[to]`` must start a cache line.
    """

    @intrinsic
    def block(typingctx, stream, at, image, to):
        if not (_is_stream(stream) and _is_image(image) and isinstance(at, types.Integer)
                and isinstance(to, types.Integer)):
            return None
        itemsize = image.dtype.bitwidth // 8

        def codegen(context, builder, signature, args):
            stream_value, at_value, image_value, to_value = args
            at_value = context.cast(builder, at_value, signature.args[1], types.intp)
            to_value = context.cast(builder, to_value, signature.args[3], types.intp)
            value = _decode_block(context, builder, signature.args[0], stream_value, at_value,
                                  itemsize, reverse)
            pointer = _element_pointer(context, builder, signature.args[2], image_value,
                                       to_value, value.type)
            if streaming:
                _streaming_store(builder, value, pointer)
            else:
                builder.store(value, pointer, align=itemsize)
            return context.get_dummy_value()

        return types.void(stream, at, image, to), codegen

    return block


_forward_block = _block_intrinsic(False, False)
_reverse_block = _block_intrinsic(True, False)
_forward_block_streamed = _block_intrinsic(False, True)
_reverse_block_streamed = _block_intrinsic(True, True)


@intrinsic
def _stream_line(typingctx, scratch, at, image, to):
    """Copy the 64 bytes at ``scratch[at]`` to the cache line ``image[to]`` (non-temporal)."""
    if not (_is_image(scratch) and _is_image(image) and scratch.dtype == image.dtype):
        return None

    def codegen(context, builder, signature, args):
        scratch_value, at_value, image_value, to_value = args
        at_value = context.cast(builder, at_value, signature.args[1], types.intp)
        to_value = context.cast(builder, to_value, signature.args[3], types.intp)
        vector = ir.VectorType(_I8, LINE)
        line = builder.load(_element_pointer(context, builder, signature.args[0], scratch_value,
                                             at_value, vector), align=1)
        _streaming_store(builder, line, _element_pointer(context, builder, signature.args[2],
                                                         image_value, to_value, vector))
        return context.get_dummy_value()

    return types.void(scratch, at, image, to), codegen


@intrinsic
def _store_fence(typingctx):
    """Order this thread's non-temporal stores before its later stores (``sfence`` on x86)."""

    def codegen(context, builder, signature, args):
        if builder.module.triple.startswith(("x86_64", "i386", "i686")):
            sfence = builder.module.declare_intrinsic(
                "llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), []))
            builder.call(sfence, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _prefetch(typingctx, stream, at):
    """Hint that ``stream[at]`` is read soon (``prefetcht0``; never faults)."""
    if not (_is_stream(stream) and isinstance(at, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        at_value = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = _element_pointer(context, builder, signature.args[0], args[0], at_value, _I8)
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch.p0", fnty=ir.FunctionType(ir.VoidType(), [pointer.type] + [_I32] * 3))
        # read, keep in every cache level, data
        builder.call(prefetch, [pointer, ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                                ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(stream, at), codegen


@njit(inline="always")
def _stream_bytes(pixels, itemsize):
    """Stream bytes of ``pixels`` pixels (an even number at 12 bit): 3/2 or 3 a pixel."""
    return pixels * 3 * itemsize // 4


@njit(inline="always")
def _block(stream, src, d, s, reverse, out, to):
    """Decode the block landing on pixels [d, d + n) of the chip row segment whose stream row
    starts at ``stream[src]`` (``s`` pixels, ``reverse`` when the chip is rotated) into
    ``out[to:]``."""
    n = LINE // out.itemsize
    if reverse:
        _reverse_block(stream, src + _stream_bytes(s - n - d, out.itemsize), out, to)
    else:
        _forward_block(stream, src + _stream_bytes(d, out.itemsize), out, to)


@njit(inline="always")
def _block_streamed(stream, src, d, s, reverse, image, to):
    """:func:`_block` with a non-temporal store: ``image[to]`` must start a cache line."""
    n = LINE // image.itemsize
    if reverse:
        _reverse_block_streamed(stream, src + _stream_bytes(s - n - d, image.itemsize), image,
                                to)
    else:
        _forward_block_streamed(stream, src + _stream_bytes(d, image.itemsize), image, to)


@njit(inline="always")
def _partial_line(stream, src, d, s, reverse, image, to, first, last, scratch):
    """Pixels [first, last) of the block landing on pixels [d, d + n) of a segment, to
    ``image[to + first : to + last]`` with plain scalar stores (a line shared with a
    neighbour)."""
    _block(stream, src, d, s, reverse, scratch, 0)
    for j in range(first, last):
        image[to + j] = scratch[j]


@njit(inline="always")
def _row_plain(stream, src, chip_bytes, image, dst, chips_x, s, reverse):
    """One image row of a band, chip by chip, with plain 64-byte stores (the last block of a
    chip overlaps the one before it when ``n`` does not divide ``s``)."""
    n = LINE // image.itemsize
    for c in range(chips_x):
        for d in range(0, s - n + 1, n):
            _block(stream, src + c * chip_bytes, d, s, reverse, image, dst + c * s + d)
        if s % n:
            _block(stream, src + c * chip_bytes, s - n, s, reverse, image, dst + c * s + s - n)


@njit(inline="always")
def _row_streamed(stream, src, next_src, chip_bytes, image, dst, chips_x, s, reverse, lead,
                  joined_before, joined_after, scratch):
    """One image row of a band, every whole cache line streamed.

    ``lead``: pixels from ``dst`` to the first line boundary. ``joined_before``: the line
    holding the row's first pixels was streamed with the row before (it belongs to that row);
    ``joined_after``: the row's last line goes on into the next image row, whose stream row
    starts at ``stream[next_src]``. Each line is written by the segment it starts in.
    """
    n = LINE // image.itemsize
    if lead > 0 and not joined_before:
        _partial_line(stream, src, 0, s, reverse, image, dst, 0, lead, scratch)
    pos = lead  # row pixel where the next line starts
    for c in range(chips_x):
        chip_src = src + c * chip_bytes
        end = (c + 1) * s
        while pos + n <= end:
            _block_streamed(stream, chip_src, pos - c * s, s, reverse, image, dst + pos)
            pos += n
        if pos < end:  # a line over the end of this chip
            left = end - pos
            if c + 1 < chips_x or joined_after:
                after = chip_src + chip_bytes if c + 1 < chips_x else next_src
                _block(stream, chip_src, s - n, s, reverse, scratch, 0)
                _block(stream, after, 0, s, reverse, scratch, n)
                _stream_line(scratch, n - left, image, dst + pos)
                pos += n
            else:
                _partial_line(stream, chip_src, s - n, s, reverse, image, dst + pos + left - n,
                              n - left, n, scratch)


@_kernel
def assemble_blocks(stream, payload_offsets, image, origins, geometry, streaming):
    """12 bit into a uint16 ``image``, 24 bit into uint32, in 64-byte blocks (module docstring).

    Needs whole byte groups in a chip row and at least one block: an even chip size of 32 or
    more at 12 bit, 16 or more at 24 bit.
    """
    width, chips_x, chips_y, s = geometry
    itemsize = image.itemsize
    row_bytes = _stream_bytes(s, itemsize)
    chip_bytes = s * row_bytes
    runs = (s + ROWS_PER_ITEM - 1) // ROWS_PER_ITEM
    contiguous = width == chips_x * s  # a module row runs on into the next image row
    base = np.int64(image.ctypes.data & np.uint64(LINE - 1))
    for item in prange(origins.shape[0] * chips_y * runs):
        module = item // (chips_y * runs)
        chip_row = item // runs - module * chips_y
        k_first = (item % runs) * ROWS_PER_ITEM
        k_end = min(s, k_first + ROWS_PER_ITEM)
        rotated = chip_row < chips_y // 2
        band_src = payload_offsets[module] + chip_row * chips_x * chip_bytes
        band_dst = (origins[module, 0] + chip_row * s) * width + origins[module, 1]
        # the item's image rows within the band are [y_first, y_end)
        y_first = s - k_end if rotated else k_first
        y_end = s - k_first if rotated else k_end
        scratch = np.empty(2 * LINE // itemsize, image.dtype)
        for k in range(k_first, k_end):  # stream order
            y = s - 1 - k if rotated else k
            src = band_src + k * row_bytes
            if k + 1 < s:  # the next stream row of every chip: six streams at once are more
                for c in range(chips_x):  # than the hardware prefetcher keeps up with
                    for b in range(0, row_bytes + LINE - 1, LINE):
                        _prefetch(stream, src + row_bytes + c * chip_bytes + b)
            dst = band_dst + y * width
            gap = (-(base + dst * itemsize)) & (LINE - 1)  # bytes to the next line boundary
            if streaming and gap % 4 == 0:  # a block may start there (a whole 12-bit pair)
                # the stream row of image row y + 1: k − 1 in a rotated band
                next_src = src - row_bytes if rotated else src + row_bytes
                joined_before = contiguous and y > y_first
                joined_after = contiguous and y + 1 < y_end
                _row_streamed(stream, src, next_src, chip_bytes, image, dst, chips_x, s,
                              rotated, gap // itemsize, joined_before, joined_after, scratch)
            else:
                _row_plain(stream, src, chip_bytes, image, dst, chips_x, s, rotated)
        if streaming:
            _store_fence()


FAST_KERNELS = {24: assemble_24, 12: assemble_12, 6: assemble_6, 1: assemble_1}


def uses_blocks(chip_size: int, bit_depth: int) -> bool:
    """Whether :func:`run_assemble` takes :func:`assemble_blocks` for this chip size and depth."""
    return (bit_depth in BLOCK_PIXELS and chip_size % GROUP_PIXELS[bit_depth] == 0
            and chip_size >= BLOCK_PIXELS[bit_depth])


def run_assemble(stream: np.ndarray, payload_offsets: np.ndarray, image: np.ndarray,
                 origins: np.ndarray, layout: ArrayLayout, bit_depth: int,
                 streaming: bool = True) -> None:
    """Run the right kernel: the block one at 12 and 24 bit (:func:`uses_blocks`), else the
    group one for ``bit_depth`` when chip rows hold whole groups, else the pixel one.

    ``image`` is the C-contiguous (H, W) output of :func:`dtype_for_depth`; the other arrays
    are as in the module docstring. ``streaming``: write the image's whole cache lines with
    non-temporal stores, past the cache (fastest for a frame bigger than the cache that the
    next stage reads later; False keeps a small image that is read at once in the cache).
    """
    module = layout.module
    flat = image.reshape(-1)
    sizes = (layout.width, module.chips_x, module.chips_y, module.chip_size)
    geometry = tuple(int(n) for n in sizes)  # plain ints: one numba signature
    if uses_blocks(module.chip_size, bit_depth):
        assemble_blocks(stream, payload_offsets, flat, origins, geometry, bool(streaming))
    elif module.chip_size % GROUP_PIXELS[bit_depth] == 0:
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
    # 32 takes the block kernel (12, 24 bit), 8 every group kernel, 3 the pixel-by-pixel one
    for chip_size in (32, 8, 3):
        layout = ArrayLayout(ModuleGeometry(1, 2, chip_size))
        origins = np.zeros((1, 2), dtype=np.int64)
        offsets = np.zeros(1, dtype=np.int64)
        for depth in BIT_DEPTHS:
            stream = np.zeros(layout.module.payload_size(depth), dtype=np.uint8)
            image = np.empty(layout.shape, dtype=dtype_for_depth(depth))
            run_assemble(stream, offsets, image, origins, layout, depth)
