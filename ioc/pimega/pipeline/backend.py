"""Where the frame pipeline runs, chosen once: it allocates the host buffers and turns a
frame's module payloads into the corrected image.

:class:`CpuBackend` uses the fused numba kernels; the GPU backend
(:mod:`pimega.pipeline.gpu`) implements the same :class:`Backend` protocol with CuPy memory
and numba-cuda kernels, allocating frame rings and image pools in pinned host memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from pimega.core.bitpack import dtype_for_depth
from pimega.core.geometry import ArrayLayout

from . import kernels, stats_kernel
from .correct import Corrections, apply_corrections, output_dtype


class FrameProcessor(Protocol):
    """Decode, assemble and correct the frames of one acquisition's settings."""

    def process(self, payloads: Sequence[np.ndarray], out: np.ndarray) -> None:
        """Fill ``out`` (host, the layout's shape, :func:`output_dtype`) from one uint8 payload
        per module (each at least the depth's payload size; longer ring slots are fine)."""
        ...


class Backend(Protocol):
    """One per node, chosen at start-up (``cpu`` or ``gpu``)."""

    name: str
    notice: str  # why this backend runs where another was asked for ("" normally)

    def host_empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """Host memory for frame rings and image pools (pinned where a device copies it)."""
        ...

    def warm_up(self) -> None:
        """Compile or load every kernel before the first frame."""
        ...

    def processor(self, layout: ArrayLayout, bit_depth: int,
                  corrections: Corrections) -> FrameProcessor: ...


class CpuBackend:
    """The fused numba kernels on every core of the host; ``notice`` says why the CPU runs
    where another backend was asked for (shown as the node's message)."""

    name = "CPU"

    def __init__(self, notice: str = "") -> None:
        self.notice = notice

    def host_empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        return np.empty(shape, dtype)

    def warm_up(self) -> None:
        kernels.warm_up()
        stats_kernel.warm_up()

    def processor(self, layout: ArrayLayout, bit_depth: int,
                  corrections: Corrections) -> CpuProcessor:
        return CpuProcessor(layout, bit_depth, corrections)


class CpuProcessor:
    """Each module decoded straight into its place in the image (one pass over its bytes);
    with corrections, into a raw buffer first, then corrected into ``out``."""

    def __init__(self, layout: ArrayLayout, bit_depth: int, corrections: Corrections) -> None:
        self._layout = layout
        self._bit_depth = bit_depth
        self._payload_size = layout.module.payload_size(bit_depth)
        self._corrections = corrections
        raw_dtype = dtype_for_depth(bit_depth)
        corrected = (output_dtype(bit_depth, corrections) != raw_dtype
                     or corrections.bad_pixel_mask is not None)
        self._raw = np.empty(layout.shape, raw_dtype) if corrected else None
        self._origins = [np.array([layout.module_origin(m)], dtype=np.int64)
                         for m in range(layout.n_modules)]
        self._offset = np.zeros(1, dtype=np.int64)

    def process(self, payloads: Sequence[np.ndarray], out: np.ndarray) -> None:
        target = out if self._raw is None else self._raw
        for payload, origin in zip(payloads, self._origins, strict=True):
            kernels.run_assemble(payload[: self._payload_size], self._offset, target, origin,
                                 self._layout, self._bit_depth)
        if self._raw is not None:
            apply_corrections(self._raw, self._corrections, out=out)
