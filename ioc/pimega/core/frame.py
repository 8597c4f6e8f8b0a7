"""What travels with a frame through the pipeline, whatever its source or backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """A frame's identity: ``unique_id`` counts every frame the node processed (it keeps
    increasing across acquisitions, as areaDetector's UniqueId), ``frame_number`` is the
    detector's, ``acquisition`` the node's count of acquisitions, ``image_key`` NXtomo's
    (0 projection, 1 flat, 2 dark, 3 invalid); ``tomo`` says whether the sender gave the key
    and the angle (the wire's tomography extension) or they are defaults."""

    unique_id: int
    frame_number: int
    timestamp_ns: int
    image_key: int = 0
    angle_deg: float = 0.0
    acquisition: int = 0
    tomo: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    """A processed image and its identity, as stages and consumers receive it.

    ``image`` is a pooled buffer: valid until the stage or consumer returns, then reused.
    """

    info: FrameInfo
    image: Any
