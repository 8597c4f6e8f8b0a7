"""Counter test pattern and the image → wire-payload mapping of the simulated detector.

Counter pattern (bit-exact checks). Pixel (row, col) of module ``m``'s assembled image, in
frame ``n``, holds::

    (COL_STEP·col + ROW_STEP·row + CHIP_STEP·chip + MODULE_STEP·m + FRAME_STEP·(n mod period))
        mod 2**bit_depth

with ``chip = (row // chip_size)·chips_x + col // chip_size`` and ``period`` = 16 by default
(so a sender can pre-pack one cycle of payloads; frame n and n + period are identical). The
steps are 24-bit constants, so at 24 bit the values cover the whole range, chosen (by
exhaustive check) so that at 6, 12 and 24 bit:

- every pixel differs from its four neighbours, across chip boundaries too;
- the chips of a 6×6 (or 2×2) module differ from each other where moved, at chip sizes
  2, 16 and 256, and a chip rotated or transposed in place differs from itself;
- the 64 images of 4 modules × 16 frames of a period all differ (at 6 bit the module step
  is 16 frame steps, so they take all 64 offsets); consecutive frames differ at every pixel.

At 1 bit the pattern is the checkerboard ``(row + col + chip + n) mod 2``: neighbours differ
except across a chip column boundary; each frame inverts the last; modules look alike.
"""

from __future__ import annotations

import numpy as np

from pimega.core.bitpack import dtype_for_depth, module_payload
from pimega.core.geometry import ArrayLayout, ModuleGeometry, check_bit_depth

__all__ = ["COUNTER_PERIOD", "counter_array_image", "counter_image", "module_payload"]

COUNTER_PERIOD = 16
COL_STEP = 0x8FD631
ROW_STEP = 0xE58CDB
CHIP_STEP = 0x8CB1E3
MODULE_STEP = 0xBF3E30
FRAME_STEP = 0x8BECD7


def counter_image(
    module_id: int,
    frame_number: int,
    geometry: ModuleGeometry,
    bit_depth: int,
    period: int = COUNTER_PERIOD,
) -> np.ndarray:
    """The assembled counter image of one module (see the module docstring for the formula)."""
    mask = (1 << check_bit_depth(bit_depth)) - 1
    if period < 1:
        raise ValueError(f"counter period must be at least 1, got {period}")
    s = geometry.chip_size
    rows = np.arange(geometry.height, dtype=np.uint64)
    cols = np.arange(geometry.width, dtype=np.uint64)
    row_terms = ROW_STEP * rows + CHIP_STEP * geometry.chips_x * (rows // s)
    col_terms = COL_STEP * cols + CHIP_STEP * (cols // s)
    offset = MODULE_STEP * module_id + FRAME_STEP * (frame_number % period)
    image = (row_terms[:, None] + (col_terms + offset)[None, :]) & np.uint64(mask)
    return image.astype(dtype_for_depth(bit_depth))


def counter_array_image(
    layout: ArrayLayout, frame_number: int, bit_depth: int, period: int = COUNTER_PERIOD
) -> np.ndarray:
    """The counter image of a whole array: each module's image at its ``module_origin``."""
    image = np.empty(layout.shape, dtype=dtype_for_depth(bit_depth))
    height, width = layout.module.shape
    for module_id in range(layout.n_modules):
        row, col = layout.module_origin(module_id)
        image[row : row + height, col : col + width] = counter_image(
            module_id, frame_number, layout.module, bit_depth, period
        )
    return image
