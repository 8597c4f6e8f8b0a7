"""The array coordinator: :class:`~pimega.runtime.NodeControl` of a whole array, driving one
module node's IOC per module over Channel Access, so that the IOC's PVGroups serve the array
as they serve one node.

How the node-control calls map onto the modules:

- ``configure``, ``set_roi``, ``set_preview_binning`` keep the settings here. ``start`` fans
  them out to every module (``cam1:`` timing, depth, image mode; each module's share of the
  ROI; the preview binning) — each written only where its readback differs, then read back —
  and puts ``cam1:Acquire=1`` on every module at once. The acquisition ends when every
  module's Acquire put-callback has completed. A module that fails or is lost ends it: the
  others are stopped, and :class:`AcquisitionEnded` says Error and names the module.
- ``start_capture`` names one file per node beside the master (``<name>_m<n>.h5``), fans out
  the ``HDF1:`` settings, puts ``Capture=1`` on every node, and once every node captures
  writes the master file (:mod:`pimega.writer.master`); an acquisition started meanwhile
  waits for that. The capture ends when every node's file is closed (``stop_capture``,
  ``NumCapture`` reached, or a module lost: the others are stopped); the master is then
  rewritten with the frames every module holds, and :class:`CaptureEnded` follows.
- ``status``, ``latest_preview``, ``latest_stats`` are made from the modules' monitored PVs:
  the slowest module's frame rate, summed throughput and losses, each module's counters and
  connection on ``cam1:M<n>:``, any module's error with its name; the preview assembled from
  the modules' previews binned alike; statistics merged from each module's share of the ROI.

Threads and loops: the PVGroups call these methods synchronously on the IOC's event loop.
The coordinator's caproto asyncio client runs in an event loop of its own, on a thread the
coordinator owns (``array-ca``): calls schedule their work there and return at once, and the
end events reach the listeners from that thread, as the engine's do from its threads. Only
:meth:`flush` waits (the IOC calls it from an executor). The monitors' values are written on
that thread and read whole (one attribute at a time) by the IOC.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import h5py
import numpy as np

from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError
from pimega.pipeline.stats import preview_factor
from pimega.runtime import (
    NODE_STAGES,
    AcquireSettings,
    AcquisitionEnded,
    CaptureEnded,
    CaptureSettings,
    CaptureStatus,
    DetectorState,
    ReconSettings,
    ReconStatus,
    RoiSettings,
    SliceUpdate,
    StageStatus,
    Stats,
    Status,
    TriggerMode,
)
from pimega.runtime.node import Listener, Listeners
from pimega.runtime.settings import next_settings
from pimega.writer.filters import BLOSC_COMPRESSORS, BLOSC_SHUFFLES
from pimega.writer.hdf5 import DATA_PATH, NexusMetadata
from pimega.writer.master import ModuleFile, write_master

from .aggregate import StatsPart, assemble_preview, merge_stages, merge_stats, split_roi
from .config import ArrayConfig
from .link import STATS, ClientContext, ModuleError, ModuleLink

log = logging.getLogger(__name__)

#: Seconds :meth:`ArrayNode.close` gives the modules to stop and the loop to end.
JOIN_S = 10.0
_COMPRESSION = {"none": "None", "nbit": "N-bit", "szip": "szip", "zlib": "zlib",
                "blosc": "Blosc", "bslz4": "BSLZ4", "lz4": "LZ4", "jpeg": "JPEG"}
_BLOSC_COMPRESSOR: dict[str, str] = dict(zip(
    BLOSC_COMPRESSORS, ("BloscLZ", "LZ4", "LZ4HC", "SNAPPY", "ZLIB", "ZSTD"), strict=True))
_BLOSC_SHUFFLE: dict[str, str] = dict(zip(BLOSC_SHUFFLES, ("None", "Byte", "Bit"), strict=True))
_STATS_FIELDS = ("total", "net", "min_value", "max_value", "mean", "sigma", "min_x", "min_y",
                 "max_x", "max_y", "centroid_x", "centroid_y", "sigma_x", "sigma_y", "sigma_xy")


@dataclass
class _Capture:
    """One capture across the nodes: the master and each node's file."""

    number: int
    settings: CaptureSettings
    files: list[str]
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    master_written: bool = False
    error: str = ""


class ArrayNode:
    """NodeControl of an array of module nodes (see the module docstring)."""

    def __init__(self, config: ArrayConfig, preview_max_pixels: int = 1536 * 1536) -> None:
        self.config = config
        self.layout = config.layout
        self.settings = AcquireSettings()
        self.roi = RoiSettings()
        self.preview_binning = 0  # 0: the smallest factor within preview_max_pixels
        self.preview_max_pixels = preview_max_pixels
        self.links = [ModuleLink(node) for node in config.modules]
        self._recon = ReconSettings()
        self._listeners = Listeners()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="array-ca",
                                        daemon=True)
        self._context: ClientContext | None = None
        self._tasks: set[concurrent.futures.Future[Any]] = set()
        self._state, self._message = DetectorState.IDLE, "Idle"
        self._idle = threading.Event()
        self._idle.set()
        self._acquisitions = 0
        self._stop_asked = False
        self._failure = ""  # why the running acquisition failed
        self._stopped_by = ""  # the module that a client stopped directly
        self._captures = 0
        self._capture: _Capture | None = None
        self._capture_status = CaptureStatus()
        self._preview_key: tuple[int, ...] = ()
        self._preview: tuple[int, np.ndarray] | None = None

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> ArrayNode:
        """Start the client's loop and search the modules' PVs (they connect as they come)."""
        self._thread.start()
        self._submit(self._connect())
        return self

    async def _connect(self) -> None:
        self._context = ClientContext()
        for link in self.links:
            await link.connect(self._context)

    def close(self) -> None:
        """Stop what runs on the modules, close the capture, end the client's loop."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(JOIN_S)
        except (TimeoutError, ModuleError) as exc:
            log.warning("modules not stopped cleanly: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(JOIN_S)

    async def _shutdown(self) -> None:
        if self.acquiring:
            self._stop_asked = True
            await self._all(lambda link: link.put("cam1:Acquire", 0))
        if self._capture is not None:
            await self._all(lambda link: link.put("HDF1:Capture", 0))
        if pending := [asyncio.wrap_future(task) for task in self._tasks]:
            await asyncio.wait(pending, timeout=JOIN_S)
        if self._context is not None:
            await self._context.disconnect()

    def __enter__(self) -> ArrayNode:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def _submit(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` on the client's loop; a failure is logged (its outcome is an event)."""
        task = asyncio.run_coroutine_threadsafe(work, self._loop)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: concurrent.futures.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("array coordinator task failed", exc_info=task.exception())

    async def _all(self, action: Callable[[ModuleLink], Awaitable[Any]]) -> None:
        """``action`` on every connected module at once; the first failure is raised after
        all have ended."""
        results = await asyncio.gather(*(action(link) for link in self.links if link.connected),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # -- settings ---------------------------------------------------------------------------

    @property
    def acquiring(self) -> bool:
        return not self._idle.is_set()

    def configure(self, **changes: Any) -> AcquireSettings:
        """Validate and keep a settings snapshot (fanned out at the next start)."""
        self.settings = next_settings(self.settings, self.acquiring, **changes)
        return self.settings

    def set_roi(self, **changes: int) -> RoiSettings:
        """The array's ROI, split into each module's share at once and at every start."""
        new = self.roi = replace(self.roi, **changes)  # RoiSettings refuses bad values
        self._submit(self._all(lambda link: link.apply(self._roi_settings(link))))
        return new

    def set_preview_binning(self, factor: int) -> None:
        """Bin previews by ``factor`` (0: just enough to fit ``preview_max_pixels``); each
        module bins its own preview alike."""
        if not 0 <= factor <= min(self.layout.module.shape):
            raise ConfigError(f"preview binning must be 0 (auto) .. "
                              f"{min(self.layout.module.shape)}, got {factor}")
        self.preview_binning = factor
        binning = {"image1:PreviewBinning": self.preview_factor}
        self._submit(self._all(lambda link: link.apply(binning)))

    @property
    def preview_factor(self) -> int:
        return self.preview_binning or preview_factor(self.image_shape, self.preview_max_pixels)

    @property
    def preview_shape(self) -> tuple[int, int]:
        height, width = (side // self.preview_factor for side in self.layout.module.shape)
        return self.layout.modules_y * height, self.layout.modules_x * width

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.layout.shape

    @property
    def image_dtype(self) -> np.dtype:
        return dtype_for_depth(self.settings.bit_depth)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return NODE_STAGES

    def _acquire_settings(self, link: ModuleLink, s: AcquireSettings) -> dict[str, Any]:
        """The PVs a module acquires ``s`` with (its ROI share and the preview included)."""
        values: dict[str, Any] = {
            "cam1:AcquireTime": s.acquire_time_s, "cam1:AcquirePeriod": s.acquire_period_s,
            "cam1:CounterDepth": f"{s.bit_depth} bit{'s' * (s.bit_depth > 1)}",
            "cam1:TriggerMode": str(s.trigger_mode),
            "cam1:ImageMode": "Multiple" if s.n_images else "Continuous",
            "image1:PreviewBinning": self.preview_factor,
            # the IOC makes previews twice as often as image1:MinCallbackTime shows them
            "image1:MinCallbackTime": 2 * s.preview_interval_s,
            **self._roi_settings(link),
        }
        if s.n_images:
            values["cam1:NumImages"] = s.n_images
        return values

    def _roi_settings(self, link: ModuleLink) -> dict[str, Any]:
        share = split_roi(self.roi, self.layout)[link.node.module_id]
        if share is None:  # the ROI misses this module: its statistics are left out
            return {}
        r = share.roi
        return {"ROI1:MinX": r.min_x, "ROI1:MinY": r.min_y, "ROI1:SizeX": r.size_x,
                "ROI1:SizeY": r.size_y, "ROI1:BinX": r.bin_x, "ROI1:BinY": r.bin_y}

    def _problems(self) -> list[str]:
        """What keeps the array from working: modules not connected, or of another size."""
        width, height = self.layout.module.width, self.layout.module.height
        problems = []
        for link in self.links:
            values = link.values
            size = (values.get("cam1:MaxSizeX_RBV"), values.get("cam1:MaxSizeY_RBV"))
            if not link.ready:
                problems.append(f"{link.label} not connected")
            elif size != (width, height):
                problems.append(f"{link.label} is {size[0]}x{size[1]}, the layout's modules "
                                f"are {width}x{height}")
        return problems

    def _check_ready(self) -> None:
        if problems := self._problems():
            raise ConfigError("; ".join(problems))

    async def _check_idle(self, busy: str) -> None:
        """Refuse when a module's busy record ``busy`` (its readback read now: a monitor may
        lag) is not Done: someone else drives that module."""
        await self._all(lambda link: link.refresh((busy,)))
        if taken := [link.label for link in self.links if link.values[busy] != "Done"]:
            raise ModuleError(f"{', '.join(taken)}: {busy} is not Done (driven from "
                              "elsewhere?)")

    # -- acquisition ------------------------------------------------------------------------

    def start(self) -> int:
        """Start every module together with the current settings; returns the number."""
        if self.acquiring:
            raise ConfigError("an acquisition is already running")
        self._check_ready()
        self._acquisitions += 1
        number = self._acquisitions
        self._idle.clear()
        self._stop_asked, self._failure, self._stopped_by = False, "", ""
        self._state, self._message = DetectorState.ACQUIRE, "Acquiring"
        self._submit(self._acquire(number, self.settings))
        return number

    def stop(self) -> None:
        """Stop every module; frames already processed stay processed (and written)."""
        if self.acquiring:
            self._stop_asked = True
        self._submit(self._all(lambda link: link.put("cam1:Acquire", 0)))

    def write_newest(self, settings: CaptureSettings) -> None:
        raise ConfigError("WriteFile writes on each module node (its HDF1: PVs), not on the "
                          "array coordinator: capture the array in Capture or Stream mode")

    def trigger(self) -> None:
        """One software trigger to every module (each refuses it outside External mode)."""
        if not self.acquiring or self.settings.trigger_mode != TriggerMode.EXTERNAL:
            raise ConfigError("a software trigger needs a running acquisition in External "
                              "trigger mode")
        self._submit(self._all(lambda link: link.put("cam1:TriggerSoftware", 1)))

    async def _acquire(self, number: int, settings: AcquireSettings) -> None:
        """Settings out, every module started, their ends awaited; the end event."""
        started = False
        try:
            capture = self._capture
            if capture is not None:
                await capture.opened.wait()
            await self._check_idle("cam1:Acquire_RBV")
            await self._all(lambda link: link.apply(self._acquire_settings(link, settings)))
            started = not self._stop_asked
            if started:
                outcomes = await asyncio.gather(*(self._acquire_module(link)
                                                  for link in self.links),
                                                return_exceptions=True)
                for outcome in outcomes:  # module failures are handled; anything else is not
                    if isinstance(outcome, BaseException) and not isinstance(outcome,
                                                                             ModuleError):
                        raise outcome
        except ModuleError as exc:
            await self._fail(str(exc))
        finally:
            frames = [link.values.get("cam1:NumImagesCounter_RBV", 0) for link in self.links]
            self._end_acquisition(number, min(frames) if started else 0)

    async def _acquire_module(self, link: ModuleLink) -> None:
        """One module's acquisition, from its Acquire put to its end. A module that fails,
        is lost, or is stopped by someone else stops every other one."""
        try:
            updates = link.updates["cam1:Acquire_RBV"]
            acquiring = asyncio.ensure_future(link.put("cam1:Acquire", 1, timeout=None))
            taken = asyncio.ensure_future(link.wait_for("cam1:Acquire_RBV", since=updates))
            await asyncio.wait({acquiring, taken}, return_when=asyncio.FIRST_COMPLETED)
            taken.cancel()
            if self._stop_asked and not acquiring.done():  # the stop may have gone first
                await link.put("cam1:Acquire", 0)
            await acquiring
            # its last monitors: state, counters, statistics, then Acquire_RBV Done
            await link.wait_for("cam1:Acquire_RBV", "Done", since=updates)
            state = link.values["cam1:DetectorState_RBV"]
            if state == "Error":
                raise ModuleError(f"{link.label}: {link.values['cam1:StatusMessage_RBV']}")
            if state == "Aborted" and not self._stop_asked and not self._stopped_by:
                self._stopped_by = link.label
                await self._all(lambda other: other.put("cam1:Acquire", 0))
        except ModuleError as exc:
            await self._fail(str(exc))
            raise

    async def _fail(self, reason: str) -> None:
        """The first module failure ends the acquisition: every other module is stopped."""
        if self._failure:
            return
        self._failure = reason
        log.error("%s: stopping every module", reason)
        try:
            await self._all(lambda link: link.put("cam1:Acquire", 0))
        except ModuleError as exc:
            log.error("while stopping the modules: %s", exc)

    def _end_acquisition(self, number: int, frames: int) -> None:
        if self._failure:
            state = DetectorState.ERROR
            message = f"{self._failure}; the others stopped after {frames} frames"
        elif self._stop_asked or self._stopped_by:
            state = DetectorState.ABORTED
            message = f"Aborted: {frames} frames" + (
                "" if self._stop_asked else f" ({self._stopped_by} was stopped)")
        else:
            state, message = DetectorState.IDLE, f"Done: {frames} frames"
        self._state, self._message = state, message
        self._idle.set()
        self._listeners.emit(AcquisitionEnded(number, state, message, frames))

    # -- capture ----------------------------------------------------------------------------

    def start_capture(self, settings: CaptureSettings) -> int:
        """Name a file per node beside the master and open them all; returns the number."""
        if self._capture is not None:
            raise ConfigError("a capture is already running")
        self._check_ready()
        stem, extension = os.path.splitext(settings.filename)
        self._captures += 1
        capture = _Capture(self._captures, settings,
                           [f"{stem}_m{link.node.module_id + 1}{extension or '.h5'}"
                            for link in self.links])
        self._capture = capture
        self._capture_status = CaptureStatus(active=True, filename=settings.filename)
        self._submit(self._run_capture(capture))
        return capture.number

    def stop_capture(self) -> None:
        """Close every node's file (the master follows)."""
        if self._capture is not None:
            self._capture.stopping = True
        self._submit(self._all(lambda link: link.put("HDF1:Capture", 0)))

    async def _run_capture(self, capture: _Capture) -> None:
        captures: list[asyncio.Future[None]] = []
        try:
            await self._check_idle("HDF1:Capture_RBV")
            await self._all(lambda link: link.apply(self._capture_settings(link, capture)))
            captures = [asyncio.ensure_future(self._capture_module(link, capture))
                        for link in self.links]
            if not await self._opened(capture):
                return
            if capture.stopping:  # the stop may have gone before a node's start
                await self._all(lambda link: link.put("HDF1:Capture", 0))
            for link, expected in zip(self.links, capture.files, strict=True):
                if (name := await link.read("HDF1:FullFileName_RBV")) != expected:
                    raise ModuleError(f"{link.label} writes {name}, not {expected}")
            await self._write_master(capture, [None] * len(self.links), None)
        except ModuleError as exc:
            await self._fail_capture(capture, str(exc))
        finally:
            capture.opened.set()
            await asyncio.gather(*captures, return_exceptions=True)
            await self._end_capture(capture)

    async def _opened(self, capture: _Capture) -> bool:
        """Until every node captures (True) or one has failed (False)."""
        opening = asyncio.ensure_future(
            self._all(lambda link: link.wait_for("HDF1:Capture_RBV", "Capturing")))
        failed = asyncio.ensure_future(capture.failed.wait())
        await asyncio.wait({opening, failed}, return_when=asyncio.FIRST_COMPLETED)
        failed.cancel()
        if not opening.done():
            opening.cancel()
            return False
        opening.result()
        return True

    def _capture_settings(self, link: ModuleLink, capture: _Capture) -> dict[str, Any]:
        s = capture.settings
        options = s.compression_options
        directory, name = os.path.split(capture.files[link.node.module_id])
        stem, extension = os.path.splitext(name)
        return {
            "HDF1:FilePath": directory + os.sep, "HDF1:FileName": stem,
            "HDF1:FileTemplate": f"%s%s{extension}", "HDF1:AutoIncrement": "No",
            "HDF1:FileNumber": 0, "HDF1:FileWriteMode": "Stream",
            "HDF1:NumCapture": s.num_capture, "HDF1:LazyOpen": "Yes" if s.lazy_open else "No",
            "HDF1:SWMRMode": "On" if s.swmr else "Off",
            "HDF1:Compression": _COMPRESSION[s.compression], "HDF1:ZLevel": options.zlib_level,
            "HDF1:BloscCompressor": _BLOSC_COMPRESSOR[options.blosc_compressor],
            "HDF1:BloscLevel": options.blosc_level,
            "HDF1:BloscShuffle": _BLOSC_SHUFFLE[options.blosc_shuffle],
            "HDF1:NumDataBits": options.nbit_bits, "HDF1:DataBitsOffset": options.nbit_offset,
            "HDF1:SZipNumPixels": options.szip_pixels, "HDF1:SampleName": s.sample_name,
        }

    async def _capture_module(self, link: ModuleLink, capture: _Capture) -> None:
        """One node's capture, from its Capture put until its file is closed."""
        try:
            updates = link.updates["HDF1:Capture_RBV"]
            await link.put("HDF1:Capture", 1, timeout=None)
            # its last monitors: frames captured, the error if any, then Capture_RBV Done
            await link.wait_for("HDF1:Capture_RBV", "Done", since=updates)
        except ModuleError as exc:
            await self._fail_capture(capture, str(exc))
            raise
        if message := link.values["HDF1:WriteMessage"]:
            await self._fail_capture(capture, f"{link.label}: {message}")

    async def _fail_capture(self, capture: _Capture, reason: str) -> None:
        """The first module failure ends the capture: every other node closes its file."""
        if capture.error:
            return
        capture.error = reason
        capture.failed.set()
        log.error("%s: closing every node's file", reason)
        try:
            await self._all(lambda link: link.put("HDF1:Capture", 0))
        except ModuleError as exc:
            log.error("while closing the nodes' files: %s", exc)

    async def _end_capture(self, capture: _Capture) -> None:
        """Rewrite the master with the frames every surviving module holds; say so."""
        frames = 0
        if capture.master_written:
            held = await asyncio.gather(*(self._frames_held(link, capture)
                                          for link in self.links))
            surviving = [h for link, h in zip(self.links, held, strict=True)
                         if link.connected and h is not None]
            frames = min(surviving or [h for h in held if h is not None] or [0])
            try:
                await self._write_master(capture, held, frames)
            except OSError as exc:
                capture.error = capture.error or f"master file not rewritten: {exc}"
        message = capture.error and (f"{capture.error}; {capture.settings.filename} holds "
                                     f"{frames} frames")
        self._capture_status = CaptureStatus(filename=capture.settings.filename,
                                             num_captured=frames, error=message)
        self._capture = None
        self._listeners.emit(CaptureEnded(capture.number, capture.settings.filename, frames,
                                          message))

    async def _frames_held(self, link: ModuleLink, capture: _Capture) -> int | None:
        """Frames in the node's file now it is closed; None when it cannot be read (a lost
        node's file, possibly never closed)."""
        if link.connected:
            return link.values["HDF1:NumCaptured_RBV"]
        filename = capture.files[link.node.module_id]
        return await asyncio.get_running_loop().run_in_executor(None, _readable_frames,
                                                                filename)

    async def _write_master(self, capture: _Capture, held: list[int | None],
                            frames: int | None) -> None:
        """The master over the node files: ``frames`` of them (None: growing); ``held``, the
        frames each file holds (None: growing, or unreadable once the capture ended)."""
        modules = [ModuleFile(name, self.layout.module_origin(link.node.module_id), count,
                              frames is None or count is not None)
                   for link, name, count in zip(self.links, capture.files, held, strict=True)]
        s = self.settings
        metadata = NexusMetadata(
            bit_depth=s.bit_depth, count_time_s=s.acquire_time_s,
            frame_time_s=s.acquire_period_s, n_modules=self.layout.n_modules,
            module_shape=self.layout.module.shape,
            layout=f"{self.layout.modules_x}x{self.layout.modules_y} modules",
            module_origins=tuple(m.origin for m in modules),
            definition=capture.settings.definition, mx=capture.settings.mx,
            sample_name=capture.settings.sample_name)
        await asyncio.get_running_loop().run_in_executor(
            None, write_master, capture.settings.filename, modules, frames,
            self.layout.module.shape, self.layout.shape, self.image_dtype, metadata)
        capture.master_written = True

    def flush(self, timeout: float = 10.0) -> bool:
        """Flush every node's file; True when all did within ``timeout``."""
        if self._capture is None:
            return True
        work = self._all(lambda link: link.put("HDF1:FlushNow", 1, timeout=timeout))
        try:
            asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)
        except (TimeoutError, ModuleError) as exc:
            log.warning("flush: %s", exc)
            return False
        return True

    # -- what the IOC reads -----------------------------------------------------------------

    def status(self) -> Status:
        links = self.links

        def each(suffix: str, default: Any = 0) -> list[Any]:
            return [link.values.get(suffix, default) for link in links]

        problems = self._problems()
        state, message = self._state, self._message
        if problems and state != DetectorState.ACQUIRE:
            state, message = DetectorState.ERROR, "; ".join(problems)
        capture = self._capture_status
        if self._capture is not None:
            capture = replace(capture, num_captured=min(each("HDF1:NumCaptured_RBV")))
        buffer_used = each("cam1:Backend_BufferUsed_RBV", 0.0)
        return Status(
            state=state, message=message,
            backend="/".join(sorted(set(each("cam1:Backend_RBV", "?")))),
            bit_depth=self.settings.bit_depth,
            frames_received=min(each("cam1:M1:RxFrameCount_RBV")),
            frames_processed=min(each("Pipe:FramesProcessed_RBV")),
            frames_written=min(each("Pipe:FramesWritten_RBV")),
            frames_dropped=sum(each("cam1:DroppedFrames_RBV")),
            corrupt_frames=sum(each("cam1:CorruptFrames_RBV")),
            frame_rate_hz=min(each("cam1:FrameRate_RBV", 0.0)),
            throughput_gbps=sum(each("cam1:Throughput_RBV", 0.0)),
            unique_id=min(each("cam1:UniqueId_RBV")),
            modules=[self._receiver(link) for link in links],
            stages=[merge_stages(name, [self._stage(link, name) for link in links])
                    for name in NODE_STAGES],
            capture=capture, buffer_used=round(max(buffer_used)), buffer_size=100,
            acquisition=self._acquisitions,
        )

    @staticmethod
    def _receiver(link: ModuleLink) -> dict[str, Any]:
        """``cam1:M<n>:`` of a module: its receiver's counters, connected while the module
        node's IOC is, and its last error (the IOC's own first)."""
        values = link.values

        def get(name: str, default: Any = 0) -> Any:
            return values.get(f"cam1:M1:{name}", default)

        error = ("IOC not connected" if not link.ready else
                 values.get("cam1:StatusMessage_RBV", "")
                 if values.get("cam1:DetectorState_RBV") == "Error" else get("LastError_RBV", ""))
        return {
            "frames": get("RxFrameCount_RBV"), "gaps": get("LostFrameCount_RBV"),
            "corrupt": get("RxError_RBV"), "dropped_idle": get("IdleFrameCount_RBV"),
            "ring_used": get("Backend_BufferUsed_RBV", 0.0), "ring_size": 100,
            "connected": link.ready,
            "last_error": error,
        }

    @staticmethod
    def _stage(link: ModuleLink, name: str) -> StageStatus:
        values = link.values
        prefix = f"Pipe:{name[:1].upper()}{name[1:]}:"

        def get(field: str, default: Any = 0) -> Any:
            return values.get(prefix + field, default)

        state = get("State_RBV", "Idle")
        return StageStatus(name, state == "Running", get("Frames_RBV"),
                           get("TimePerFrame_RBV", 0.0), get("QueueDepth_RBV"),
                           get("QueueSize_RBV"), get("Dropped_RBV"), error=state == "Error")

    def latest_preview(self) -> tuple[int, np.ndarray] | None:
        """(update, image) of the array assembled from the modules' newest previews."""
        key = tuple(link.updates["image1:ArrayData"] for link in self.links)
        if key != self._preview_key:
            self._preview_key = key
            previews = [_preview(link) for link in self.links]
            if any(p is not None for p in previews):
                update = self._preview[0] + 1 if self._preview else 1
                self._preview = (update, assemble_preview(self.layout, self.preview_factor,
                                                          previews, self.image_dtype))
        return self._preview

    def latest_stats(self) -> tuple[int, Stats] | None:
        """Statistics of the array's ROI merged from each module's share (None until every
        module in the ROI has some)."""
        parts, unique_ids = [], []
        for link, share in zip(self.links, split_roi(self.roi, self.layout), strict=True):
            if share is None:
                continue
            values: list[Any] = [link.values.get(f"Stats1:{name}") for name in STATS]
            width, height = (link.values.get(f"ROI1:ArraySize{i}_RBV", 0) for i in (0, 1))
            if None in values or not width * height:
                return None
            *numbers, unique_id = values
            parts.append(StatsPart(Stats(**dict(zip(_STATS_FIELDS, numbers, strict=True))),
                                   width * height, share.offset))
            unique_ids.append(unique_id)
        return (min(unique_ids), merge_stats(parts)) if parts else None

    def frame_timestamp_ns(self, unique_id: int) -> int | None:
        """The coordinator keeps no frames: their times are in the node files."""
        return None

    def save_reference(self, kind: str) -> None:
        raise ConfigError("Proc1 runs on each module node: save references there")

    def references(self) -> dict[str, np.ndarray]:
        return {}

    def reset_filter(self) -> None:
        raise ConfigError("Proc1 runs on each module node: reset its filter there")

    # -- live reconstruction: on the module nodes, not here ---------------------------------

    @property
    def recon_settings(self) -> ReconSettings:
        return self._recon

    def configure_recon(self, **changes: Any) -> ReconSettings:
        new = replace(self._recon, **changes)
        if new.enabled:
            raise ConfigError("live reconstruction runs on each module node (its Recon: PVs), "
                              "not on the array coordinator")
        self._recon = new
        return new

    def recon_status(self) -> ReconStatus:
        return ReconStatus("Idle")

    def latest_slices(self) -> SliceUpdate | None:
        return None


def _preview(link: ModuleLink) -> np.ndarray | None:
    """A module's newest preview as an image (None: none, or not matching its size yet)."""
    values = link.values
    data = values.get("image1:ArrayData")
    width, height = values.get("image1:ArraySize0_RBV", 0), values.get("image1:ArraySize1_RBV", 0)
    if not isinstance(data, np.ndarray) or data.size != width * height or not data.size:
        return None
    return data.reshape(height, width)


def _readable_frames(filename: str) -> int | None:
    """Frames a node file holds, or None when plain h5py cannot read it (a node killed while
    writing leaves it marked open: ``h5clear -s`` clears that, and then its frames read)."""
    try:
        with h5py.File(filename, "r") as file:
            data = file[DATA_PATH]
            return data.shape[0] if isinstance(data, h5py.Dataset) else None
    except (OSError, KeyError, TypeError):
        return None
