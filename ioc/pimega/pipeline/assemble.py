"""Decode module payloads (wire format v1) and assemble them into the detector image.

Input of one frame: ``payloads``, uint8 ``(n_modules, payload_size)``, module ``m`` in row
``m``. Each payload holds the module's chips in chip-major order, each chip a little-endian
bit stream; chips of the top half of the chip rows arrive rotated by 180°.

:func:`assemble_reference` is the plain multi-pass version (any ``xp``) the fast path is tested
against; :func:`decode_assemble` is what the pipeline calls: one fused numba pass on the CPU.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from pimega.core import bitpack
from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout, check_bit_depth
from pimega.core.xp import array_namespace

from . import kernels


def check_payloads(payloads: Any, layout: ArrayLayout, bit_depth: int) -> None:
    """Raise :class:`ConfigError` unless ``payloads`` is uint8 ``(n_modules, payload_size)``."""
    expected = (layout.n_modules, layout.module.payload_size(check_bit_depth(bit_depth)))
    if payloads.dtype != np.uint8:
        raise ConfigError(f"payloads must be uint8, got {payloads.dtype}")
    if tuple(payloads.shape) != expected:
        raise ConfigError(
            f"payloads have shape {tuple(payloads.shape)}, expected {expected}: "
            f"{layout.n_modules} module(s) of {layout.module.chips_x}x{layout.module.chips_y} "
            f"chips of {layout.module.chip_size} px at {bit_depth} bit"
        )


def assemble_reference(payloads: Any, layout: ArrayLayout, bit_depth: int) -> Any:
    """Decode and assemble one frame step by step (reference code, NumPy or CuPy)."""
    check_payloads(payloads, layout, bit_depth)
    xp = array_namespace(payloads)
    module = layout.module
    s = module.chip_size
    n_modules = layout.n_modules
    streams = payloads.reshape(n_modules, module.n_chips, module.chip_bytes(bit_depth))
    pixels = bitpack.unpack(streams, bit_depth, s * s)
    # chip-major order, each chip's pixel rows in order: (module, chip row, chip col, y, x)
    chips = pixels.reshape(n_modules, module.chips_y, module.chips_x, s, s)
    # the top half of the chip rows arrives rotated by 180°: reverse its rows and columns
    top = module.chips_y // 2
    chips = xp.concatenate([chips[:, :top, :, ::-1, ::-1], chips[:, top:]], axis=1)
    # chip (r, c) covers module rows r·s … r·s+s−1 and columns c·s … c·s+s−1
    modules = chips.transpose(0, 1, 3, 2, 4).reshape(n_modules, module.height, module.width)
    image = xp.empty(layout.shape, dtype=bitpack.dtype_for_depth(bit_depth))
    for m in range(n_modules):
        y, x = layout.module_origin(m)
        image[y : y + module.height, x : x + module.width] = modules[m]
    return image


def decode_assemble(payloads: Any, layout: ArrayLayout, bit_depth: int, out: Any = None) -> Any:
    """Decode and assemble one frame into ``out`` (allocated when None) and return it.

    NumPy input runs the fused numba kernel of :mod:`.kernels`, writing straight into ``out``,
    which must then be a C-contiguous ``layout.shape`` array of the depth's raw dtype. Rows of
    ``payloads`` may be strided (slots of a frame ring with their headers), not the bytes in
    them. Other input (CuPy) takes :func:`assemble_reference` until the GPU kernel exists.
    """
    check_payloads(payloads, layout, bit_depth)
    xp = array_namespace(payloads)
    dtype = bitpack.dtype_for_depth(bit_depth)
    if out is None:
        out = xp.empty(layout.shape, dtype=dtype)
    elif tuple(out.shape) != layout.shape or out.dtype != dtype:
        raise ConfigError(
            f"out is {out.dtype} {tuple(out.shape)}, expected {dtype} {layout.shape} "
            f"for {bit_depth}-bit frames"
        )
    if xp is not np:
        out[...] = assemble_reference(payloads, layout, bit_depth)
        return out
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ConfigError("out must be a writeable C-contiguous array")
    stream, offsets = _as_stream(payloads)
    kernels.run_assemble(stream, offsets, out, _origins(layout), layout, bit_depth)
    return out


def _as_stream(payloads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One 1-D byte view spanning every payload, and where each payload starts in it."""
    n_modules, payload_size = payloads.shape
    row_stride, byte_stride = payloads.strides
    if payloads.flags.c_contiguous:
        row_stride = payload_size
    elif byte_stride != 1 or row_stride < payload_size:
        payloads = np.ascontiguousarray(payloads)
        row_stride = payload_size
    span = (n_modules - 1) * row_stride + payload_size
    stream = np.lib.stride_tricks.as_strided(payloads, shape=(span,), strides=(1,))
    return stream, np.arange(n_modules, dtype=np.int64) * row_stride


@lru_cache(maxsize=16)
def _origins(layout: ArrayLayout) -> np.ndarray:
    """(n_modules, 2) int64 image (row, column) of each module's top-left pixel."""
    return np.array([layout.module_origin(m) for m in range(layout.n_modules)], dtype=np.int64)
