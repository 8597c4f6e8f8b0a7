"""Dark / flat-field correction and the bad-pixel mask, NumPy or CuPy alike.

No dark and no flat: the raw counts keep their dtype, bad pixels become 0. A dark alone:
float32 ``image − dark``. A flat (with or without a dark): float32
``(image − dark) / (flat − dark)``, 0 where that denominator is ≤ 0. Bad pixels are 0 in
every case. The per-frame work is one or two array passes: what depends only on the
corrections (float32 dark, the denominator with its bad and masked pixels as +inf, the bad
pixels' indices) is computed once per :class:`Corrections` and kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError
from pimega.core.xp import array_namespace

FLOAT = np.dtype(np.float32)


@dataclass(frozen=True, eq=False)
class Corrections:
    """Arrays of the image's shape, each optional; ``bad_pixel_mask`` is True where bad.

    Compared by identity: it holds arrays, and the derived arrays it keeps belong to it.
    """

    dark: Any = None
    flat: Any = None
    bad_pixel_mask: Any = None

    def __post_init__(self) -> None:
        shapes = {tuple(a.shape) for a in (self.dark, self.flat, self.bad_pixel_mask)
                  if a is not None}
        if len(shapes) > 1:
            raise ConfigError(f"dark, flat and bad-pixel mask differ in shape: {sorted(shapes)}")
        if self.bad_pixel_mask is not None and self.bad_pixel_mask.dtype != np.bool_:
            raise ConfigError(f"bad_pixel_mask must be bool, got {self.bad_pixel_mask.dtype}")

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape the corrections apply to; None when there are none."""
        for array in (self.dark, self.flat, self.bad_pixel_mask):
            if array is not None:
                return tuple(array.shape)
        return None

    @property
    def floating(self) -> bool:
        """Whether corrected images are float32 (a dark or a flat is set)."""
        return self.dark is not None or self.flat is not None

    @cached_property
    def dark_float(self) -> Any:
        """The dark as float32 (kept: every frame subtracts it)."""
        return self.dark.astype(FLOAT)

    @cached_property
    def denominator(self) -> Any:
        """``flat − dark`` as float32, +inf where ≤ 0 or bad: dividing by it then gives 0."""
        xp = array_namespace(self.flat)
        denominator = self.flat.astype(FLOAT)
        if self.dark is not None:
            denominator -= self.dark_float
        unusable = denominator <= 0
        if self.bad_pixel_mask is not None:
            unusable |= self.bad_pixel_mask
        denominator[unusable] = xp.inf
        return denominator

    @cached_property
    def _bad_pixels(self) -> tuple[Any, ...]:
        """Index arrays of the bad pixels (few, so zeroing them is cheap)."""
        return array_namespace(self.bad_pixel_mask).nonzero(self.bad_pixel_mask)


def output_dtype(bit_depth: int, corrections: Corrections) -> np.dtype:
    """Dtype of corrected images: float32 with a dark or flat, else the depth's raw dtype."""
    return FLOAT if corrections.floating else dtype_for_depth(bit_depth)


def apply_corrections(image: Any, corrections: Corrections, out: Any = None) -> Any:
    """Correct ``image`` into ``out`` (allocated when None; may be ``image`` for raw output).

    With nothing to correct and no ``out``, ``image`` itself is returned.
    """
    xp = array_namespace(image)
    shape = corrections.shape
    if shape is not None and tuple(image.shape) != shape:
        raise ConfigError(f"image shape {tuple(image.shape)} does not match the corrections' "
                          f"{shape}")
    dtype = FLOAT if corrections.floating else image.dtype
    if out is None:
        if shape is None:
            return image
        out = xp.empty(image.shape, dtype=dtype)
    elif tuple(out.shape) != tuple(image.shape) or out.dtype != dtype:
        raise ConfigError(f"out is {out.dtype} {tuple(out.shape)}, expected {dtype} "
                          f"{tuple(image.shape)}")
    if corrections.dark is not None:
        xp.subtract(image, corrections.dark_float, out=out, dtype=FLOAT)
    elif out is not image:
        out[...] = image
    if corrections.flat is not None:
        xp.divide(out, corrections.denominator, out=out)  # bad pixels divide by +inf
    elif corrections.bad_pixel_mask is not None:
        out[corrections._bad_pixels] = 0
    return out
