"""The acquisition engine: owns every thread, queue and counter of one back-end node.

Threads (all daemon, all stopped by :meth:`Acquisition.close`):

- ``ingest-N`` (one per module): accept a TCP connection, receive frames into the module's
  :class:`FrameRing` until the sender goes away, accept the next one (reconnect).
- ``pipeline`` (one per acquisition): take one frame per module with the same frame number,
  decode and assemble it into a pooled image, correct it, compute stats and the preview when
  due, hand it to the writer or give the buffer back.
- ``writer``: write the frames of a capture to HDF5/NeXus and give their buffers back.

Every hand-off is bounded: a full image pool stalls the pipeline, a stalled pipeline fills the
rings, full rings stop reading the sockets, and TCP pushes back on the sender. Nothing is
dropped silently; what is lost is counted per stage. The IOC and the tests drive this class.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError, PimegaError, WriterError
from pimega.core.geometry import ArrayLayout
from pimega.core.wire import FrameHeader
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.ring import FrameRing
from pimega.ingest.tcp import FrameExpectation, TcpListener, receive
from pimega.pipeline import kernels, stats_kernel
from pimega.pipeline.assemble import decode_assemble
from pimega.pipeline.correct import apply_corrections, output_dtype
from pimega.pipeline.stats import Stats, bin_for_preview, compute_stats, preview_factor, roi
from pimega.writer.hdf5 import NexusMetadata, NexusWriter

from .detector import DetectorControl
from .meters import RateMeter, StageTimer
from .settings import AcquireSettings, CaptureSettings
from .status import CaptureStatus, DetectorState, StageStatus, Status

log = logging.getLogger(__name__)

POLL_S = 0.1


@dataclass(frozen=True)
class FrameInfo:
    """What travels with a processed image: its identity and the tomography key."""

    unique_id: int
    frame_number: int
    timestamp_ns: int
    image_key: int
    angle_deg: float


@dataclass(frozen=True)
class RoiSettings:
    """NDROI region feeding the statistics (size 0: to the edge of the image)."""

    min_x: int = 0
    min_y: int = 0
    size_x: int = 0
    size_y: int = 0
    bin_x: int = 1
    bin_y: int = 1


class ImagePool:
    """Preallocated output images handed between the pipeline and the writer by index."""

    def __init__(self, n: int, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.images = np.empty((n, *shape), dtype=dtype)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(n):
            self._free.put(i)

    def fits(self, shape: tuple[int, int], dtype: np.dtype) -> bool:
        return self.images.shape[1:] == shape and self.images.dtype == dtype

    def acquire(self, stop: threading.Event) -> int | None:
        while not stop.is_set():
            try:
                return self._free.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    def release(self, index: int) -> None:
        self._free.put(index)

    @property
    def n_free(self) -> int:
        return self._free.qsize()


class _Capture:
    """One HDF5 capture as the pipeline and the writer thread share it."""

    def __init__(self, settings: CaptureSettings) -> None:
        self.settings = settings
        self.routed = 0
        self.status = CaptureStatus(active=True, filename=settings.filename)
        self.done = threading.Event()

    def wants_frame(self) -> bool:
        n = self.settings.num_capture
        return not self.done.is_set() and (n == 0 or self.routed < n)


class Acquisition:
    """Receive, process, write and publish the frames of one detector node."""

    def __init__(
        self,
        layout: ArrayLayout,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ring_slots: int = 32,
        image_buffers: int = 8,
        preview_max_pixels: int = 1536 * 1536,
    ) -> None:
        self.layout = layout
        self.settings = AcquireSettings()
        self.roi = RoiSettings()
        self.preview_binning = 0  # 0: smallest factor within preview_max_pixels
        self.preview_max_pixels = preview_max_pixels
        self._listen = (host, port)
        self._listener: TcpListener | None = None
        self._detector: DetectorControl | None = None
        module = layout.module
        slot_bytes = module.payload_size(24)  # the largest depth: any depth fits a slot
        self._rings = [FrameRing(ring_slots, slot_bytes) for _ in range(layout.n_modules)]
        self._counters = [ModuleCounters() for _ in range(layout.n_modules)]
        self._expected = FrameExpectation(
            chips_x=module.chips_x, chips_y=module.chips_y, chip_size=module.chip_size,
            bit_depth=self.settings.bit_depth,
        )
        self._image_buffers = image_buffers
        self._pool: ImagePool | None = None
        self._raw: np.ndarray | None = None
        self._armed = threading.Event()
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._threads: list[threading.Thread] = []
        self._writer_q: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=image_buffers + 4)
        self._capture: _Capture | None = None
        self._lock = threading.Lock()
        self._state = DetectorState.IDLE
        self._message = "Idle"
        self._processed = 0
        self._written = 0
        self._unmatched = 0
        self._write_failed = 0
        self._unique_id = 0
        self._timers = {name: StageTimer() for name in ("decode", "correct", "stats", "write")}
        self._rate = RateMeter()
        self._preview: tuple[int, np.ndarray] | None = None
        self._stats: Stats | None = None

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> tuple[str, int]:
        """Compile the kernels, listen for the modules, start the ingest and writer threads."""
        kernels.warm_up()
        stats_kernel.warm_up()
        self._listener = TcpListener(*self._listen)
        for m in range(self.layout.n_modules):
            self._spawn(f"ingest-{m}", self._run_ingest)
        self._spawn("writer", self._run_writer)
        log.info("listening for %d module(s) on %s:%d", self.layout.n_modules, *self.address)
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise PimegaError("the engine is not open")
        return self._listener.address

    def attach_detector(self, detector: DetectorControl) -> None:
        """The detector that :meth:`start` asks for frames (none: frames come unasked)."""
        self._detector = detector

    def close(self) -> None:
        """Stop acquiring, close the file, end every thread."""
        self.stop()
        self.wait(timeout=5)
        self.stop_capture()
        self._closing.set()
        self._writer_q.put(None)
        for ring in self._rings:
            ring.close()
        if self._listener is not None:
            self._listener.close()
        if self._detector is not None:
            self._detector.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Acquisition:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    # -- control ----------------------------------------------------------------------------

    @property
    def acquiring(self) -> bool:
        return not self._idle.is_set()

    def configure(self, **changes: Any) -> AcquireSettings:
        """Validate and apply acquisition settings; refuse depth changes while acquiring."""
        new = replace(self.settings, **changes)
        if self.acquiring and new.bit_depth != self.settings.bit_depth:
            raise ConfigError("the counter depth cannot change while acquiring")
        self.settings = new
        return new

    def set_roi(self, **changes: int) -> RoiSettings:
        new = replace(self.roi, **changes)
        if min(new.min_x, new.min_y, new.size_x, new.size_y) < 0 or min(new.bin_x, new.bin_y) < 1:
            raise ConfigError(f"ROI needs min/size ≥ 0 and binning ≥ 1, got {new}")
        self.roi = new
        return new

    def start(self) -> None:
        """Arm the receivers, start the pipeline, ask the detector for frames."""
        with self._lock:
            if self.acquiring:
                raise ConfigError("an acquisition is already running")
            settings = self.settings
            self._prepare_buffers(settings)
            for ring, counters in zip(self._rings, self._counters, strict=True):
                ring.reset()
                counters.reset_acquisition()
            self._expected.bit_depth = settings.bit_depth
            self._processed = self._unmatched = 0
            for timer in self._timers.values():
                timer.reset()
            self._rate.reset()
            self._abort.clear()
            self._idle.clear()
            self._set_state(DetectorState.ACQUIRE, "Acquiring")
            self._armed.set()
            threading.Thread(target=self._run_pipeline, args=(settings,), name="pipeline",
                             daemon=True).start()
        if self._detector is not None:
            try:
                self._detector.start(settings.n_images, settings.frame_rate_hz, settings.bit_depth)
            except Exception as exc:  # the detector refused: end this acquisition cleanly
                self._fail(f"detector did not start: {exc}")
                self.stop()

    def stop(self) -> None:
        """Abort the acquisition; frames already processed stay processed (and written)."""
        if self.acquiring:
            self._abort.set()
        if self._detector is not None:
            self._detector.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no acquisition runs; True when idle."""
        return self._idle.wait(timeout)

    def start_capture(self, settings: CaptureSettings) -> None:
        """Open (or, with lazy_open, prepare) a file; processed frames go to it from now on."""
        with self._lock:
            if self._capture is not None and not self._capture.done.is_set():
                raise ConfigError("a capture is already running")
            capture = _Capture(settings)
            self._capture = capture
        self._writer_q.put(("open", capture, self._metadata()))

    def stop_capture(self) -> None:
        """Close the file after the frames already handed to the writer."""
        capture = self._capture
        if capture is not None and not capture.done.is_set():
            self._writer_q.put(("close", capture))

    def wait_capture(self, timeout: float | None = None) -> bool:
        capture = self._capture
        return True if capture is None else capture.done.wait(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Flush the open file (SWMR readers see every frame written so far)."""
        done = threading.Event()
        self._writer_q.put(("flush", done))
        return done.wait(timeout)

    # -- what the IOC reads -----------------------------------------------------------------

    def latest_preview(self) -> tuple[int, np.ndarray] | None:
        """(unique id, binned copy) of the newest previewed image."""
        return self._preview

    def latest_stats(self) -> Stats | None:
        return self._stats

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.layout.shape

    @property
    def image_dtype(self) -> np.dtype:
        return output_dtype(self.settings.bit_depth, self.settings.corrections)

    def status(self) -> Status:
        counters = [c.snapshot() | {"ring_used": r.used, "ring_size": r.n_slots}
                    for c, r in zip(self._counters, self._rings, strict=True)]
        received = min((c.frames for c in self._counters), default=0)
        nbytes = sum(c.bytes for c in self._counters)
        corrupt = sum(c.corrupt for c in self._counters)
        gaps = sum(c.gaps for c in self._counters)
        self._rate.sample(self._processed, nbytes)
        fps, bps = self._rate.rates()
        capture = self._capture.status if self._capture else CaptureStatus()
        pool = self._pool
        pool_used = (self._image_buffers - pool.n_free) if pool else 0
        running = self.acquiring
        ring_used = sum(r.used for r in self._rings)
        ring_size = sum(r.n_slots for r in self._rings)
        stages = [
            StageStatus("ingest", bool(self._threads), received, 0.0, ring_used, ring_size,
                        corrupt + gaps),
            StageStatus("decode", running, self._timers["decode"].frames,
                        1e3 * self._timers["decode"].mean_s, pool_used, self._image_buffers,
                        self._unmatched),
            StageStatus("correct", running, self._timers["correct"].frames,
                        1e3 * self._timers["correct"].mean_s, 0, 0, 0),
            StageStatus("stats", running, self._timers["stats"].frames,
                        1e3 * self._timers["stats"].mean_s, 0, 0, 0),
            StageStatus("write", capture.active, self._timers["write"].frames,
                        1e3 * self._timers["write"].mean_s, self._writer_q.qsize(),
                        self._writer_q.maxsize, self._write_failed),
        ]
        return Status(
            state=self._state, message=self._message, backend="CPU",
            bit_depth=self.settings.bit_depth, frames_received=received,
            frames_processed=self._processed, frames_written=self._written,
            frames_dropped=corrupt + gaps + self._unmatched + self._write_failed,
            corrupt_frames=corrupt, frame_rate_hz=fps, throughput_gbps=bps * 8 / 1e9,
            unique_id=self._unique_id, modules=counters, stages=stages, capture=capture,
            buffer_used=ring_used, buffer_size=ring_size,
        )

    # -- threads ----------------------------------------------------------------------------

    def _run_ingest(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            conn = self._listener.accept(self._closing)
            if conn is None:
                continue
            with conn:
                receive(conn, self._rings, self._counters, self._expected, self._armed,
                        self._closing)

    def _prepare_buffers(self, settings: AcquireSettings) -> None:
        shape = self.layout.shape
        dtype = output_dtype(settings.bit_depth, settings.corrections)
        if self._pool is None or not self._pool.fits(shape, dtype):
            self._pool = ImagePool(self._image_buffers, shape, dtype)
        raw_dtype = dtype_for_depth(settings.bit_depth)
        corrected = dtype != raw_dtype or settings.corrections.bad_pixel_mask is not None
        self._raw = np.empty(shape, raw_dtype) if corrected else None

    def _next_frame_set(self) -> list[tuple[int, FrameHeader]] | None:
        """One committed slot per module, all with the same frame number (None: aborted)."""
        heads: list[tuple[int, FrameHeader] | None] = [None] * len(self._rings)
        while True:
            for m, ring in enumerate(self._rings):
                while heads[m] is None:
                    if self._abort.is_set() or self._closing.is_set():
                        for head, r in zip(heads, self._rings, strict=True):
                            if head is not None:
                                r.release(head[0])
                        return None
                    heads[m] = ring.next_filled(timeout=POLL_S)
            full = [h for h in heads if h is not None]
            newest = max(h[1].frame_number for h in full)
            lagging = [m for m, h in enumerate(full) if h[1].frame_number < newest]
            if not lagging:
                return full
            for m in lagging:
                self._rings[m].release(full[m][0])
                heads[m] = None
                self._unmatched += 1

    def _run_pipeline(self, settings: AcquireSettings) -> None:
        pool = self._pool
        assert pool is not None
        module = self.layout.module
        one_module = ArrayLayout(module)
        payload_size = module.payload_size(settings.bit_depth)
        h, w = module.shape
        origins = [self.layout.module_origin(m) for m in range(self.layout.n_modules)]
        tile = (np.empty(module.shape, dtype_for_depth(settings.bit_depth))
                if self.layout.n_modules > 1 else None)
        corrections = settings.corrections
        last_preview = last_stats = 0.0
        timers = self._timers
        try:
            while settings.n_images == 0 or self._processed < settings.n_images:
                heads = self._next_frame_set()
                if heads is None:
                    break
                index = pool.acquire(self._abort)
                if index is None:
                    for (slot, _), ring in zip(heads, self._rings, strict=True):
                        ring.release(slot)
                    break
                t0 = time.perf_counter()
                image = pool.images[index]
                target = image if self._raw is None else self._raw
                for (slot, _), ring, (y0, x0) in zip(heads, self._rings, origins, strict=True):
                    payload = ring.slots[slot, :payload_size].reshape(1, payload_size)
                    if tile is None:  # one module: straight into the image
                        decode_assemble(payload, one_module, settings.bit_depth, out=target)
                    else:  # the kernel writes contiguous images: assemble, then place
                        decode_assemble(payload, one_module, settings.bit_depth, out=tile)
                        target[y0 : y0 + h, x0 : x0 + w] = tile
                    ring.release(slot)
                t1 = time.perf_counter()
                timers["decode"].add(t1 - t0)
                if self._raw is not None:
                    apply_corrections(self._raw, corrections, out=image)
                    timers["correct"].add(time.perf_counter() - t1)
                self._unique_id += 1
                header = heads[0][1]
                info = FrameInfo(self._unique_id, header.frame_number, header.timestamp_ns,
                                 int(header.image_key), header.angle_deg)
                last = settings.n_images and self._processed + 1 == settings.n_images
                now = time.monotonic()
                if last or now - last_stats >= settings.stats_interval_s:
                    t2 = time.perf_counter()
                    r = self.roi
                    region = roi(image, r.min_x, r.min_y, r.size_x, r.size_y, r.bin_x, r.bin_y)
                    self._stats = compute_stats(region)
                    timers["stats"].add(time.perf_counter() - t2)
                    last_stats = now
                if last or now - last_preview >= settings.preview_interval_s:
                    self._publish_preview(info, image)
                    last_preview = now
                capture = self._capture
                if capture is not None and capture.wants_frame():
                    capture.routed += 1
                    self._writer_q.put(("frame", capture, index, info))
                else:
                    pool.release(index)
                self._processed += 1
        except Exception as exc:  # keep the IOC alive; the reason goes to the status PV
            log.exception("pipeline failed")
            self._fail(f"pipeline failed: {exc}")
        finally:
            self._armed.clear()
            if self._abort.is_set() and self._detector is not None:
                self._detector.stop()
            if self._state is DetectorState.ACQUIRE:
                aborted = self._abort.is_set()
                self._set_state(
                    DetectorState.ABORTED if aborted else DetectorState.IDLE,
                    f"{'Aborted' if aborted else 'Done'}: {self._processed} frames",
                )
            self._idle.set()

    def set_preview_binning(self, factor: int) -> None:
        """Bin previews by ``factor`` (0: just enough to fit ``preview_max_pixels``)."""
        if not 0 <= factor <= min(self.image_shape):
            raise ConfigError(f"preview binning must be 0 (auto) .. {min(self.image_shape)}, "
                              f"got {factor}")
        self.preview_binning = factor

    @property
    def preview_factor(self) -> int:
        """Binning of the preview: set, or the smallest within ``preview_max_pixels``."""
        return self.preview_binning or preview_factor(self.image_shape, self.preview_max_pixels)

    @property
    def preview_shape(self) -> tuple[int, int]:
        height, width = self.image_shape
        return height // self.preview_factor, width // self.preview_factor

    def _publish_preview(self, info: FrameInfo, image: np.ndarray) -> None:
        preview = bin_for_preview(image, self.preview_factor)
        if preview is image:  # unbinned: the pooled buffer will be reused, keep a copy
            preview = image.copy()
        self._preview = (info.unique_id, preview)

    def _run_writer(self) -> None:
        writer: NexusWriter | None = None
        opened = False
        while True:
            item = self._writer_q.get()
            if item is None:
                break
            kind, *args = item
            if kind == "flush":
                if writer is not None and opened:
                    writer.flush()
                args[0].set()
                continue
            capture: _Capture = args[0]
            if kind == "open":
                self._close_writer(writer)
                writer = NexusWriter(
                    capture.settings.filename, self.layout.shape, self.image_dtype, args[1],
                    compression=capture.settings.compression, swmr=capture.settings.swmr,
                )
                opened = not capture.settings.lazy_open
                if opened:
                    writer = self._guard(capture, writer, writer.open)
            elif kind == "frame":
                index, info = args[1], args[2]
                if writer is not None and not opened:
                    opened = True
                    writer = self._guard(capture, writer, writer.open)
                if writer is not None and not capture.done.is_set():
                    writer = self._write(capture, writer, index, info)
                else:
                    self._write_failed += 1
                assert self._pool is not None
                self._pool.release(index)
                n = capture.settings.num_capture
                if writer is not None and n and writer.frames_written >= n:
                    writer = self._finish(capture, writer)
            elif kind == "close":
                writer = self._finish(capture, writer)
        self._close_writer(writer)

    def _write(self, capture: _Capture, writer: NexusWriter, index: int,
               info: FrameInfo) -> NexusWriter | None:
        assert self._pool is not None
        t0 = time.perf_counter()
        image = self._pool.images[index]
        written = self._guard(capture, writer, lambda: writer.write(
            image, info.frame_number, info.timestamp_ns, info.image_key))
        if written is not None:
            self._timers["write"].add(time.perf_counter() - t0)
            self._written += 1
            capture.status = replace(capture.status, num_captured=writer.frames_written)
        else:
            self._write_failed += 1
        return written

    def _guard(self, capture: _Capture, writer: NexusWriter,
               action: Callable[[], object]) -> NexusWriter | None:
        """Run a writer action; on failure close the file, end the capture, keep the reason."""
        try:
            action()
            return writer
        except (WriterError, OSError, ConfigError) as exc:
            log.error("capture to %s stopped: %s", capture.settings.filename, exc)
            self._close_writer(writer)
            capture.status = replace(capture.status, active=False, error=str(exc),
                                     num_captured=writer.frames_written)
            capture.done.set()
            return None

    def _finish(self, capture: _Capture, writer: NexusWriter | None) -> None:
        """Close the file of a capture that ended (NumCapture reached, or Capture=0)."""
        n = writer.frames_written if writer is not None else capture.status.num_captured
        self._close_writer(writer)
        capture.status = replace(capture.status, active=False, num_captured=n)
        capture.done.set()
        return None

    @staticmethod
    def _close_writer(writer: NexusWriter | None) -> None:
        if writer is not None:
            try:
                writer.close()
            except (WriterError, OSError) as exc:
                log.error("closing %s failed: %s", writer.filename, exc)

    def _metadata(self) -> NexusMetadata:
        s = self.settings
        return NexusMetadata(
            bit_depth=s.bit_depth, count_time_s=s.acquire_time_s, frame_time_s=s.acquire_period_s,
            n_modules=self.layout.n_modules, module_shape=self.layout.module.shape,
            layout=f"{self.layout.modules_x}x{self.layout.modules_y} modules",
        )

    def _set_state(self, state: DetectorState, message: str) -> None:
        self._state, self._message = state, message

    def _fail(self, message: str) -> None:
        log.error(message)
        self._set_state(DetectorState.ERROR, message)

