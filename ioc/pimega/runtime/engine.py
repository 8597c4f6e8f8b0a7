"""The acquisition engine: owns every thread, queue and counter of one back-end node.

It is handed its frame sources (TCP, replay, RDMA …), its detector control and its backend
(CPU or GPU), and implements :class:`~pimega.runtime.node.NodeControl`::

    sources ──▶ FrameRing per module ──▶ pipeline thread: match frame numbers across modules
        → backend processor (decode + assemble + corrections, straight into a pooled image)
        → stages (statistics, preview: rate-limited) → consumers (file writer, live
          reconstruction, … each on its own thread with a bounded queue)

With a conveyor (the GPU backend's processor) the pipeline thread keeps up to
``max_in_flight`` frames on the device: it submits frame k+1 before it collects frame k, asks
the device for the statistics and preview of the frames those stages are due on, and hands
them on as the CPU's would be. The backend is chosen between acquisitions
(:meth:`Acquisition.select_backend`); a failing device ends the acquisition in Error with
its message, never hangs it.

Threads (all stopped by :meth:`Acquisition.close`): the sources' loops, one per consumer, and
one pipeline thread per acquisition. Every hand-off is bounded: a full image pool (a lossless
consumer behind) stalls the pipeline, a stalled pipeline fills the rings, full rings stop the
receivers, and TCP pushes back on the sender. What is lost is counted where it is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError, WriterError
from pimega.core.frame import Frame, FrameInfo
from pimega.core.geometry import ArrayLayout
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.framing import FrameExpectation, IngestSink
from pimega.ingest.ring import FrameRing
from pimega.ingest.source import FrameSource
from pimega.pipeline.backend import (
    BACKEND_CHOICES,
    Backend,
    Conveyor,
    CpuBackend,
    FrameProcessor,
    FrameResult,
    make_backend,
)
from pimega.pipeline.correct import Corrections, RecursiveFilter, output_dtype
from pimega.pipeline.gpu import GpuError
from pimega.pipeline.stats import Stats, preview_factor
from pimega.writer.hdf5 import NexusMetadata

from .capture import FileWriter, write_frame_file
from .consumers import Consumer, ConsumerRunner
from .detector import DetectorControl, TriggerInput, TriggerMode
from .matcher import FrameMatcher, FrameSet
from .meters import RateMeter, StageTimer
from .node import AcquisitionEnded, Listener, Listeners
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

    def due(self, now: float, last_frame: bool) -> bool:
        """Whether the stage runs on a frame at ``now`` (its rate limit)."""
        interval = self.stage.interval_s()
        return interval is None or last_frame or now - self.last_run >= interval

    def run(self, frame: Frame, now: float, last_frame: bool) -> None:
        if not self.due(now, last_frame):
            self.skipped += 1
            return
        self.last_run = now
        self.run_now(frame)

    def run_now(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        self.stage.process(frame)
        self.ran(time.perf_counter() - t0)

    def ran(self, seconds: float) -> None:
        self.timer.add(seconds)
        self.total += 1


@dataclass(slots=True)
class _InFlight:
    """A frame submitted to a conveyor: its ticket, the ring slots and pool image it holds,
    and which stages were asked of the device (``due``: one flag per stage)."""

    ticket: Any
    frame_set: FrameSet
    index: int
    info: FrameInfo
    due: tuple[bool, ...]
    submit_s: float  # pipeline-thread seconds spent submitting


class _OneWait(threading.Event):
    """An abort flag for the matcher that also says "stop" after the first wait for a frame
    (one ring's ``POLL_S``): frames in flight are collected rather than kept waiting."""

    def __init__(self, abort: threading.Event) -> None:
        super().__init__()
        self._abort = abort
        self._asked = False

    def is_set(self) -> bool:
        asked, self._asked = self._asked, True
        return asked or self._abort.is_set()


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
        self._listeners = Listeners()
        self.writer = FileWriter(self._listeners.emit)
        self._stats = StatsStage(lambda: self.roi, lambda: self.settings.stats_interval_s)
        self._preview = PreviewStage(lambda: self.preview_factor,
                                     lambda: self.settings.preview_interval_s)
        self._stages = [_StageSlot(self._stats), _StageSlot(self._preview)]
        self._consumers: list[ConsumerRunner] = [self.writer.runner]
        self._threads: list[threading.Thread] = []
        self._opened = False
        self.recon = LiveRecon(layout.shape)
        self.add_consumer(self.recon, queue_size=4)
        self._decode = StageTimer()
        self._rate = RateMeter()
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._state = DetectorState.IDLE
        self._message = self.backend.notice or "Idle"
        self._backend_message = self.backend.notice
        self._acquisitions = 0
        self._processed = 0
        self._unique_id = 0
        self._frame_times = _FrameTimes()
        self._newest: tuple[ImagePool, int, FrameInfo] | None = None  # held for WriteFile
        self._newest_lock = threading.Lock()
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
        self.backend.close()

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
        self._listeners.add(listener)

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
            try:
                processor = self._processor(settings)
            except GpuError as exc:  # out of memory, a lost device: shown as the node's error
                self._fail(f"acquisition refused: {exc}")
                raise
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
        raw frames to the references and run Proc1's steps. A conveyor is used as it is
        unless Proc1 has steps (the pipeline thread then offers its images to the
        references itself)."""
        if settings.corrections.shape is not None:
            return self.backend.processor(self.layout, settings.bit_depth, settings.corrections)
        inner = self.backend.processor(self.layout, settings.bit_depth, Corrections())
        if settings.process is None and isinstance(inner, Conveyor):
            return inner
        return ProcessingProcessor(inner, settings.process, self.image_shape,
                                   dtype_for_depth(settings.bit_depth), self._references,
                                   self._recursive)

    # -- backend --------------------------------------------------------------------------

    @property
    def backend_choice(self) -> str:
        """What the node was asked to run on: Auto, CPU or GPU (``backend.name`` runs)."""
        return self.backend.choice

    def select_backend(self, choice: str) -> Backend:
        """Run the pipeline on ``choice`` (Auto, CPU or GPU, any case) from the next
        acquisition: refused while acquiring, and GPU where none is usable (the reason is kept
        as the backend message); Auto takes the GPU where one is usable, else the CPU, saying
        why. Blocks while a new GPU backend compiles its kernels (run it off the IOC's loop)."""
        wanted = {c.lower(): c for c in BACKEND_CHOICES}.get(choice.strip().lower())
        if wanted is None:
            raise ConfigError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got "
                              f"{choice!r}")
        self._refuse_while_acquiring(wanted)
        current = self.backend
        if current.choice == wanted and current.status().error is None:
            return current
        keep = (current.name == wanted or (current.name == "GPU" and wanted == "Auto")) \
            and current.status().error is None
        try:
            backend = current if keep else make_backend(wanted)
            if backend is not current:
                backend.warm_up()
                for ring in self._rings:  # made by the old backend: page-lock them now
                    backend.pin(ring.slots)
        except Exception as exc:  # ConfigError (no device), GpuError, a driver's own error
            self._backend_message = f"{wanted} refused: {exc}"
            log.warning("backend %s refused: %s", wanted, exc)
            raise ConfigError(self._backend_message) from exc
        backend.choice = wanted
        with self._lock:
            if self.acquiring:
                if backend is not current:
                    backend.close()
                self._refuse_while_acquiring(wanted)
            self.backend = backend
            if backend is not current:
                self._pool = None  # the next start allocates it with the new backend
        if backend is not current:
            current.close()
        notice = backend.notice if wanted == "Auto" else ""  # why Auto runs on the CPU
        self._backend_message = notice
        if not self.acquiring and self._state is not DetectorState.ERROR:
            self._message = notice or f"Backend: {backend.name}"
        log.info("backend %s chosen: the pipeline runs on the %s", wanted, backend.name)
        return backend

    def _refuse_while_acquiring(self, wanted: str) -> None:
        if self.acquiring:
            self._backend_message = (f"{wanted} refused: the backend cannot change while "
                                     "acquiring")
            raise ConfigError(self._backend_message)

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

    def write_newest(self, settings: CaptureSettings) -> None:
        """NDFile's WriteFile: the newest processed frame into ``settings.filename``."""
        frame = self.newest_frame()
        if frame is None:
            raise ConfigError("no frame to write: none has been processed yet")
        try:
            write_frame_file(settings, self._metadata(settings), frame)
        except (WriterError, OSError) as exc:
            raise ConfigError(f"{settings.filename} not written: {exc}") from None

    # -- live reconstruction ----------------------------------------------------------------

    @property
    def recon_settings(self) -> ReconSettings:
        return self.recon.settings

    def configure_recon(self, **changes: Any) -> ReconSettings:
        """Live reconstruction settings (:class:`ReconSettings`), from the next acquisition."""
        return self.recon.configure(**changes)

    def recon_status(self) -> ReconStatus:
        return self.recon.status()

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
                        self._images_waiting(pool), self._image_buffers, self._matcher.unmatched),
            *(StageStatus(s.stage.name, running, s.timer.frames, 1e3 * s.timer.mean_s, 0, 0,
                          s.timer.dropped, total=s.total, skipped=s.skipped)
              for s in self._stages),
            *(StageStatus(c.name, self.writer.capturing if c is self.writer.runner else running,
                          c.timer.frames, 1e3 * c.timer.mean_s, c.queue_depth, c.queue_size,
                          c.timer.dropped, error=self._opened and not c.alive)
              for c in self._consumers),
        ]
        writer = self.writer
        gpu = self.backend.status()
        return Status(
            state=self._state, message=self._message, backend=self.backend.name,
            bit_depth=self.settings.bit_depth, frames_received=received,
            frames_processed=self._processed, frames_written=writer.written,
            frames_dropped=lost + self._matcher.unmatched + writer.failed
            + writer.runner.timer.dropped,
            corrupt_frames=corrupt, frame_rate_hz=fps, throughput_gbps=bps * 8 / 1e9,
            unique_id=self._unique_id, modules=counters, stages=stages, capture=writer.status,
            buffer_used=ring_used, buffer_size=ring_size, acquisition=self._acquisitions,
            num_filtered=self._recursive.num_filtered, backend_choice=self.backend.choice,
            gpu=gpu, backend_message=gpu.error or self._backend_message,
        )

    # -- the pipeline thread ----------------------------------------------------------------

    def _run_pipeline(self, number: int, settings: AcquireSettings,
                      processor: FrameProcessor, pool: ImagePool | None) -> None:
        assert pool is not None
        try:
            if isinstance(processor, Conveyor):
                self._run_conveyor(settings, processor, pool, number)
            else:
                self._run_frames(settings, processor, pool, number)
        except Exception as exc:  # keep the IOC alive; the reason goes to the status PV
            log.exception("pipeline failed")
            self._fail(f"pipeline failed: {exc}")
        finally:
            if isinstance(processor, Conveyor):
                try:
                    processor.close()
                except Exception as exc:
                    log.warning("closing the GPU processor: %s", exc)
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
            self._listeners.emit(ended)

    def _run_frames(self, settings: AcquireSettings, processor: FrameProcessor,
                    pool: ImagePool, number: int) -> None:
        """One frame at a time: process, then the stages and the consumers."""
        while settings.n_images == 0 or self._processed < settings.n_images:
            frame_set = self._matcher.next_set(self._abort)
            if frame_set is None:
                break
            index = self._image_slot(pool)
            if index is None:
                self._matcher.release(frame_set)
                break
            t0 = time.perf_counter()
            processor.process(self._payloads(frame_set), pool.images[index])
            self._matcher.release(frame_set)
            self._decode.add(time.perf_counter() - t0)
            info = self._frame_info(frame_set, number)
            frame = Frame(info, pool.images[index])
            last = bool(settings.n_images) and self._processed + 1 == settings.n_images
            now = time.monotonic()
            for slot in self._stages:
                slot.run(frame, now, last)
            self._hand_on(pool, index, info)

    def _run_conveyor(self, settings: AcquireSettings, conveyor: Conveyor, pool: ImagePool,
                      number: int) -> None:
        """Frames in flight on the device: frame k+1 is submitted before frame k is
        collected (up to ``max_in_flight``); a frame not there at once (one ring) or no pool
        image free lets the oldest one be collected first. Frames in flight when the
        acquisition stops are still collected and handed on; after a failure they are let go."""
        in_flight: deque[_InFlight] = deque()
        offer_raw = settings.corrections.shape is None  # the images are the raw frames
        one_ring = len(self._rings) == 1
        submitted = 0
        try:
            while True:
                more = settings.n_images == 0 or submitted < settings.n_images
                if in_flight and (not more or len(in_flight) >= conveyor.max_in_flight):
                    self._deliver(conveyor, in_flight.popleft(), pool, offer_raw)
                    continue
                if not more:
                    break
                waiting = _OneWait(self._abort) if in_flight and one_ring else self._abort
                frame_set = self._matcher.next_set(waiting)
                if frame_set is None:
                    if in_flight and not self._abort.is_set():
                        self._deliver(conveyor, in_flight.popleft(), pool, offer_raw)
                        continue
                    break
                index = self._free_image(pool, conveyor, in_flight, offer_raw)
                if index is None:
                    self._matcher.release(frame_set)
                    break
                last = bool(settings.n_images) and submitted + 1 == settings.n_images
                try:
                    in_flight.append(self._submit(conveyor, frame_set, pool, index, number,
                                                  last))
                except BaseException:
                    self._matcher.release(frame_set)
                    pool.release(index)
                    raise
                submitted += 1
            while in_flight:  # stopped: what is on the device still reaches the consumers
                self._deliver(conveyor, in_flight.popleft(), pool, offer_raw)
        finally:
            for item in in_flight:  # a failure: give back what the lost frames held
                self._matcher.release(item.frame_set)
                pool.release(item.index)

    def _submit(self, conveyor: Conveyor, frame_set: FrameSet, pool: ImagePool, index: int,
                number: int, last: bool) -> _InFlight:
        """Queue one frame, with the stats and preview of the stages due on it."""
        t0 = time.perf_counter()
        now = time.monotonic()
        due = tuple(slot.due(now, last) for slot in self._stages)
        for slot, run in zip(self._stages, due, strict=True):
            if run:
                slot.last_run = now
        wanted = {slot.stage for slot, run in zip(self._stages, due, strict=True) if run}
        ticket = conveyor.submit(
            [(self._payloads(frame_set), pool.images[index])],
            self._stats.region if self._stats in wanted else None,
            self._preview.factor if self._preview in wanted else None)
        info = self._frame_info(frame_set, number)
        return _InFlight(ticket, frame_set, index, info, due, time.perf_counter() - t0)

    def _deliver(self, conveyor: Conveyor, item: _InFlight, pool: ImagePool,
                 offer_raw: bool) -> None:
        """Collect a frame from the device; its stages (the device's results where it computed
        them) and consumers."""
        t0 = time.perf_counter()
        try:
            result = conveyor.collect(item.ticket)
        except BaseException:
            pool.release(item.index)  # the frame is lost with the device
            raise
        finally:
            self._matcher.release(item.frame_set)
        self._decode.add(item.submit_s + time.perf_counter() - t0)
        image = pool.images[item.index]
        if offer_raw:
            self._references.offer(image)
        frame = Frame(item.info, image)
        for slot, run in zip(self._stages, item.due, strict=True):
            if not run:
                slot.skipped += 1
            elif not self._accept(slot, item.info.unique_id, result):
                slot.run_now(frame)  # not computed on the device: on the host, as before
        self._hand_on(pool, item.index, item.info)

    def _accept(self, slot: _StageSlot, unique_id: int, result: FrameResult) -> bool:
        """Hand a stage what the device computed for it; False when it computed nothing."""
        if slot.stage is self._stats and result.stats is not None:
            self._stats.accept(unique_id, result.stats)
        elif slot.stage is self._preview and result.preview is not None:
            self._preview.accept(unique_id, result.preview)
        else:
            return False
        slot.ran(result.gpu_ms.get(slot.stage.name, 0.0) / 1e3)
        return True

    def _free_image(self, pool: ImagePool, conveyor: Conveyor, in_flight: deque[_InFlight],
                    offer_raw: bool) -> int | None:
        """A pool image for the next frame; while none is free, frames in flight are
        collected (they hold images too); None once aborted."""
        while not self._abort.is_set():
            index = pool.acquire(0 if in_flight else POLL_S)
            if index is not None:
                return index
            if in_flight:
                self._deliver(conveyor, in_flight.popleft(), pool, offer_raw)
        return None

    def _payloads(self, frame_set: FrameSet) -> list[np.ndarray]:
        """The ring slot of each module's payload in a matched frame set."""
        return [ring.slots[slot] for ring, (slot, _) in zip(self._rings, frame_set, strict=True)]

    def _frame_info(self, frame_set: FrameSet, number: int) -> FrameInfo:
        """The next unique id for a frame set, its header's numbers and time."""
        self._unique_id += 1
        header = frame_set[0][1]
        info = FrameInfo(self._unique_id, header.frame_number, header.timestamp_ns,
                         int(header.image_key), header.angle_deg, number, header.has_tomo)
        self._frame_times.add(info.unique_id, info.timestamp_ns)
        return info

    def _hand_on(self, pool: ImagePool, index: int, info: FrameInfo) -> None:
        """Offer a processed image to the consumers, keep it as the newest frame (its slot
        held until the next one replaces it) and let the pipeline's hold go."""
        for runner in self._consumers:
            runner.offer(pool, index, info)
        with self._newest_lock:
            previous, self._newest = self._newest, (pool, index, info)
        if previous is not None:
            previous[0].release(previous[1])
        self._processed += 1

    def _images_waiting(self, pool: ImagePool | None) -> int:
        """Pool images in the pipeline or a consumer's queue (not the one kept as newest)."""
        if pool is None:
            return 0
        newest = self._newest
        return pool.used - (newest is not None and newest[0] is pool)

    def newest_frame(self) -> Frame | None:
        """A copy of the newest processed frame (None before the first)."""
        with self._newest_lock:
            if self._newest is None:
                return None
            pool, index, info = self._newest
            pool.retain(index)  # the copy below runs outside the lock
        try:
            return Frame(info, pool.images[index].copy())
        finally:
            pool.release(index)

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
            definition=capture.definition, mx=capture.mx, sample_name=capture.sample_name,
            processing=s.process.record() if s.process is not None else {},
        )

    def _set_state(self, state: DetectorState, message: str) -> None:
        self._state, self._message = state, message

    def _fail(self, message: str) -> None:
        log.error(message)
        self._set_state(DetectorState.ERROR, message)

