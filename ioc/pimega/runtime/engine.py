"""The acquisition engine: owns every thread, queue and counter of one back-end node.

It is handed its frame sources (TCP, replay, RDMA …), its detector control and its backend
(CPU or GPU), and implements :class:`~pimega.runtime.node.NodeControl`::

    sources ──▶ FrameRing per module ──▶ pipeline thread: match frame numbers across modules
        → backend processor (decode + assemble + corrections, straight into a pooled image)
        → stages (statistics, preview: rate-limited) → consumers (file writer, live
          reconstruction, … each on its own thread with a bounded queue)

Threads (all stopped by :meth:`Acquisition.close`): the sources' loops, one per consumer, and
one pipeline thread per acquisition. Every hand-off is bounded: a full image pool (a lossless
consumer behind) stalls the pipeline, a stalled pipeline fills the rings, full rings stop the
receivers, and TCP pushes back on the sender. What is lost is counted where it is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError
from pimega.core.frame import Frame, FrameInfo
from pimega.core.geometry import ArrayLayout
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.framing import FrameExpectation, IngestSink
from pimega.ingest.ring import FrameRing
from pimega.ingest.source import FrameSource
from pimega.pipeline.backend import Backend, CpuBackend, FrameProcessor
from pimega.pipeline.correct import Corrections, RecursiveFilter, output_dtype
from pimega.pipeline.stats import Stats, preview_factor
from pimega.writer.hdf5 import NexusMetadata

from .capture import FileWriter
from .consumers import Consumer, ConsumerRunner
from .detector import DetectorControl, TriggerInput, TriggerMode
from .matcher import FrameMatcher
from .meters import RateMeter, StageTimer
from .node import AcquisitionEnded, Event, Listener
from .pool import ImagePool
from .process import ProcessingProcessor, References
from .recon import LiveRecon, ReconSettings, ReconStatus, SliceUpdate
from .settings import AcquireSettings, CaptureSettings, next_settings
from .stages import PreviewStage, RoiSettings, Stage, StatsStage
from .status import DetectorState, StageStatus, Status

log = logging.getLogger(__name__)

POLL_S = 0.1
JOIN_S = 5.0


class _StageSlot:
    """A stage with its timer, the time it last ran (rate-limited stages) and, since the node
    opened, the frames it processed and those its rate limit skipped (plugin counters)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.timer = StageTimer()
        self.last_run = 0.0
        self.total = 0
        self.skipped = 0

    def run(self, frame: Frame, now: float, last_frame: bool) -> None:
        interval = self.stage.interval_s()
        if interval is not None and not last_frame and now - self.last_run < interval:
            self.skipped += 1
            return
        t0 = time.perf_counter()
        self.stage.process(frame)
        self.timer.add(time.perf_counter() - t0)
        self.last_run = now
        self.total += 1


class _FrameTimes:
    """Time (ns since the Unix epoch) of the last ``size`` frames by unique id: written by
    the pipeline thread, read lock-free by the IOC (a stale slot reads as unknown)."""

    def __init__(self, size: int = 1024) -> None:
        self._ids = np.full(size, -1, np.int64)
        self._times = np.zeros(size, np.int64)

    def add(self, unique_id: int, timestamp_ns: int) -> None:
        slot = unique_id % len(self._ids)
        self._ids[slot] = -1
        self._times[slot] = timestamp_ns
        self._ids[slot] = unique_id

    def get(self, unique_id: int) -> int | None:
        slot = unique_id % len(self._ids)
        timestamp = int(self._times[slot])
        return timestamp if self._ids[slot] == unique_id else None


class Acquisition:
    """Receive, process, write and publish the frames of one detector node."""

    def __init__(
        self,
        layout: ArrayLayout,
        sources: Sequence[FrameSource],
        *,
        detector: DetectorControl | None = None,
        backend: Backend | None = None,
        ring_slots: int = 32,
        image_buffers: int = 8,
        preview_max_pixels: int = 1536 * 1536,
    ) -> None:
        self.layout = layout
        self.settings = AcquireSettings()
        self.roi = RoiSettings()
        self.preview_binning = 0  # 0: smallest factor within preview_max_pixels
        self.preview_max_pixels = preview_max_pixels
        self.sources = tuple(sources)
        self.detector = detector
        self.backend: Backend = backend or CpuBackend()
        module = layout.module
        slot_bytes = module.payload_size(24)  # the largest depth: any depth fits a slot
        self._rings = [FrameRing(ring_slots, slot_bytes, self.backend.host_empty)
                       for _ in range(layout.n_modules)]
        self._counters = [ModuleCounters() for _ in range(layout.n_modules)]
        self._sink = IngestSink(self._rings, self._counters, FrameExpectation(
            module.chips_x, module.chips_y, module.chip_size, self.settings.bit_depth),
            threading.Event())
        self._matcher = FrameMatcher(self._rings)
        self._image_buffers = image_buffers
        self._pool: ImagePool | None = None
        self._listeners: list[Listener] = []
        self.writer = FileWriter(self._emit)
        self._stats = StatsStage(lambda: self.roi, lambda: self.settings.stats_interval_s)
        self._preview = PreviewStage(lambda: self.preview_factor,
                                     lambda: self.settings.preview_interval_s)
        self._stages = [_StageSlot(self._stats), _StageSlot(self._preview)]
        self._consumers: list[ConsumerRunner] = [self.writer.runner]
        self._threads: list[threading.Thread] = []
        self._opened = False
        self.recon = LiveRecon(layout.shape)
        self._recon_runner = self.add_consumer(self.recon, queue_size=4)
        self._decode = StageTimer()
        self._rate = RateMeter()
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._state = DetectorState.IDLE
        self._message = self.backend.notice or "Idle"
        self._acquisitions = 0
        self._processed = 0
        self._unique_id = 0
        self._frame_times = _FrameTimes()
        self._references = References()
        self._recursive = RecursiveFilter()

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> Acquisition:
        """Compile the kernels, start the sources' loops and the consumers' threads."""
        self.backend.warm_up()
        self.recon.warm_up()
        for runner in self._consumers:
            self._spawn(f"consumer-{runner.name}", runner.run)
        for source in self.sources:
            source.open(self._sink, self._spawn)
            log.info("frames from %s", source.description)
        self._opened = True
        return self

    def add_consumer(self, consumer: Consumer, queue_size: int = 4) -> ConsumerRunner:
        """Register a consumer of processed frames (before or after :meth:`open`)."""
        runner = ConsumerRunner(consumer, queue_size)
        self._consumers.append(runner)
        if self._opened:
            self._spawn(f"consumer-{runner.name}", runner.run)
        return runner

    def close(self) -> None:
        """Stop acquiring, close the file, end every thread."""
        self.stop()
        self.wait(timeout=JOIN_S)
        self.writer.stop()
        self.writer.wait(timeout=JOIN_S)
        for ring in self._rings:
            ring.close()
        for source in self.sources:
            source.close()
        if self.detector is not None:
            self.detector.close()
        for runner in self._consumers:
            runner.close()
        for thread in self._threads:
            thread.join(timeout=JOIN_S)

    def __enter__(self) -> Acquisition:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event)

    # -- settings ---------------------------------------------------------------------------

    @property
    def acquiring(self) -> bool:
        return not self._idle.is_set()

    def configure(self, **changes: Any) -> AcquireSettings:
        """Validate and apply a new settings snapshot; refuse depth changes while acquiring,
        and a trigger mode the detector control cannot follow."""
        new = next_settings(self.settings, self.acquiring, **changes)
        self._check_trigger_mode(new.trigger_mode)
        self.settings = new
        return new

    def _check_trigger_mode(self, mode: TriggerMode) -> None:
        """Without a detector control the sender's own trigger input decides: any mode goes."""
        if self.detector is None or mode == TriggerMode.INTERNAL:
            return
        if mode == TriggerMode.GATED or not isinstance(self.detector, TriggerInput):
            raise ConfigError(f"{mode} trigger needs a detector with that input; this "
                              f"node's detector control offers Internal"
                              + (" and External (cam1:TriggerSoftware)"
                                 if isinstance(self.detector, TriggerInput) else ""))

    def trigger(self) -> None:
        """One software trigger pulse (``cam1:TriggerSoftware``) in External mode."""
        if not self.acquiring or self.settings.trigger_mode != TriggerMode.EXTERNAL:
            raise ConfigError("a software trigger needs a running acquisition in External "
                              "trigger mode")
        if not isinstance(self.detector, TriggerInput):
            raise ConfigError("this node has no trigger input to pulse: triggers reach the "
                              "detector's own input")
        self.detector.trigger()

    def set_roi(self, **changes: int) -> RoiSettings:
        new = self.roi = replace(self.roi, **changes)  # RoiSettings refuses bad values
        return new

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

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.layout.shape

    @property
    def image_dtype(self) -> np.dtype:
        settings = self.settings
        if settings.process is not None:
            return settings.process.output_dtype(dtype_for_depth(settings.bit_depth))
        return output_dtype(settings.bit_depth, settings.corrections)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return ("ingest", "decode", *(s.stage.name for s in self._stages),
                *(c.name for c in self._consumers))

    # -- acquisition ------------------------------------------------------------------------

    def start(self) -> int:
        """Arm the receivers, start the pipeline, ask the detector for frames."""
        with self._lock:
            if self.acquiring:
                raise ConfigError("an acquisition is already running")
            settings = self.settings
            shape, dtype = self.image_shape, self.image_dtype
            if self._pool is None or not self._pool.fits(shape, dtype):
                self._pool = ImagePool(self._image_buffers, shape, dtype, self.backend.host_empty)
            processor = self._processor(settings)
            for ring, counters in zip(self._rings, self._counters, strict=True):
                ring.reset()
                counters.reset_acquisition()
            self._sink.expected.bit_depth = settings.bit_depth
            self._processed = self._matcher.unmatched = 0
            for timer in (self._decode, *(s.timer for s in self._stages)):
                timer.reset()  # consumers work on their own time: theirs count since start
            self._rate.reset()
            self._abort.clear()
            self._idle.clear()
            self._acquisitions += 1
            number = self._acquisitions
            self._set_state(DetectorState.ACQUIRE, "Acquiring")
            self._sink.armed.set()
            self._spawn("pipeline", lambda: self._run_pipeline(number, settings, processor,
                                                               self._pool))
        if self.detector is not None:
            try:
                if settings.trigger_mode == TriggerMode.INTERNAL:
                    self.detector.start(settings.n_images, settings.frame_rate_hz,
                                        settings.bit_depth)
                else:  # _check_trigger_mode let only External on a trigger input through
                    assert isinstance(self.detector, TriggerInput)
                    self.detector.arm(settings.n_images, 1 / settings.frame_rate_hz,
                                      settings.bit_depth)
            except Exception as exc:  # the detector refused: end this acquisition cleanly
                self._fail(f"detector did not start: {exc}")
                self.stop()
        return number

    def _processor(self, settings: AcquireSettings) -> FrameProcessor:
        """The backend's processor; without the engine's own corrections, wrapped to offer
        raw frames to the references and run Proc1's steps."""
        if settings.corrections.shape is not None:
            return self.backend.processor(self.layout, settings.bit_depth, settings.corrections)
        inner = self.backend.processor(self.layout, settings.bit_depth, Corrections())
        return ProcessingProcessor(inner, settings.process, self.image_shape,
                                   dtype_for_depth(settings.bit_depth), self._references,
                                   self._recursive)

    # -- NDPluginProcess (Proc1:) -------------------------------------------------------------

    def save_reference(self, kind: str) -> None:
        """Keep the next raw frame as the ``background`` or ``flat`` reference."""
        self._references.request(kind)

    def references(self) -> dict[str, np.ndarray]:
        """The saved reference frames (float64, the image's shape) by kind."""
        return self._references.saved()

    def reset_filter(self) -> None:
        """Restart Proc1's recursive filter at the next frame."""
        self._recursive.reset()

    def stop(self) -> None:
        """Abort the acquisition; frames already processed stay processed (and written)."""
        if self.acquiring:
            self._abort.set()
        if self.detector is not None:
            self.detector.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no acquisition runs; True when idle."""
        return self._idle.wait(timeout)

    # -- capture ----------------------------------------------------------------------------

    def start_capture(self, settings: CaptureSettings) -> int:
        """Open (or, with lazy_open, prepare) a file; processed frames go to it from now on."""
        return self.writer.start(settings, self._metadata(settings), self.image_shape,
                                 self.image_dtype)

    def stop_capture(self) -> None:
        """Close the file after the frames already handed to the writer."""
        self.writer.stop()

    def wait_capture(self, timeout: float | None = None) -> bool:
        return self.writer.wait(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Flush the open file (SWMR readers see every frame written so far)."""
        return self.writer.flush(timeout)

    # -- live reconstruction ----------------------------------------------------------------

    @property
    def recon_settings(self) -> ReconSettings:
        return self.recon.settings

    def configure_recon(self, **changes: Any) -> ReconSettings:
        """Live reconstruction settings (:class:`ReconSettings`), from the next acquisition."""
        return self.recon.configure(**changes)

    def recon_status(self) -> ReconStatus:
        return self.recon.status(dropped=self._recon_runner.timer.dropped)

    def latest_slices(self) -> SliceUpdate | None:
        return self.recon.latest()

    # -- what the IOC reads -----------------------------------------------------------------

    def latest_preview(self) -> tuple[int, np.ndarray] | None:
        """(unique id, binned copy) of the newest previewed image."""
        return self._preview.latest

    def latest_stats(self) -> tuple[int, Stats] | None:
        return self._stats.latest

    def frame_timestamp_ns(self, unique_id: int) -> int | None:
        """The time (ns since the Unix epoch) of a recent frame, None once forgotten."""
        return self._frame_times.get(unique_id)

    def status(self) -> Status:
        counters = [c.snapshot() | {"ring_used": r.used, "ring_size": r.n_slots}
                    for c, r in zip(self._counters, self._rings, strict=True)]
        received = min((c.frames for c in self._counters), default=0)
        nbytes = sum(c.bytes for c in self._counters)
        corrupt = sum(c.corrupt for c in self._counters)
        lost = sum(c.lost for c in self._counters)
        self._rate.sample(self._processed, nbytes)
        fps, bps = self._rate.rates()
        pool = self._pool
        running = self.acquiring
        ring_used = sum(r.used for r in self._rings)
        ring_size = sum(r.n_slots for r in self._rings)
        ingest_running = bool(self.sources) and all(s.running for s in self.sources)
        stages = [
            StageStatus("ingest", ingest_running, received, 0.0, ring_used, ring_size, lost,
                        error=not ingest_running),
            StageStatus("decode", running, self._decode.frames, 1e3 * self._decode.mean_s,
                        pool.used if pool else 0, self._image_buffers, self._matcher.unmatched),
            *(StageStatus(s.stage.name, running, s.timer.frames, 1e3 * s.timer.mean_s, 0, 0,
                          s.timer.dropped, total=s.total, skipped=s.skipped)
              for s in self._stages),
            *(StageStatus(c.name, self.writer.capturing if c is self.writer.runner else running,
                          c.timer.frames, 1e3 * c.timer.mean_s, c.queue_depth, c.queue_size,
                          c.timer.dropped, error=self._opened and not c.alive)
              for c in self._consumers),
        ]
        writer = self.writer
        return Status(
            state=self._state, message=self._message, backend=self.backend.name,
            bit_depth=self.settings.bit_depth, frames_received=received,
            frames_processed=self._processed, frames_written=writer.written,
            frames_dropped=lost + self._matcher.unmatched + writer.failed
            + writer.runner.timer.dropped,
            corrupt_frames=corrupt, frame_rate_hz=fps, throughput_gbps=bps * 8 / 1e9,
            unique_id=self._unique_id, modules=counters, stages=stages, capture=writer.status,
            buffer_used=ring_used, buffer_size=ring_size, acquisition=self._acquisitions,
            num_filtered=self._recursive.num_filtered,
        )

    # -- the pipeline thread ----------------------------------------------------------------

    def _run_pipeline(self, number: int, settings: AcquireSettings,
                      processor: FrameProcessor, pool: ImagePool | None) -> None:
        assert pool is not None
        try:
            while settings.n_images == 0 or self._processed < settings.n_images:
                frame_set = self._matcher.next_set(self._abort)
                if frame_set is None:
                    break
                index = self._image_slot(pool)
                if index is None:
                    self._matcher.release(frame_set)
                    break
                t0 = time.perf_counter()
                processor.process([ring.slots[slot] for ring, (slot, _) in
                                   zip(self._rings, frame_set, strict=True)], pool.images[index])
                self._matcher.release(frame_set)
                self._decode.add(time.perf_counter() - t0)
                self._unique_id += 1
                header = frame_set[0][1]
                info = FrameInfo(self._unique_id, header.frame_number, header.timestamp_ns,
                                 int(header.image_key), header.angle_deg, number,
                                 header.has_tomo)
                self._frame_times.add(info.unique_id, info.timestamp_ns)
                frame = Frame(info, pool.images[index])
                last = bool(settings.n_images) and self._processed + 1 == settings.n_images
                now = time.monotonic()
                for slot in self._stages:
                    slot.run(frame, now, last)
                for runner in self._consumers:
                    runner.offer(pool, index, info)
                pool.release(index)
                self._processed += 1
        except Exception as exc:  # keep the IOC alive; the reason goes to the status PV
            log.exception("pipeline failed")
            self._fail(f"pipeline failed: {exc}")
        finally:
            self._sink.armed.clear()
            if self._abort.is_set() and self.detector is not None:
                self.detector.stop()
            if self._state is DetectorState.ACQUIRE:
                aborted = self._abort.is_set()
                self._set_state(
                    DetectorState.ABORTED if aborted else DetectorState.IDLE,
                    f"{'Aborted' if aborted else 'Done'}: {self._processed} frames",
                )
            ended = AcquisitionEnded(number, self._state, self._message, self._processed)
            self._idle.set()  # first: a start made when the event arrives must find it idle
            self._emit(ended)

    def _image_slot(self, pool: ImagePool) -> int | None:
        while not self._abort.is_set():
            index = pool.acquire(POLL_S)
            if index is not None:
                return index
        return None

    def _metadata(self, capture: CaptureSettings) -> NexusMetadata:
        s, layout = self.settings, self.layout
        return NexusMetadata(
            bit_depth=s.bit_depth, count_time_s=s.acquire_time_s, frame_time_s=s.acquire_period_s,
            n_modules=layout.n_modules, module_shape=layout.module.shape,
            layout=f"{layout.modules_x}x{layout.modules_y} modules",
            module_origins=tuple(layout.module_origin(m) for m in range(layout.n_modules)),
            definition=capture.definition, mx=capture.mx,
            processing=s.process.record() if s.process is not None else {},
        )

    def _set_state(self, state: DetectorState, message: str) -> None:
        self._state, self._message = state, message

    def _fail(self, message: str) -> None:
        log.error(message)
        self._set_state(DetectorState.ERROR, message)

