"""The ``gpu`` backend: the numba-cuda kernels of :mod:`.kernels` on a :class:`~.device.Device`
(CuPy memory, pinned memory, streams and events on a GPU; numba-cuda's own API on a GPU
without CuPy and under numba-cuda's simulator, so that CI runs the whole conveyor).

:class:`GpuBackend` (``pipeline.backend.Backend``): ``name`` ("GPU"), ``host_empty`` (pinned
arrays for frame rings and image pools), ``pin``, ``warm_up``, ``processor``, ``status``,
``close``. Made without numba-cuda or a device, it raises
:class:`~pimega.core.errors.ConfigError` saying why, so ``auto`` can fall back to the CPU.
A device that fails later (out of memory, lost, hung) raises :class:`GpuError`.

:class:`GpuProcessor` is the conveyor of one acquisition (``pipeline.backend.Conveyor``), its
buffers allocated when made:

- ``submit(frames, roi=None, preview_factor=None) -> Ticket`` queues a batch of 1 to
  ``batch_size`` frames, each ``(payloads, out)``: ``payloads`` one contiguous uint8 1-D view
  a module (≥ ``payload_size`` bytes: slices of pinned ring slots), ``out`` a pinned host
  image of ``layout.shape`` and :func:`~pimega.pipeline.correct.output_dtype`. With ``roi``
  (anything with ``min_x``, ``min_y``, ``size_x``, ``size_y``, ``bin_x``, ``bin_y``, as
  ``stats.roi`` takes them) the batch's last image gets the NDStats figures of that region,
  as ``compute_stats(roi(image, ...))``; with ``preview_factor`` its ``bin_for_preview``.
  Payloads and ``out`` must stay untouched until the ticket is collected.
- ``collect(ticket) -> FrameResult`` waits for the batch (polling its last event: a lost or
  hung device raises :class:`GpuError`, never hangs); the ``out`` images are then filled, and
  the result holds the stats and preview asked for, else None, and the batch's GPU times.
- ``process(payloads, out) -> None``: one frame, submitted and collected (the
  ``FrameProcessor`` protocol of ``pipeline.backend``).

Three slots of device buffers turn in order: while batch k's images, stats and preview come
back on one stream, batch k+1 is decoded, assembled, corrected, measured and binned on a
second, and batch k+2 is copied in on a third, each stream waiting on the others' events; a
fourth ``submit`` first finishes the oldest batch (its results wait in its ticket). Images
come back straight into ``out``. Events around each step give the GPU time per stage.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError, PimegaError
from pimega.core.geometry import BIT_DEPTHS, ArrayLayout, ModuleGeometry, check_bit_depth
from pimega.pipeline.backend import BackendStatus, FrameResult
from pimega.pipeline.correct import Corrections, output_dtype
from pimega.pipeline.stats import RoiSettings, Stats, clip_span, stats_from_moments

from .device import Device, open_device

__all__ = ["SLOTS", "SPANS", "STAGES", "FrameResult", "GpuBackend", "GpuError",
           "GpuProcessor", "Ticket", "stats_from_result"]

#: The steps the conveyor times, each between two events of a batch.
SPANS = {"h2d": ("h2d", "h2d_end"), "assemble": ("compute", "assemble"),
         "correct": ("assemble", "correct"), "stats": ("correct", "stats"),
         "preview": ("stats", "preview"), "d2h": ("d2h_start", "d2h")}
STAGES = tuple(SPANS)
SLOTS = 3
_POLL_S = 2e-4


class GpuError(PimegaError):
    """The GPU failed: out of memory, lost, or a batch that did not finish in time."""


@dataclass(eq=False)
class Ticket:
    """A submitted batch; :meth:`GpuProcessor.collect` turns it into its :class:`FrameResult`."""

    n_frames: int
    slot: int
    roi_pixels: int  # pixels the stats cover (0: no stats)
    preview_shape: tuple[int, int] | None
    result: FrameResult | None = None


@dataclass
class _Meters:
    """GPU milliseconds and counts per stage, host→device bytes, frames in flight."""

    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    h2d_bytes: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class _Region:
    """Where the stats of an ROI are taken: the ROI's clipped span and its binning."""

    y0: int
    x0: int
    rows: int  # of the binned ROI
    cols: int
    bin_y: int
    bin_x: int


class _Extremes:
    """What ``stats_from_moments`` reads of an image: its size and its values at min and max."""

    def __init__(self, size: int, values: dict[tuple[int, int], float]) -> None:
        self.size = size
        self._values = values

    def __getitem__(self, at: tuple[int, int]) -> float:
        return self._values[at]


class GpuBackend:
    """numba-cuda kernels on a :class:`~.device.Device` (see the module docstring): the one
    :func:`~.device.open_device` finds unless ``device`` is given.

    ``batch_size``: most frames a processor takes per ``submit``; ``timeout_s``: the longest
    wait for the device before :class:`GpuError`.
    """

    name = "GPU"
    notice = ""

    def __init__(self, batch_size: int = 4, timeout_s: float = 10.0,
                 device: Device | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"GPU batch size must be ≥ 1, got {batch_size}")
        self.device = device or open_device()
        try:
            from . import kernels
        except ImportError as exc:
            raise ConfigError(f"GPU backend unavailable: numba-cuda not installed ({exc})"
                              ) from exc
        self.kernels = kernels
        self.choice = "GPU"
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.meters = _Meters()
        self.failure: str | None = None
        self._processors: weakref.WeakSet[GpuProcessor] = weakref.WeakSet()

    @property
    def device_name(self) -> str:
        return self.device.name

    def host_empty(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """An uninitialised NumPy array in pinned (page-locked) host memory."""
        with self.device_errors(f"allocating pinned host memory for {shape} {dtype}"):
            return self.device.pinned(shape, dtype)

    def pin(self, array: np.ndarray) -> None:
        """Page-lock ``array`` (frame rings made by another backend) until :meth:`close`."""
        with self.device_errors(f"pinning {array.nbytes} bytes of host memory"):
            self.device.pin(array)

    def warm_up(self) -> None:
        """Compile every kernel, for every depth, raw and corrected, on a tiny geometry (the
        simulator compiles nothing: it runs the kernels' Python)."""
        if self.device.simulated:
            return
        layout = ArrayLayout(ModuleGeometry(2, 2, 8))
        mask = np.zeros(layout.shape, bool)
        for depth in BIT_DEPTHS:
            ones = np.ones(layout.shape, dtype_for_depth(depth))
            for corrections in (Corrections(), Corrections(bad_pixel_mask=mask),
                                Corrections(dark=ones * 0, flat=ones, bad_pixel_mask=mask)):
                with self.processor(layout, depth, corrections) as processor:
                    payloads = [np.zeros(processor.payload_size, np.uint8)]
                    out = self.host_empty(layout.shape, processor.out_dtype)
                    for roi, factor in ((RoiSettings(), 2), (RoiSettings(bin_x=2, bin_y=2), None)):
                        processor.collect(processor.submit([(payloads, out)], roi, factor))

    def processor(self, layout: ArrayLayout, bit_depth: int,
                  corrections: Corrections) -> GpuProcessor:
        """The conveyor for one acquisition, its device buffers allocated now; :meth:`status`
        reports on the newest one (a failure of an earlier one is forgotten)."""
        self.failure = None
        processor = GpuProcessor(self, layout, bit_depth, corrections)
        self._processors.add(processor)
        return processor

    def status(self) -> BackendStatus:
        """Device name, memory used / total (bytes: the whole device's where it says), frames
        in flight, host→device GB/s, and GPU ms per stage of :data:`STAGES` (per frame; for
        stats and preview per image measured); ``error``: the failure, if one happened."""
        try:
            with self.device_errors("reading the memory use"):
                used, total = self.device.memory()
        except GpuError:
            used = total = 0
        meters = self.meters
        h2d_s = meters.ms["h2d"] / 1e3
        return BackendStatus(
            device=f"{self.device.name} ({self.device.library})",
            memory_used_bytes=used, memory_total_bytes=total,
            frames_in_flight=meters.in_flight,
            h2d_gb_s=meters.h2d_bytes / h2d_s / 1e9 if h2d_s > 0 else 0.0,
            gpu_ms_per_frame={stage: meters.ms[stage] / meters.counts[stage]
                              if meters.counts[stage] else 0.0 for stage in STAGES},
            error=self.failure,
        )

    def close(self) -> None:
        """Close the processors still open, unpin what was pinned, hand the pools' memory
        back to the device."""
        for processor in list(self._processors):
            processor.close()
        try:
            with self.device_errors("releasing memory"):
                self.device.release()
        except GpuError:
            pass  # a lost device keeps nothing worth handing back

    @contextmanager
    def device_errors(self, doing: str) -> Iterator[None]:
        """Turn a CUDA failure while ``doing`` into :class:`GpuError`, kept in ``failure``."""
        try:
            yield
        except GpuError:
            raise
        except Exception as exc:
            kind = self.device.classify(exc)
            if kind is None:
                raise
            self.failure = (f"out of GPU memory {doing}: {exc}" if kind == "oom"
                            else f"GPU failed {doing} (device lost?): {exc}")
            raise GpuError(self.failure) from exc

    def wait(self, event: Any, doing: str) -> None:
        """Wait for ``event`` by polling it: a lost device raises, a hung one times out."""
        deadline = time.monotonic() + self.timeout_s
        with self.device_errors(doing):
            while not self.device.done(event):
                if time.monotonic() > deadline:
                    self.failure = f"GPU did not finish {doing} within {self.timeout_s} s"
                    raise GpuError(self.failure)
                time.sleep(_POLL_S)


class _Slot:
    """Device buffers and events of one batch in the conveyor."""

    def __init__(self, processor: GpuProcessor, payload_bytes: int) -> None:
        backend = processor.backend
        result_size = backend.kernels.RESULT_SIZE
        self.payloads = processor.device_empty(payload_bytes, np.uint8)
        self.images = processor.device_empty((processor.batch_size, *processor.layout.shape),
                                             processor.out_dtype)
        self.result = processor.device_empty(result_size, np.float64)
        self.result_host = backend.host_empty(result_size, np.float64)
        self.preview: Any = None  # made for the preview's shape, with its pinned host copy
        self.preview_host = np.empty((0, 0), processor.out_dtype)
        self.events = {name: backend.device.event() for span in SPANS.values()
                       for name in span}
        self.ticket: Ticket | None = None


class GpuProcessor:
    """The conveyor of one acquisition (see the module docstring), used by one thread."""

    max_in_flight = SLOTS

    def __init__(self, backend: GpuBackend, layout: ArrayLayout, bit_depth: int,
                 corrections: Corrections) -> None:
        if corrections.shape not in (None, layout.shape):
            raise ConfigError(f"corrections of shape {corrections.shape} do not fit the "
                              f"{layout.shape} image")
        self.backend = backend
        self.device = device = backend.device
        self.layout = layout
        self.bit_depth = check_bit_depth(bit_depth)
        self.batch_size = backend.batch_size
        self.payload_size = layout.module.payload_size(bit_depth)
        self.out_dtype = output_dtype(bit_depth, corrections)
        self._geometry = backend.kernels.geometry(layout, bit_depth)
        self._has_dark = corrections.dark is not None
        self._has_flat = corrections.flat is not None
        self._has_bad = corrections.bad_pixel_mask is not None
        self._submitted = 0
        self._closed = False
        self._meters = backend.meters = _Meters()  # status() shows the newest processor's
        with backend.device_errors(f"allocating buffers for {self.batch_size} frames of "
                                   f"{layout.shape}"):
            self._h2d, self._compute, self._d2h = (device.stream() for _ in range(3))
            self._nb_compute = device.kernel_stream(self._compute)
            payload_bytes = self.batch_size * layout.n_modules * self.payload_size
            self._slots = [_Slot(self, payload_bytes) for _ in range(SLOTS)]
            self._raw = (self.device_empty((self.batch_size, *layout.shape),
                                           dtype_for_depth(bit_depth))
                         if corrections.floating else None)
            k = backend.kernels
            self._partial_sums = self.device_empty((k.MAX_PARTIALS, k.N_SUMS), np.float64)
            self._partial_at = self.device_empty((k.MAX_PARTIALS, 2), np.int64)
            self._binned: Any = None  # ROI bin sums, made for the ROI's shape
            unused = np.zeros((1, 1), np.float32)
            self._dark = self._upload(corrections.dark_float if self._has_dark else unused)
            self._denominator = self._upload(corrections.denominator if self._has_flat
                                             else unused)
            self._bad = self._upload(corrections.bad_pixel_mask if self._has_bad
                                     else np.zeros((1, 1), np.bool_))

    def __enter__(self) -> GpuProcessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def device_empty(self, shape: int | tuple[int, ...], dtype: Any) -> Any:
        """A device array, allocated on the compute stream (so a pool hands its memory, once
        freed, only to later work on that stream); ordered by the conveyor's events."""
        return self.device.empty(shape, dtype, self._compute)

    def _upload(self, array: Any) -> Any:
        """A correction array on the device, on the compute stream (which alone reads it)."""
        return self.device.upload(np.asarray(array), self._compute)

    def process(self, payloads: Sequence[np.ndarray], out: np.ndarray) -> None:
        """Decode, assemble and correct one frame into ``out`` (``submit`` + ``collect``)."""
        self.collect(self.submit([(payloads, out)]))

    def submit(self, frames: Sequence[tuple[Sequence[np.ndarray], np.ndarray]],
               roi: RoiSettings | None = None, preview_factor: int | None = None) -> Ticket:
        """Queue a batch (see the module docstring). Returns at once, unless every slot is
        busy: then after the oldest batch finished."""
        if self._closed:
            raise ConfigError("this GPU processor is closed")
        if not 1 <= len(frames) <= self.batch_size:
            raise ConfigError(f"a batch holds 1 to {self.batch_size} frames, got {len(frames)}")
        for payloads, out in frames:
            self._check(payloads, out)
        region = None if roi is None else self._region(roi)
        preview_shape = None if preview_factor is None else self._preview_shape(preview_factor)
        slot_index = self._submitted % SLOTS
        slot = self._slots[slot_index]
        if slot.ticket is not None:
            self._finish(slot.ticket)
        ticket = Ticket(len(frames), slot_index, region.rows * region.cols if region else 0,
                        preview_shape)
        backend = self.backend
        with backend.device_errors("queueing a batch"):
            self._copy_in(slot, [payloads for payloads, _ in frames])
            self._process(slot, len(frames), region, preview_factor)
            self._copy_out(slot, ticket, [out for _, out in frames])
        slot.ticket = ticket
        self._submitted += 1
        self._meters.in_flight += len(frames)
        return ticket

    def collect(self, ticket: Ticket) -> FrameResult:
        """Wait for ``ticket``'s batch: its ``out`` images are filled when this returns."""
        if ticket.result is None:
            self._finish(ticket)
        assert ticket.result is not None
        return ticket.result

    def close(self) -> None:
        """Finish the batches in flight (unless the device failed); drop the buffers."""
        if self._closed:
            return
        self._closed = True
        try:
            for slot in self._slots:
                if slot.ticket is not None and self.backend.failure is None:
                    self._finish(slot.ticket)
        finally:
            self._meters.in_flight = 0
            self._slots.clear()
            self._raw = self._binned = self._partial_sums = self._partial_at = None
            self._dark = self._denominator = self._bad = None

    def _check(self, payloads: Sequence[np.ndarray], out: np.ndarray) -> None:
        if len(payloads) != self.layout.n_modules:
            raise ConfigError(f"{len(payloads)} payloads for {self.layout.n_modules} module(s)")
        for payload in payloads:
            if (payload.dtype != np.uint8 or payload.ndim != 1 or not payload.flags.c_contiguous
                    or payload.size < self.payload_size):
                raise ConfigError(
                    f"a payload must be a contiguous 1-D uint8 array of ≥ {self.payload_size} "
                    f"bytes ({self.bit_depth}-bit frames), got {payload.dtype} {payload.shape}")
        if (tuple(out.shape) != self.layout.shape or out.dtype != self.out_dtype
                or not out.flags.c_contiguous or not out.flags.writeable):
            raise ConfigError(f"out is {out.dtype} {tuple(out.shape)}, expected a writeable "
                              f"C-contiguous {self.out_dtype} {self.layout.shape}")

    def _region(self, roi: RoiSettings) -> _Region:
        """The ROI as ``stats.roi`` clips and bins it."""
        height, width = self.layout.shape
        y0, y1 = clip_span(roi.min_y, roi.size_y, height)
        x0, x1 = clip_span(roi.min_x, roi.size_x, width)
        bin_y = min(max(roi.bin_y, 1), y1 - y0)
        bin_x = min(max(roi.bin_x, 1), x1 - x0)
        return _Region(y0, x0, (y1 - y0) // bin_y, (x1 - x0) // bin_x, bin_y, bin_x)

    def _preview_shape(self, factor: int) -> tuple[int, int]:
        height, width = self.layout.shape
        if not 1 <= factor <= min(height, width):
            raise ConfigError(f"preview binning must be 1 .. {min(height, width)}, got {factor}")
        return height // factor, width // factor

    def _copy_in(self, slot: _Slot, frames: Sequence[Sequence[np.ndarray]]) -> None:
        device, stream, size = self.device, self._h2d, self.payload_size
        device.record(slot.events["h2d"], stream)
        for b, payloads in enumerate(frames):
            for m, payload in enumerate(payloads):
                start = (b * self.layout.n_modules + m) * size
                device.copy_h2d(slot.payloads[start : start + size], payload[:size], stream)
        device.record(slot.events["h2d_end"], stream)

    def _process(self, slot: _Slot, n_frames: int, region: _Region | None,
                 preview_factor: int | None) -> None:
        """Queue decode + assemble, corrections, stats and preview on the compute stream."""
        k, device, stream, nb = self.backend.kernels, self.device, self._compute, \
            self._nb_compute
        events = slot.events
        device.wait_event(stream, events["h2d_end"])
        device.record(events["compute"], stream)
        images = slot.images[:n_frames]
        raw = images if self._raw is None else self._raw[:n_frames]
        k.assemble(nb, slot.payloads, self.layout.n_modules * self.payload_size,
                   self.payload_size, raw, self._geometry, self.bit_depth)
        device.record(events["assemble"], stream)
        if self._raw is not None:
            k.correct(nb, raw, images, self._dark, self._denominator, self._bad,
                      self._has_dark, self._has_flat, self._has_bad)
        elif self._has_bad:
            k.zero_bad(nb, images, self._bad)
        device.record(events["correct"], stream)
        last = slot.images[n_frames - 1]
        if region is not None:
            self._stats(last, region, slot.result)
        device.record(events["stats"], stream)
        if preview_factor is not None:
            self._preview(last, preview_factor, slot)
        device.record(events["preview"], stream)

    def _stats(self, image: Any, region: _Region, result: Any) -> None:
        k, nb = self.backend.kernels, self._nb_compute
        y0, x0 = region.y0, region.x0
        if region.bin_y * region.bin_x > 1:  # the stats of the binned ROI, as roi() gives it
            shape = (region.rows, region.cols)
            if self._binned is None or tuple(self._binned.shape) != shape:
                wide = np.float64 if self.out_dtype.kind == "f" else np.uint64
                self._binned = self.device_empty(shape, wide)
            k.bin_sums(nb, image, y0, x0, region.bin_y, region.bin_x, self._binned)
            image, y0, x0 = self._binned, 0, 0
        k.moments(nb, image, y0, x0, region.rows, region.cols, 0.0, self._partial_sums,
                  self._partial_at, result)

    def _preview(self, image: Any, factor: int, slot: _Slot) -> None:
        shape = self._preview_shape(factor)
        if slot.preview is None or tuple(slot.preview.shape) != shape:
            slot.preview = self.device_empty(shape, self.out_dtype)
            slot.preview_host = self.backend.host_empty(shape, self.out_dtype)
        self.backend.kernels.bin_means(self._nb_compute, image, factor, slot.preview)

    def _copy_out(self, slot: _Slot, ticket: Ticket, outs: Sequence[np.ndarray]) -> None:
        device, stream = self.device, self._d2h
        device.wait_event(stream, slot.events["preview"])
        device.record(slot.events["d2h_start"], stream)
        for b, out in enumerate(outs):
            device.copy_d2h(out, slot.images[b], stream)
        if ticket.roi_pixels:
            device.copy_d2h(slot.result_host, slot.result, stream)
        if ticket.preview_shape is not None:
            device.copy_d2h(slot.preview_host, slot.preview, stream)
        device.record(slot.events["d2h"], stream)

    def _finish(self, ticket: Ticket) -> None:
        """Wait for ``ticket``'s batch, take its results, add up its GPU times."""
        backend = self.backend
        slot = self._slots[ticket.slot]
        backend.wait(slot.events["d2h"], "a batch")
        meters = self._meters
        once = {"stats": ticket.roi_pixels > 0, "preview": ticket.preview_shape is not None}
        spans: dict[str, float] = {}
        with backend.device_errors("timing a batch"):
            for stage, (start, end) in SPANS.items():
                if once.get(stage, True):
                    spans[stage] = self.device.elapsed_ms(slot.events[start], slot.events[end])
                    meters.ms[stage] += spans[stage]
                    meters.counts[stage] += 1 if stage in once else ticket.n_frames
        meters.h2d_bytes += ticket.n_frames * self.layout.n_modules * self.payload_size
        meters.in_flight -= ticket.n_frames
        ticket.result = FrameResult(
            stats_from_result(slot.result_host, ticket.roi_pixels) if ticket.roi_pixels else None,
            slot.preview_host.copy() if ticket.preview_shape is not None else None,
            spans)
        slot.ticket = None


def stats_from_result(result: np.ndarray, n_pixels: int) -> Stats:
    """:class:`Stats` from a ``kernels.moments`` result, by the CPU path's own formulas."""
    total, sum_sq, *weighted = (float(v) for v in result[:8])
    min_at = (int(result[8]), int(result[9]))
    max_at = (int(result[10]), int(result[11]))
    extremes = _Extremes(n_pixels, {min_at: float(result[12]), max_at: float(result[13])})
    return stats_from_moments(extremes, total, sum_sq, weighted, min_at, max_at)
