"""The file writer as a lossless consumer: one HDF5/NeXus file per capture.

Captures start and stop independently of acquisitions, as areaDetector's NDFile: a capture
opened before Acquire takes every processed frame until ``num_capture`` frames are written or
it is stopped. A capture ``per_frame`` (NDFile's Single mode with AutoSave) writes each frame
into a file of its own, numbered on from its naming. Open, close and flush run on the
writer's own thread in order with its frames (:meth:`ConsumerRunner.call`), so a close always
follows the frames routed before it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from pimega.core.errors import ConfigError, WriterError
from pimega.core.frame import Frame, FrameInfo
from pimega.core.naming import full_file_name, next_free_number
from pimega.writer.hdf5 import NexusMetadata, NexusWriter

from .consumers import ConsumerRunner
from .node import CaptureEnded, Listener
from .settings import CaptureSettings
from .status import CaptureStatus

log = logging.getLogger(__name__)


class _Capture:
    """One capture as the pipeline thread and the writer thread share it."""

    def __init__(self, number: int, settings: CaptureSettings, metadata: NexusMetadata,
                 shape: tuple[int, int], dtype: np.dtype) -> None:
        self.number = number
        self.settings = settings
        self.metadata = metadata
        self.shape, self.dtype = shape, dtype
        self.routed = 0
        self.stopping = False  # no frame is routed once a stop is asked for
        self.writer: NexusWriter | None = None
        self.status = CaptureStatus(active=True, filename=settings.filename)
        self.done = threading.Event()
        naming = settings.per_frame
        self.next_number = naming.first_number if naming is not None else 0

    def wants_frame(self) -> bool:
        n = self.settings.num_capture
        return not (self.stopping or self.done.is_set()) and (n == 0 or self.routed < n)


def write_frame_file(settings: CaptureSettings, metadata: NexusMetadata, frame: Frame) -> None:
    """One frame into a NeXus file of its own, ``settings.filename`` (its compression)."""
    info = frame.info
    with NexusWriter(settings.filename, frame.image.shape, frame.image.dtype, metadata,
                     compression=settings.compression,
                     compression_options=settings.compression_options) as writer:
        writer.write(frame.image, 0, info.timestamp_ns, info.image_key, info.angle_deg,
                     unique_id=info.unique_id, detector_frame_number=info.frame_number)


class FileWriter:
    """Consumer ``write``: frames of the open capture into its file; loses nothing."""

    name = "write"
    lossless = True

    def __init__(self, emit: Listener) -> None:
        self._emit = emit
        self._capture: _Capture | None = None
        self._captures = 0
        self.written = 0
        self.failed = 0
        self.runner = ConsumerRunner(self, queue_size=12)

    @property
    def status(self) -> CaptureStatus:
        capture = self._capture
        return capture.status if capture is not None else CaptureStatus()

    @property
    def capturing(self) -> bool:
        capture = self._capture
        return capture is not None and not capture.done.is_set()

    def start(self, settings: CaptureSettings, metadata: NexusMetadata,
              shape: tuple[int, int], dtype: np.dtype) -> int:
        if self.capturing:
            raise ConfigError("a capture is already running")
        self._captures += 1
        capture = _Capture(self._captures, settings, metadata, shape, dtype)
        self._capture = capture
        if not (settings.lazy_open or settings.per_frame):
            self.runner.call(lambda: self._open(capture))
        return capture.number

    def stop(self) -> None:
        capture = self._capture
        if capture is not None and not capture.done.is_set():
            capture.stopping = True
            self.runner.call(lambda: self._finish(capture))

    def wait(self, timeout: float | None = None) -> bool:
        capture = self._capture
        return True if capture is None else capture.done.wait(timeout)

    def flush(self, timeout: float) -> bool:
        return self.runner.call(self._flush).wait(timeout)

    # -- pipeline thread -----------------------------------------------------------------

    def wants(self, info: FrameInfo) -> bool:
        capture = self._capture
        if capture is None or not capture.wants_frame():
            return False
        capture.routed += 1
        return True

    def skipped(self, info: FrameInfo) -> None:
        """Only while the engine closes; its runner counts the frame in FramesDropped."""

    # -- writer thread -------------------------------------------------------------------

    def consume(self, frame: Frame) -> None:
        capture = self._capture
        if capture is None or capture.done.is_set():
            self.failed += 1
            return
        if capture.settings.per_frame is not None:
            self._write_own_file(capture, frame)
            return
        if capture.writer is None:  # lazy open: the file takes the first frame's type
            capture.shape, capture.dtype = frame.image.shape, frame.image.dtype
            if not self._open(capture):
                self.failed += 1
                return
        writer = capture.writer
        assert writer is not None
        info = frame.info
        # the file's frame numbers keep increasing across the acquisitions it holds
        if not self._guard(capture, lambda: writer.write(
                frame.image, writer.frames_written, info.timestamp_ns, info.image_key,
                info.angle_deg, unique_id=info.unique_id,
                detector_frame_number=info.frame_number)):
            self.failed += 1
            return
        self.written += 1
        # with SWMR, flush whenever the writer has caught up: a live reader, and a crash,
        # then find every frame counted so far (a backlog is flushed every flush interval)
        if capture.settings.swmr and self.runner.queue_depth == 0:
            self._guard(capture, writer.flush)
        capture.status = replace(capture.status, num_captured=writer.frames_written,
                                 last_unique_id=info.unique_id,
                                 last_timestamp_ns=info.timestamp_ns)
        n = capture.settings.num_capture
        if n and writer.frames_written >= n:
            self._finish(capture)

    def _write_own_file(self, capture: _Capture, frame: Frame) -> None:
        """One frame, one file: the next free number of the capture's naming."""
        naming = capture.settings.per_frame
        assert naming is not None
        number = next_free_number(naming.path, naming.name, naming.template,
                                  capture.next_number)
        filename = full_file_name(naming.path, naming.name, naming.template, number)
        info = frame.info
        settings = replace(capture.settings, filename=filename)
        if not self._guard(capture, lambda: write_frame_file(settings, capture.metadata, frame)):
            self.failed += 1
            return
        self.written += 1
        capture.next_number = number + 1
        capture.status = replace(capture.status, filename=filename,
                                 num_captured=capture.status.num_captured + 1,
                                 last_unique_id=info.unique_id,
                                 last_timestamp_ns=info.timestamp_ns,
                                 next_file_number=capture.next_number)

    def _open(self, capture: _Capture) -> bool:
        if capture.done.is_set():
            return False
        s = capture.settings
        writer = NexusWriter(s.filename, capture.shape, capture.dtype, capture.metadata,
                             compression=s.compression, swmr=s.swmr,
                             compression_options=s.compression_options)
        capture.writer = writer
        return self._guard(capture, writer.open)

    def _flush(self) -> None:
        capture = self._capture
        if capture is not None and capture.writer is not None and not capture.done.is_set():
            self._guard(capture, capture.writer.flush)

    def _guard(self, capture: _Capture, action: Callable[[], object]) -> bool:
        """Run a writer action; on failure close the file, end the capture, keep the reason."""
        try:
            action()
            return True
        except (WriterError, OSError, ConfigError) as exc:
            log.error("capture to %s stopped: %s", capture.settings.filename, exc)
            self._finish(capture, error=str(exc))
            return False

    def _finish(self, capture: _Capture, error: str = "") -> None:
        """Close the file of a capture that ended (NumCapture reached, stop, or an error)."""
        if capture.done.is_set():
            return
        writer, capture.writer = capture.writer, None
        n = writer.frames_written if writer is not None else capture.status.num_captured
        if writer is not None:
            try:
                writer.close()
            except (WriterError, OSError) as exc:
                log.error("closing %s failed: %s", writer.filename, exc)
                error = error or str(exc)
        capture.status = replace(capture.status, active=False, num_captured=n, error=error)
        capture.done.set()
        self._emit(CaptureEnded(capture.number, capture.settings.filename, n, error))
