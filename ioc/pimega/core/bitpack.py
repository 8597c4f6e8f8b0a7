"""Pack and unpack Medipix counter streams of 1, 6, 12 and 24 bit, written once against ``xp``.

Pixel ``i`` of a chip occupies bits ``[d·i, d·i + d)`` of the chip's little-endian bit stream.
Every supported depth divides 24, so three bytes always hold a whole number of pixels
(24 / d): both directions work on 3-byte little-endian words, padding a chip's stream to a
multiple of 3 bytes where its length is not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError
from .geometry import ModuleGeometry, check_bit_depth, chip_stream_bytes
from .xp import array_namespace

WORD_BYTES = 3


def dtype_for_depth(bit_depth: int) -> np.dtype:
    """Raw-count dtype of the stored image: uint8 for 1/6 bit, uint16 for 12, uint32 for 24."""
    return np.dtype({1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}[
        check_bit_depth(bit_depth)
    ])


def _words(n_pixels: int, bit_depth: int) -> int:
    per_word = 24 // bit_depth
    return -(-n_pixels // per_word)


def unpack(stream: Any, bit_depth: int, n_pixels: int) -> Any:
    """Unpack ``(..., n_bytes)`` uint8 streams into ``(..., n_pixels)`` counts (reference code)."""
    xp = array_namespace(stream)
    n_bytes = stream.shape[-1]
    if n_bytes != (n_pixels * check_bit_depth(bit_depth) + 7) // 8:
        raise ConfigError(f"{n_bytes} bytes cannot hold {n_pixels} pixels of {bit_depth} bit")
    n_words = _words(n_pixels, bit_depth)
    padded = n_words * WORD_BYTES
    if padded != n_bytes:
        pad = [(0, 0)] * (stream.ndim - 1) + [(0, padded - n_bytes)]
        stream = xp.pad(stream, pad)
    b = stream.reshape(*stream.shape[:-1], n_words, WORD_BYTES).astype(xp.uint32)
    words = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    per_word = 24 // bit_depth
    shifts = xp.arange(per_word, dtype=xp.uint32) * bit_depth
    mask = xp.uint32((1 << bit_depth) - 1)
    pixels = (words[..., None] >> shifts) & mask
    pixels = pixels.reshape(*stream.shape[:-1], n_words * per_word)[..., :n_pixels]
    return pixels.astype(dtype_for_depth(bit_depth))


def pack(pixels: Any, bit_depth: int) -> Any:
    """Pack ``(..., n_pixels)`` counts into ``(..., n_bytes)`` uint8 streams.

    Refuses a value that does not fit ``bit_depth``: a sender must never emit one.
    """
    xp = array_namespace(pixels)
    check_bit_depth(bit_depth)
    if pixels.size and int(pixels.max()) >> bit_depth:
        raise ConfigError(f"pixel value {int(pixels.max())} does not fit {bit_depth} bit")
    n_pixels = pixels.shape[-1]
    per_word = 24 // bit_depth
    n_words = _words(n_pixels, bit_depth)
    lead = pixels.shape[:-1]
    padded = xp.zeros((*lead, n_words * per_word), dtype=xp.uint32)
    padded[..., :n_pixels] = pixels
    shifts = xp.arange(per_word, dtype=xp.uint32) * bit_depth
    words = (padded.reshape(*lead, n_words, per_word) << shifts).sum(axis=-1, dtype=xp.uint32)
    out = xp.empty((*lead, n_words, WORD_BYTES), dtype=xp.uint8)
    for k in range(WORD_BYTES):
        out[..., k] = (words >> (8 * k)) & 0xFF
    n_bytes = (n_pixels * bit_depth + 7) // 8
    return out.reshape(*lead, n_words * WORD_BYTES)[..., :n_bytes]


def chip_streams(payload: Any, n_chips: int, chip_size: int, bit_depth: int) -> Any:
    """View a module payload as ``(n_chips, chip_bytes)`` uint8 (no copy)."""
    return payload.reshape(n_chips, chip_stream_bytes(chip_size, bit_depth))


def module_payload(image: np.ndarray, geometry: ModuleGeometry, bit_depth: int) -> np.ndarray:
    """Wire payload (uint8, ``payload_size``) of one module's assembled image.

    Chips go in chip-major order, each chip's pixel rows in order; chips of the top half
    (``r < chips_y // 2``) are sent rotated by 180°, as the hardware mounts them. Raises
    :class:`~pimega.core.errors.ConfigError` for a value that does not fit ``bit_depth``.
    """
    if image.shape != geometry.shape:
        raise ValueError(f"image shape {image.shape} is not the module's {geometry.shape}")
    s = geometry.chip_size
    chips = image.reshape(geometry.chips_y, s, geometry.chips_x, s).swapaxes(1, 2)
    top = geometry.chips_y // 2
    chips = np.concatenate([chips[:top, :, ::-1, ::-1], chips[top:]])
    streams = pack(chips.reshape(geometry.n_chips, s * s), bit_depth)
    return np.ascontiguousarray(streams).reshape(-1)
