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


# --- NDPluginProcess (Proc1:) -----------------------------------------------------------

@dataclass(frozen=True)
class FilterCoefficients:
    """ADCore's recursive-filter coefficients: output ``OOffset + OScale·((OC1 + OC2/N)·F +
    (OC3 + OC4/N)·I)``, filter ``FOffset + FScale·((FC1 + FC2/N)·F + (FC3 + FC4/N)·I)``,
    reset ``ROffset + RC1·F + RC2·I`` (I the image, F the filter, N the frames filtered)."""

    oc: tuple[float, float, float, float] = (1.0, -1.0, 0.0, 1.0)
    fc: tuple[float, float, float, float] = (1.0, -1.0, 0.0, 1.0)
    rc: tuple[float, float] = (0.0, 1.0)
    o_offset: float = 0.0
    o_scale: float = 1.0
    f_offset: float = 0.0
    f_scale: float = 1.0
    r_offset: float = 0.0


def filter_coefficients(filter_type: str, num_filter: int) -> FilterCoefficients:
    """The coefficients ADCore's FilterType sequence records write for ``filter_type``."""
    recip = 1.0 / max(num_filter, 1)
    table = {
        "RecursiveAve": ((1, -1, 0, 1), (1, -1, 0, 1), (0, 1)),
        "Average": ((1, 0, recip, 0), (1, 0, recip, 0), (0, 0)),
        "Sum": ((1, 0, 1, 0), (1, 0, 1, 0), (0, 0)),
        "Difference": ((-1, 0, 1, 0), (0, 0, 1, 0), (0, 1)),
        "RecursiveAveDiff": ((-1, 0, 1, 0), (1, -1, 0, 1), (0, 1)),
        "CopyToFilter": ((0, 0, 1, 0), (0, 0, 1, 0), (0, 1)),
    }
    if filter_type not in table:
        raise ConfigError(f"filter type {filter_type!r} is not one of {tuple(table)}")
    oc, fc, rc = table[filter_type]
    return FilterCoefficients(oc=tuple(map(float, oc)), fc=tuple(map(float, fc)),  # type: ignore[arg-type]
                              rc=tuple(map(float, rc)))  # type: ignore[arg-type]


class RecursiveFilter:
    """ADCore's recursive filter state (float64, kept across frames and acquisitions until
    reset): ``num_filtered`` frames went in since the last reset."""

    def __init__(self) -> None:
        self.state: np.ndarray | None = None
        self.num_filtered = 0
        self.reset_pending = False

    def reset(self) -> None:
        """Reset at the next frame (ADCore's ResetFilter)."""
        self.reset_pending = True

    def apply(self, data: np.ndarray, num_filter: int, auto_reset: bool,
              c: FilterCoefficients) -> None:
        """Filter ``data`` (float64) in place: it becomes the filter's output."""
        num_filter = max(num_filter, 1)
        if self.state is None or self.state.shape != data.shape:
            self.state = np.zeros_like(data)
            self.reset_pending = True
        if self.reset_pending or (self.num_filtered >= num_filter and auto_reset):
            self.state = c.r_offset + c.rc[0] * self.state + c.rc[1] * data
            self.num_filtered = 0
            self.reset_pending = False
        if self.num_filtered < num_filter:
            self.num_filtered += 1
        n = self.num_filtered
        out = c.o_offset + c.o_scale * ((c.oc[0] + c.oc[1] / n) * self.state
                                        + (c.oc[2] + c.oc[3] / n) * data)
        self.state = c.f_offset + c.f_scale * ((c.fc[0] + c.fc[1] / n) * self.state
                                               + (c.fc[2] + c.fc[3] / n) * data)
        data[...] = out


@dataclass(frozen=True, eq=False)
class ProcessSteps:
    """NDPluginProcess, in its order: background subtraction, flat field
    (``value · scale_flat / flat`` where the flat is not 0), offset and scale
    (``(value + offset) · scale``), high then low clip, the recursive filter, bad pixels to 0,
    and the conversion to ``output`` (None: the input's dtype, ADCore's "Automatic"),
    clipped to its range. Each step is off when its value is None.
    """

    background: Any = None
    flat: Any = None
    scale_flat: float = 255.0
    offset_scale: tuple[float, float] | None = None
    high_clip: tuple[float, float] | None = None
    low_clip: tuple[float, float] | None = None
    filter: FilterCoefficients | None = None
    num_filter: int = 1
    auto_reset_filter: bool = False
    bad_pixel_mask: Any = None
    output: np.dtype | None = None

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(input_dtype if self.output is None else self.output)

    def record(self) -> dict[str, Any]:
        """What a file records of these steps: which were applied, and their references."""
        applied: dict[str, Any] = {
            "background_applied": self.background is not None,
            "flatfield_applied": self.flat is not None,
            "offset_scale_applied": self.offset_scale is not None,
            "clip_applied": self.low_clip is not None or self.high_clip is not None,
            "filter_applied": self.filter is not None,
            "pixel_mask_applied": self.bad_pixel_mask is not None,
        }
        if self.background is not None:
            applied["background"] = np.asarray(self.background)
        if self.flat is not None:
            applied["flatfield"] = np.asarray(self.flat)
            applied["scale_flatfield"] = self.scale_flat
        if self.offset_scale is not None:
            applied["offset"], applied["scale"] = self.offset_scale
        if self.bad_pixel_mask is not None:
            applied["pixel_mask"] = np.asarray(self.bad_pixel_mask, dtype=np.int32)
        return applied


def apply_process(image: np.ndarray, steps: ProcessSteps, out: np.ndarray,
                  recursive: RecursiveFilter) -> None:
    """Run NDPluginProcess's steps on ``image`` into ``out`` (its dtype is the output's)."""
    data = image.astype(np.float64)
    if steps.background is not None:
        data -= steps.background
    if steps.flat is not None:
        flat = np.asarray(steps.flat, dtype=np.float64)
        np.multiply(data, steps.scale_flat / np.where(flat != 0, flat, 1.0), out=data,
                    where=flat != 0)
    if steps.offset_scale is not None:
        offset, scale = steps.offset_scale
        data += offset
        data *= scale
    if steps.high_clip is not None:
        threshold, value = steps.high_clip
        data[data > threshold] = value
    if steps.low_clip is not None:
        threshold, value = steps.low_clip
        data[data < threshold] = value
    if steps.filter is not None:
        recursive.apply(data, steps.num_filter, steps.auto_reset_filter, steps.filter)
    if steps.bad_pixel_mask is not None:
        data[steps.bad_pixel_mask] = 0
    if out.dtype.kind in "ui":
        limits = np.iinfo(out.dtype)
        np.clip(data, limits.min, limits.max, out=data)
        np.rint(data, out=data)
    out[...] = data
