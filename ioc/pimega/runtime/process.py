"""NDPluginProcess on the node: reference frames saved from raw images, and the processor
that runs Proc1's steps after the backend decoded a frame.

A reference (``background``, ``flat``) is the next raw frame after it was asked for, as
ADCore's SaveBackground/SaveFlatField take the plugin's next input. With Proc1's steps on,
the backend decodes into a raw buffer that is offered to the references and then processed
into the pooled image; without them, the pooled image is the raw frame and is offered as is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from pimega.pipeline.backend import FrameProcessor
from pimega.pipeline.correct import ProcessSteps, RecursiveFilter, apply_process

REFERENCE_KINDS = ("background", "flat")


class References:
    """Reference frames by kind; :meth:`request` takes the next raw frame offered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._saved: dict[str, np.ndarray] = {}

    def request(self, kind: str) -> None:
        if kind not in REFERENCE_KINDS:
            raise ValueError(f"reference {kind!r} is not one of {REFERENCE_KINDS}")
        with self._lock:
            self._wanted.add(kind)

    def offer(self, raw: np.ndarray) -> None:
        """Keep a float64 copy of ``raw`` for every kind asked for (pipeline thread)."""
        if not self._wanted:  # the common case, without the lock
            return
        with self._lock:
            wanted, self._wanted = self._wanted, set()
        copy = raw.astype(np.float64)
        with self._lock:
            self._saved.update(dict.fromkeys(wanted, copy))

    def saved(self) -> dict[str, np.ndarray]:
        with self._lock:
            return dict(self._saved)


class ProcessingProcessor:
    """The backend's processor (raw decode) followed by Proc1's steps into ``out``; with no
    steps it decodes straight into ``out``. Either way the raw frame goes to ``references``."""

    def __init__(self, inner: FrameProcessor, steps: ProcessSteps | None,
                 shape: tuple[int, int], raw_dtype: np.dtype, references: References,
                 recursive: RecursiveFilter) -> None:
        self._inner = inner
        self._steps = steps
        self._raw = None if steps is None else np.empty(shape, raw_dtype)
        self._references = references
        self._recursive = recursive

    def process(self, payloads: Sequence[np.ndarray], out: np.ndarray) -> None:
        if self._steps is None or self._raw is None:
            self._inner.process(payloads, out)
            self._references.offer(out)
            return
        self._inner.process(payloads, self._raw)
        self._references.offer(self._raw)
        apply_process(self._raw, self._steps, out, self._recursive)
