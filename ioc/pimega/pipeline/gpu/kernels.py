"""numba-cuda kernels of the GPU pipeline, and the launchers that size their grids.

Each kernel computes what its CPU counterpart does, in the same arithmetic, so that integer
results are bit-exact and float32 ones too (same operations, same rounding):

- :func:`assemble` — :func:`pimega.pipeline.assemble.decode_assemble` for a batch of
  frames: one thread per image pixel, which finds its module, chip and pixel in the chip's
  bit stream (the top half of the chip rows rotated by 180°) and reads the bytes holding
  it; one kernel per depth, the depth a constant of its loop.
- :func:`correct` / :func:`zero_bad` — :func:`pimega.pipeline.correct.apply_corrections`
  from the float32 dark and denominator a :class:`~pimega.pipeline.correct.Corrections`
  derives (``float32(raw) − dark``, then ``/ denominator``, bad pixels 0).
- :func:`bin_sums` / :func:`bin_means` — ``roi`` binning and ``bin_for_preview`` of
  :mod:`pimega.pipeline.stats`, adding in the CPU's order (each block column over its rows,
  then the columns left to right, from the first value: −0.0 stays −0.0).
- :func:`moments` — the sums and first-occurrence extremes behind
  :func:`pimega.pipeline.stats.compute_stats`: blocks reduce grid-strided pixels into
  partials, one block reduces those (float64 sums, so they agree with the CPU's to rounding,
  the CPU's own order depending on its vector width).

Launchers take device arrays (numba's, or anything speaking ``__cuda_array_interface__``;
NumPy arrays under the simulator, ``NUMBA_ENABLE_CUDASIM=1``) and a numba stream. Values are
cast to a wide type before shifting and mixing: the simulator follows NumPy's scalar rules,
where a ``uint8`` shifted left wraps and ``uint64 // int64`` is a float.
"""

from __future__ import annotations

import math
from typing import Any

import numba.cuda
import numpy as np
from numba.core import config

from pimega.core.geometry import BIT_DEPTHS, ArrayLayout

#: ``numba.cuda``, untyped: pyright reads its device intrinsics (``grid``, ``shared.array``,
#: ...) as the plain-Python stubs they are outside a kernel.
cuda: Any = numba.cuda
# The reductions end in one block and small frames take few: numba's warning for any grid
# under 128 blocks would come with every stats request (and fail tests that make warnings
# errors). The config module makes its attributes from the environment.
config.CUDA_LOW_OCCUPANCY_WARNINGS = 0  # pyright: ignore[reportAttributeAccessIssue]

#: Threads per block of the element-wise kernels (x across the image: coalesced stores).
BLOCK_X = 128
#: Threads per block of the reductions (a power of two), pixels a thread at least takes, and
#: most blocks of partials.
REDUCE_THREADS = 128
PIXELS_PER_THREAD = 16
MAX_PARTIALS = 1024
#: Σ, Σv², Σw, Σw·x, Σw·y, Σw·x², Σw·y², Σw·x·y (w: the value where ≥ the threshold, else 0).
N_SUMS = 8
#: :func:`moments` result, float64: the sums, min row, min column, max row and max column in
#: ``stats_kernel.stats_moments``' order, then the min and max values.
RESULT_SIZE = N_SUMS + 6


def _assemble_kernel(bit_depth: int) -> Any:
    """The decode + assemble kernel of one depth (a constant, so its byte loop specialises)."""
    mask = (1 << bit_depth) - 1

    @cuda.jit
    def kernel(payloads, frame_stride, module_stride, images, geometry):
        x, y, b = cuda.grid(3)
        frames, height, width = images.shape
        if x >= width or y >= height or b >= frames:
            return
        module_h, module_w, modules_x, chips_x, chips_y, s, chip_bytes = geometry
        module_row = y // module_h
        module_col = x // module_w
        chip_row = (y - module_row * module_h) // s
        chip_col = (x - module_col * module_w) // s
        py = y - module_row * module_h - chip_row * s
        px = x - module_col * module_w - chip_col * s
        if chip_row < chips_y // 2:  # mounted rotated by 180°
            py = s - 1 - py
            px = s - 1 - px
        bit = (py * s + px) * bit_depth
        start = (b * frame_stride + (module_row * modules_x + module_col) * module_stride
                 + (chip_row * chips_x + chip_col) * chip_bytes + (bit >> 3))
        value = np.int64(0)
        for n in range(((bit & 7) + bit_depth + 7) >> 3):
            value |= np.int64(payloads[start + n]) << (8 * n)
        images[b, y, x] = (value >> (bit & 7)) & mask

    return kernel


_ASSEMBLE = {depth: _assemble_kernel(depth) for depth in BIT_DEPTHS}


@cuda.jit
def _correct(raw, out, dark, denominator, bad, has_dark, has_flat, has_bad):
    x, y, b = cuda.grid(3)
    frames, height, width = out.shape
    if x >= width or y >= height or b >= frames:
        return
    value = np.float32(raw[b, y, x])
    if has_dark:
        value = value - dark[y, x]
    if has_flat:  # bad pixels divide by +inf
        value = value / denominator[y, x]
    elif has_bad and bad[y, x]:
        value = np.float32(0.0)
    out[b, y, x] = value


@cuda.jit
def _zero_bad(images, bad):
    x, y, b = cuda.grid(3)
    frames, height, width = images.shape
    if x < width and y < height and b < frames and bad[y, x]:
        images[b, y, x] = 0


@cuda.jit(device=True, inline=True)
def _block_sum(image, y, x, bin_y, bin_x, wide):
    """Sum of ``image[y : y + bin_y, x : x + bin_x]`` as ``wide``, in ``_bin_sums``' order."""
    total = wide(0)
    for dx in range(bin_x):
        column = wide(image[y, x + dx])
        for dy in range(1, bin_y):
            column += wide(image[y + dy, x + dx])
        total = column if dx == 0 else total + column
    return total


def _bin_kernel(mean: bool, floating: bool) -> Any:
    """Block sums (``mean`` False, into the wide dtype) or block means in the image's dtype."""
    wide = np.float64 if floating else np.uint64

    @cuda.jit
    def kernel(image, y0, x0, bin_y, bin_x, out):
        j, i = cuda.grid(2)
        if i >= out.shape[0] or j >= out.shape[1]:
            return
        total = _block_sum(image, y0 + i * bin_y, x0 + j * bin_x, bin_y, bin_x, wide)
        if mean:
            total = total / wide(bin_y * bin_x) if floating else total // wide(bin_y * bin_x)
        out[i, j] = total

    return kernel


_BIN = {(mean, floating): _bin_kernel(mean, floating)
        for mean in (False, True) for floating in (False, True)}


@cuda.jit(device=True, inline=True)
def _first_extreme(image, y0, x0, cols, a, b, smallest):
    """Of ROI pixels ``a`` and ``b`` (flat indices, −1: none) the smallest / largest value,
    the first in row-major order on a tie."""
    if b < 0:
        return a
    if a < 0:
        return b
    va = image[y0 + a // cols, x0 + a % cols]
    vb = image[y0 + b // cols, x0 + b % cols]
    better = vb < va if smallest else vb > va
    return b if better or (vb == va and b < a) else a


@cuda.jit(device=True, inline=True)
def _reduce_block(image, y0, x0, cols, sums, lo, hi, tid):
    """Tree-reduce the block's shared ``sums`` (N_SUMS, threads) and extremes into column 0."""
    stride = REDUCE_THREADS // 2
    while stride > 0:
        cuda.syncthreads()
        if tid < stride:
            other = tid + stride
            for n in range(N_SUMS):
                sums[n, tid] += sums[n, other]
            lo[tid] = _first_extreme(image, y0, x0, cols, lo[tid], lo[other], True)
            hi[tid] = _first_extreme(image, y0, x0, cols, hi[tid], hi[other], False)
        stride //= 2
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def _shared_partials():
    sums = cuda.shared.array((N_SUMS, REDUCE_THREADS), np.float64)
    lo = cuda.shared.array(REDUCE_THREADS, np.int64)
    hi = cuda.shared.array(REDUCE_THREADS, np.int64)
    return sums, lo, hi


@cuda.jit
def _partial_moments(image, y0, x0, rows, cols, threshold, partial_sums, partial_at):
    """Each block: the sums and extremes of the ROI pixels its threads visit, grid-strided."""
    sums, lo, hi = _shared_partials()
    tid = cuda.threadIdx.x
    acc = cuda.local.array(N_SUMS, np.float64)
    for n in range(N_SUMS):
        acc[n] = 0.0
    i_lo = i_hi = np.int64(-1)
    v_lo = v_hi = image[y0, x0]
    for k in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        r = k // cols
        c = k - r * cols
        v = image[y0 + r, x0 + c]
        f = np.float64(v)
        w = 0.0 if f < threshold else f
        fx = np.float64(c)
        fy = np.float64(r)
        acc[0] += f
        acc[1] += f * f
        acc[2] += w
        acc[3] += w * fx
        acc[4] += w * fy
        acc[5] += w * fx * fx
        acc[6] += w * fy * fy
        acc[7] += w * fx * fy
        if i_lo < 0 or v < v_lo:  # k grows: strict compares keep the first occurrence
            i_lo, v_lo = k, v
        if i_hi < 0 or v > v_hi:
            i_hi, v_hi = k, v
    for n in range(N_SUMS):
        sums[n, tid] = acc[n]
    lo[tid] = i_lo
    hi[tid] = i_hi
    _reduce_block(image, y0, x0, cols, sums, lo, hi, tid)
    if tid == 0:
        for n in range(N_SUMS):
            partial_sums[cuda.blockIdx.x, n] = sums[n, 0]
        partial_at[cuda.blockIdx.x, 0] = lo[0]
        partial_at[cuda.blockIdx.x, 1] = hi[0]


@cuda.jit
def _final_moments(image, y0, x0, cols, n_partials, partial_sums, partial_at, result):
    """One block: the partials reduced into ``result`` (see :data:`RESULT_SIZE`)."""
    sums, lo, hi = _shared_partials()
    tid = cuda.threadIdx.x
    for n in range(N_SUMS):
        sums[n, tid] = 0.0
    lo[tid] = hi[tid] = -1
    for p in range(tid, n_partials, REDUCE_THREADS):
        for n in range(N_SUMS):
            sums[n, tid] += partial_sums[p, n]
        lo[tid] = _first_extreme(image, y0, x0, cols, lo[tid], partial_at[p, 0], True)
        hi[tid] = _first_extreme(image, y0, x0, cols, hi[tid], partial_at[p, 1], False)
    _reduce_block(image, y0, x0, cols, sums, lo, hi, tid)
    if tid == 0:
        for n in range(N_SUMS):
            result[n] = sums[n, 0]
        result[N_SUMS] = lo[0] // cols
        result[N_SUMS + 1] = lo[0] % cols
        result[N_SUMS + 2] = hi[0] // cols
        result[N_SUMS + 3] = hi[0] % cols
        result[N_SUMS + 4] = np.float64(image[y0 + lo[0] // cols, x0 + lo[0] % cols])
        result[N_SUMS + 5] = np.float64(image[y0 + hi[0] // cols, x0 + hi[0] % cols])


def _grid(width: int, height: int, depth: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Grid and block of an element-wise kernel over (depth, height, width)."""
    block = min(BLOCK_X, 32 * math.ceil(width / 32))
    return (math.ceil(width / block), height, depth), (block, 1, 1)


def geometry(layout: ArrayLayout, bit_depth: int) -> tuple[int, ...]:
    """The ``geometry`` argument of :func:`assemble` for ``layout``."""
    m = layout.module
    return (m.height, m.width, layout.modules_x, m.chips_x, m.chips_y, m.chip_size,
            m.chip_bytes(bit_depth))


def assemble(stream: Any, payloads: Any, frame_stride: int, module_stride: int, images: Any,
             geometry: tuple[int, ...], bit_depth: int) -> None:
    """Decode and assemble a batch: ``images`` (frames, H, W) of the depth's raw dtype.

    Frame ``b``'s payload of module ``m`` starts at ``payloads[b·frame_stride +
    m·module_stride]`` (``payloads``: 1-D uint8); ``geometry`` from :func:`geometry`.
    """
    frames, height, width = images.shape
    grid, block = _grid(width, height, frames)
    _ASSEMBLE[bit_depth][grid, block, stream](payloads, frame_stride, module_stride, images,
                                              geometry)


def correct(stream: Any, raw: Any, out: Any, dark: Any, denominator: Any, bad: Any,
            has_dark: bool, has_flat: bool, has_bad: bool) -> None:
    """float32 ``out`` = ``raw`` − ``dark`` (if ``has_dark``), / ``denominator`` (if
    ``has_flat``), else 0 where ``bad`` (if ``has_bad``): batches (frames, H, W), the
    corrections (H, W); arrays not used may be any of their dtype and ndim."""
    frames, height, width = out.shape
    grid, block = _grid(width, height, frames)
    _correct[grid, block, stream](raw, out, dark, denominator, bad, has_dark, has_flat,
                                  has_bad)


def zero_bad(stream: Any, images: Any, bad: Any) -> None:
    """Set the ``bad`` (H, W) pixels of every image of the batch (frames, H, W) to 0."""
    frames, height, width = images.shape
    grid, block = _grid(width, height, frames)
    _zero_bad[grid, block, stream](images, bad)


def bin_sums(stream: Any, image: Any, y0: int, x0: int, bin_y: int, bin_x: int,
             out: Any) -> None:
    """``out[i, j]`` = sum of the ``bin_y`` × ``bin_x`` block at (y0 + i·bin_y, x0 + j·bin_x)
    of ``image`` (2-D); ``out`` uint64 for unsigned images, float64 for float ones."""
    grid, block = _grid(out.shape[1], out.shape[0])
    _BIN[False, out.dtype.kind == "f"][grid[:2], block[:2], stream](image, y0, x0, bin_y,
                                                                    bin_x, out)


def bin_means(stream: Any, image: Any, factor: int, out: Any) -> None:
    """``out`` (the image's dtype) = means over ``factor``² blocks, integers rounded down."""
    grid, block = _grid(out.shape[1], out.shape[0])
    _BIN[True, out.dtype.kind == "f"][grid[:2], block[:2], stream](image, 0, 0, factor,
                                                                   factor, out)


def moments(stream: Any, image: Any, y0: int, x0: int, rows: int, cols: int,
            threshold: float, partial_sums: Any, partial_at: Any, result: Any) -> None:
    """Sums and extremes of ``image[y0 : y0 + rows, x0 : x0 + cols]`` into ``result``.

    Scratch: ``partial_sums`` float64 (MAX_PARTIALS, N_SUMS), ``partial_at`` int64
    (MAX_PARTIALS, 2); ``result`` float64 (RESULT_SIZE,), laid out as :data:`RESULT_SIZE` says.
    """
    blocks = min(math.ceil(rows * cols / (REDUCE_THREADS * PIXELS_PER_THREAD)), MAX_PARTIALS)
    _partial_moments[blocks, REDUCE_THREADS, stream](image, y0, x0, rows, cols, threshold,
                                                     partial_sums, partial_at)
    _final_moments[1, REDUCE_THREADS, stream](image, y0, x0, cols, blocks, partial_sums,
                                              partial_at, result)
