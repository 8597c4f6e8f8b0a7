"""Where the frame pipeline runs, chosen between acquisitions: it allocates the host buffers
and turns a frame's module payloads into the corrected image.

:class:`CpuBackend` uses the fused numba kernels; the GPU backend
(:mod:`pimega.pipeline.gpu`) implements the same :class:`Backend` protocol with numba-cuda
kernels on device memory (CuPy's, or numba-cuda's own and its simulator's), allocating frame
rings and image pools in pinned host memory. Its processors are conveyors (:class:`Conveyor`):
frames are submitted and collected later, with their stats and preview computed on the device.
:func:`make_backend` makes one by name (``auto`` falls back to the CPU, saying why).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout

from . import kernels, stats_kernel
from .correct import Corrections, apply_corrections, output_dtype
from .stats import RoiSettings, Stats

log = logging.getLogger(__name__)

#: The choices of backend, as ``Pipe:Backend`` shows them.
BACKEND_CHOICES = ("Auto", "CPU", "GPU")


class FrameProcessor(Protocol):
    """Decode, assemble and correct the frames of one acquisition's settings."""

    def process(self, payloads: Sequence[np.ndarray], out: np.ndarray) -> None:
        """Fill ``out`` (host, the layout's shape, :func:`output_dtype`) from one uint8 payload
        per module (each at least the depth's payload size; longer ring slots are fine)."""
        ...


@dataclass(frozen=True, eq=False)
class FrameResult:
    """What a submitted batch's last image yielded: its stats and preview where asked for,
    and the batch's device milliseconds per step (``pimega.pipeline.gpu.STAGES``)."""

    stats: Stats | None = None
    preview: np.ndarray | None = None
    gpu_ms: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Conveyor(Protocol):
    """A :class:`FrameProcessor` that keeps frames in flight: :meth:`submit` queues a batch
    and returns at once, :meth:`collect` waits for it. Payloads and ``out`` images stay
    untouched by the caller until their batch is collected."""

    #: Batches that can be in flight at once (a further submit waits for the oldest).
    max_in_flight: int

    def process(self, payloads: Sequence[np.ndarray], out: np.ndarray) -> None: ...

    def submit(self, frames: Sequence[tuple[Sequence[np.ndarray], np.ndarray]],
               roi: RoiSettings | None = None, preview_factor: int | None = None) -> Any:
        """Queue frames ``(payloads, out)``; with ``roi`` the last image's stats of that
        region, with ``preview_factor`` its binned preview. Returns a ticket."""
        ...

    def collect(self, ticket: Any) -> FrameResult:
        """Wait for the ticket's batch: its ``out`` images are filled when this returns."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendStatus:
    """The device a backend runs on (nothing on the CPU): memory used / total (bytes), frames
    in flight, host→device GB/s, device ms per frame of each step, and its failure."""

    device: str = ""
    memory_used_bytes: int = 0
    memory_total_bytes: int = 0
    frames_in_flight: int = 0
    h2d_gb_s: float = 0.0
    gpu_ms_per_frame: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None


class Backend(Protocol):
    """One per node at a time, chosen at start-up and between acquisitions."""

    name: str  # what runs: "CPU" or "GPU"
    choice: str  # what was asked for: one of BACKEND_CHOICES
    notice: str  # why this backend runs where another was asked for ("" normally)

    def host_empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """Host memory for frame rings and image pools (pinned where a device copies it)."""
        ...

    def pin(self, array: np.ndarray) -> None:
        """Make host memory allocated by another backend fast to copy (page-lock it)."""
        ...

    def warm_up(self) -> None:
        """Compile or load every kernel before the first frame."""
        ...

    def processor(self, layout: ArrayLayout, bit_depth: int,
                  corrections: Corrections) -> FrameProcessor: ...

    def status(self) -> BackendStatus: ...

    def close(self) -> None:
        """Give back what the backend holds (device memory, pinned pages)."""
        ...


def make_backend(choice: str) -> Backend:
    """The backend of ``choice`` (``auto``, ``cpu`` or ``gpu``, any case). ``gpu`` without
    a device raises :class:`ConfigError` saying why; ``auto`` then runs on the CPU, logs why
    and keeps it in the backend's ``notice``."""
    key = choice.strip().lower()
    names = {c.lower(): c for c in BACKEND_CHOICES}
    if key not in names:
        raise ConfigError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {choice!r}")
    if key == "cpu":
        return CpuBackend()
    from .gpu import GpuBackend

    try:
        backend = GpuBackend()
    except ConfigError as exc:
        if key == "gpu":
            raise
        log.warning("%s: the pipeline runs on the CPU", exc)
        return CpuBackend(notice=f"{exc}: running on the CPU")
    backend.choice = names[key]
    return backend


class CpuBackend:
    """The fused numba kernels on every core of the host; ``notice`` says why the CPU runs
    where another backend was asked for (shown as the node's message)."""

    name = "CPU"

    def __init__(self, notice: str = "", choice: str | None = None) -> None:
        self.notice = notice
        self.choice = choice or ("Auto" if notice else "CPU")  # a notice: Auto fell back

    def host_empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        return np.empty(shape, dtype)

    def pin(self, array: np.ndarray) -> None:
        pass

    def status(self) -> BackendStatus:
        return BackendStatus()

    def close(self) -> None:
        pass

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
            # streaming stores skip the cache: right for a pooled image read later, not for
            # the raw buffer the corrections read back at once
            kernels.run_assemble(payload[: self._payload_size], self._offset, target, origin,
                                 self._layout, self._bit_depth, streaming=self._raw is None)
        if self._raw is not None:
            apply_corrections(self._raw, self._corrections, out=out)
