"""Node control: what the IOC (and an array coordinator) needs of one back-end node.

:class:`~pimega.runtime.engine.Acquisition` implements it for one module node; a coordinator
driving several nodes implements it again, so the same PVGroups serve both. Completions and
state changes come as :data:`Event` values to the listeners given to :meth:`subscribe`,
called on the engine's threads (a listener must only hand them on, e.g. into caproto's
``ThreadsafeQueue``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pimega.core.geometry import ArrayLayout
from pimega.pipeline.stats import RoiSettings, Stats

from .recon import ReconSettings, ReconStatus, SliceUpdate
from .settings import AcquireSettings, CaptureSettings
from .status import DetectorState, Status


@dataclass(frozen=True)
class AcquisitionEnded:
    """Acquisition ``acquisition`` (the number :meth:`NodeControl.start` returned) ended."""

    acquisition: int
    state: DetectorState
    message: str
    frames: int


@dataclass(frozen=True)
class CaptureEnded:
    """Capture ``capture`` (the number :meth:`NodeControl.start_capture` returned) closed."""

    capture: int
    filename: str
    num_captured: int
    error: str = ""


Event = AcquisitionEnded | CaptureEnded
Listener = Callable[[Event], None]

log = logging.getLogger(__name__)


class Listeners:
    """Who hears a node's events; one that fails is logged and the others still hear it."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event)


class NodeControl(Protocol):
    layout: ArrayLayout
    settings: AcquireSettings
    roi: RoiSettings
    preview_binning: int

    @property
    def recon_settings(self) -> ReconSettings: ...

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The node's stages in pipeline order (ingest … consumers), for ``Pipe:``."""
        ...

    @property
    def acquiring(self) -> bool: ...

    @property
    def image_shape(self) -> tuple[int, int]: ...

    @property
    def image_dtype(self) -> np.dtype: ...

    @property
    def preview_shape(self) -> tuple[int, int]: ...

    def configure(self, **changes: Any) -> AcquireSettings:
        """Validate a new settings snapshot (refused with :class:`ConfigError` and a reason)."""
        ...

    def set_roi(self, **changes: int) -> RoiSettings: ...

    def set_preview_binning(self, factor: int) -> None: ...

    def start(self) -> int:
        """Start an acquisition with the current settings; returns its number."""
        ...

    def stop(self) -> None: ...

    def trigger(self) -> None:
        """One software trigger pulse (External trigger mode)."""
        ...

    def start_capture(self, settings: CaptureSettings) -> int:
        """Open a file (or prepare it, lazy open); returns the capture's number."""
        ...

    def stop_capture(self) -> None: ...

    def flush(self, timeout: float = 10.0) -> bool: ...

    def write_newest(self, settings: CaptureSettings) -> None:
        """The newest processed frame into a file of its own (NDFile's WriteFile)."""
        ...

    def status(self) -> Status: ...

    def latest_preview(self) -> tuple[int, np.ndarray] | None: ...

    def latest_stats(self) -> tuple[int, Stats] | None: ...

    def frame_timestamp_ns(self, unique_id: int) -> int | None:
        """Time (ns since the Unix epoch) of a recent frame; None once forgotten."""
        ...

    def save_reference(self, kind: str) -> None:
        """Keep the next raw frame as Proc1's ``background`` or ``flat``."""
        ...

    def references(self) -> dict[str, np.ndarray]:
        """Proc1's saved reference frames by kind."""
        ...

    def reset_filter(self) -> None:
        """Restart Proc1's recursive filter at the next frame."""
        ...

    def subscribe(self, listener: Listener) -> None: ...

    def configure_recon(self, **changes: Any) -> ReconSettings: ...

    def recon_status(self) -> ReconStatus: ...

    def latest_slices(self) -> SliceUpdate | None:
        """The live reconstruction's slices as they stand now."""
        ...
