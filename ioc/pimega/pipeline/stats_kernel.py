"""Fused numba kernel for :func:`pimega.pipeline.stats.compute_stats` on NumPy images.

One pass over the image, ``prange`` over rows: each row yields its sum, sum of squares, the
thresholded weight moments Σw, Σw·x, Σw·x² (w = the pixel value where it is ≥ the
threshold, else 0) and its smallest and largest order key (below). A sequential pass over
the rows adds them up in float64 (y moments from the row index: Σw·y = y·Σw, Σw·x·y =
y·Σw·x), takes the first row holding the smallest / largest key, then the first column in
that row: NumPy's argmin / argmax. Per-row partials make the result independent of the
thread count; the only temporaries are a few numbers per row.

Order keys make min / max vectorise for floats too (LLVM will not vectorise a float
compare-and-select without no-NaN flags): an unsigned image is its own key; a float image
comes as its signed-integer view, and the key of a negative float's bits is minus its
magnitude bits, so keys order as the values do and −0.0 and +0.0 share the key 0. NaNs
have keys too, but no NumPy meaning: callers send images with non-finite pixels elsewhere
(their total is not finite).

The image comes as a flat 1-D view plus a row pitch (``flat[r·pitch + c]`` is pixel
(r, c)), so a C-contiguous image and an ROI view of one run the same contiguous inner loop.
``reassoc`` lets LLVM vectorise the sums (any order: rounding differs from NumPy's by
parts in 1e-16).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

#: Image dtypes the kernel takes: the pipeline's images (each one costs ~2 s of first JIT).
KERNEL_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.float32))
#: Integer view whose order keys follow a float image's values.
_FLOAT_BITS = {np.dtype(np.float32): np.dtype(np.int32)}

# Per-row partial sums: columns of the (rows, N_SUMS) float64 array.
_SUM, _SUM_SQ, _W, _WX, _WXX = range(5)
_N_SUMS = 5


def _order_key(bits: Any) -> Any:
    """Integer that orders as the pixel does (see the module docstring); numba only."""
    raise NotImplementedError("compiled from the overload")


@overload(_order_key)
def _order_key_impl(bits):
    if not isinstance(bits, types.Integer):
        return None
    view = np.dtype(str(bits))
    if view.kind == "u":
        return lambda bits: bits
    magnitude_mask = int(np.iinfo(view).max)

    def float_key(bits):
        wide = np.int64(bits)
        sign = wide >> 63  # 0 or −1: negating as two's complement, without a branch
        return ((wide & magnitude_mask) ^ sign) - sign

    return float_key


@njit(inline="always")
def _row_partials(row, key_row, threshold, sums, key_min, key_max, r):
    """Partial sums and key extremes of image row ``r``, its pixels ``row``."""
    s = s2 = w0 = wx = wxx = 0.0
    x = 0.0  # a float counter: int64 → float64 does not vectorise on x86
    for c in range(row.size):
        f = np.float64(row[c])
        w = 0.0 if f < threshold else f
        s += f
        s2 += f * f
        w0 += w
        wx += w * x
        wxx += w * x * x
        x += 1.0
    sums[r, _SUM] = s
    sums[r, _SUM_SQ] = s2
    sums[r, _W] = w0
    sums[r, _WX] = wx
    sums[r, _WXX] = wxx
    lo = hi = _order_key(key_row[0])
    for c in range(key_row.size):  # a loop of its own over the cached row: it vectorises
        key = _order_key(key_row[c])
        lo = min(lo, key)
        hi = max(hi, key)
    key_min[r] = lo
    key_max[r] = hi


@njit(inline="always")
def _first_key(keys, start, cols, key):
    """Column of the first pixel with order key ``key`` in the row at ``keys[start]``."""
    for c in range(cols):
        if _order_key(keys[start + c]) == key:
            return c
    return -1


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def stats_moments(flat, keys, rows, cols, pitch, threshold):
    """Sums and extremes of the (rows, cols) image ``flat[r·pitch + c]``.

    ``keys``: ``flat`` itself (unsigned dtypes) or its signed-integer view (floats).
    Returns (total, sum of squares, Σw, Σw·x, Σw·y, Σw·x², Σw·y², Σw·x·y, min row,
    min column, max row, max column).
    """
    sums = np.empty((rows, _N_SUMS), dtype=np.float64)
    key_min = np.full(rows, _order_key(keys[0]))  # the key dtype
    key_max = np.empty_like(key_min)
    for r in prange(rows):
        start = r * pitch
        _row_partials(flat[start : start + cols], keys[start : start + cols], threshold, sums,
                      key_min, key_max, r)
    total = sum_sq = m00 = mx = my = mxx = myy = mxy = 0.0
    min_row = max_row = 0
    for r in range(rows):
        y = np.float64(r)
        total += sums[r, _SUM]
        sum_sq += sums[r, _SUM_SQ]
        m00 += sums[r, _W]
        mx += sums[r, _WX]
        my += y * sums[r, _W]
        mxx += sums[r, _WXX]
        myy += y * y * sums[r, _W]
        mxy += y * sums[r, _WX]
        if key_min[r] < key_min[min_row]:
            min_row = r
        if key_max[r] > key_max[max_row]:
            max_row = r
    min_col = _first_key(keys, min_row * pitch, cols, key_min[min_row])
    max_col = _first_key(keys, max_row * pitch, cols, key_max[max_row])
    return (total, sum_sq, m00, mx, my, mxx, myy, mxy, min_row, min_col, max_row, max_col)


def kernel_moments(image: np.ndarray, threshold: float) -> tuple[Any, ...] | None:
    """:func:`stats_moments` of a non-empty 2-D NumPy image; None for other dtypes."""
    if image.dtype not in KERNEL_DTYPES:
        return None
    flat, pitch = _flat_rows(image)
    bits = _FLOAT_BITS.get(image.dtype)
    keys = flat if bits is None else flat.view(bits)
    return stats_moments(flat, keys, image.shape[0], image.shape[1], pitch, float(threshold))


def _flat_rows(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Read-only 1-D view from the first to the last pixel, and the row pitch in pixels.

    Read in place where each row is a contiguous run and rows go forward in memory (a
    C-contiguous image, or a slice of one as ``roi()`` returns); any other view is copied.
    """
    rows, cols = image.shape
    row_stride, col_stride = image.strides if rows > 1 else (0, image.strides[1])
    item = image.itemsize
    if (cols > 1 and col_stride != item) or row_stride < 0 or row_stride % item:
        image = np.ascontiguousarray(image)
        row_stride = cols * item
    pitch = row_stride // item
    span = (rows - 1) * pitch + cols
    return np.lib.stride_tricks.as_strided(image, (span,), (item,), writeable=False), pitch


def warm_up() -> None:
    """Compile (or load from the cache) the kernel for every dtype in :data:`KERNEL_DTYPES`."""
    for dtype in KERNEL_DTYPES:
        kernel_moments(np.ones((2, 3), dtype=dtype), 0.0)
