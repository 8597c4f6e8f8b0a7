"""The preview image over PV Access as an NTNDArray (areaDetector's NDPluginPva, ``Pva1:Image``).

Optional: served only where p4p is installed (``pip install pimega[pva]``). p4p runs its own
server threads; the IOC posts to it from the same place it updates ``image1:ArrayData``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PVA_IMAGE_SUFFIX = "Pva1:Image"


class PvaImage:
    """One NTNDArray PV on a p4p server of its own."""

    def __init__(self, name: str) -> None:
        from p4p.nt import NTNDArray
        from p4p.server import Server
        from p4p.server.thread import SharedPV

        self.name = name
        self._nt = NTNDArray()
        # no nt= on the PV: it takes the Values this class wraps (with their uniqueId)
        self._pv = SharedPV(initial=self._nt.wrap(np.zeros((1, 1), np.uint16)))
        self._server = Server(providers=[{name: self._pv}])

    def post(self, image: np.ndarray, unique_id: int) -> None:
        value: Any = self._nt.wrap(image)
        value["uniqueId"] = unique_id
        value["timeStamp.secondsPastEpoch"] = int(time.time())
        self._pv.post(value)

    def close(self) -> None:
        self._server.stop()


def pva_image(prefix: str) -> PvaImage | None:
    """``PvaImage`` for ``prefix``, or None (with a log line) where p4p is not installed."""
    try:
        return PvaImage(prefix + PVA_IMAGE_SUFFIX)
    except ImportError:
        log.info("p4p is not installed: no PV Access image (pip install pimega[pva])")
        return None
