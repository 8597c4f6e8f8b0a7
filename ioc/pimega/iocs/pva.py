"""Images over PV Access as NTNDArrays (areaDetector's NDPluginPva): the preview
``Pva1:Image`` and the live reconstruction's slices ``Recon:SliceN:Image``; and ``Pva1:``,
the NDPva plugin's Channel Access PVs (NDPluginBase, ``PvName_RBV``, its counters).

Each NTNDArray carries what ADCore's converter writes: ``uniqueId``, ``timeStamp`` and
``dataTimeStamp`` (the frame's time, seconds and nanoseconds past the Unix epoch), ``codec``
(empty: uncompressed), sizes, dimensions and the attributes ``ColorMode`` and the frame's
``NDArrayUniqueId``, ``NDArrayTimeStamp``, ``NDArrayEpicsTSSec``, ``NDArrayEpicsTSnSec``.

Optional: served only where p4p is installed (``pip install pimega[pva]``). p4p runs its own
server threads; the IOC posts to it from the same places it updates the CA waveforms. The
server listens where Channel Access does (``EPICS_CAS_INTF_ADDR_LIST``) unless
``EPICS_PVAS_INTF_ADDR_LIST`` says otherwise.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from .base import EPICS_EPOCH_S
from .catalog import PVA_STACK
from .factory import make_group

log = logging.getLogger(__name__)

PVA_IMAGE_SUFFIX = "Pva1:Image"


class PvaImages:
    """NTNDArray PVs ``prefix + suffix`` on one p4p server of their own."""

    def __init__(self, prefix: str, suffixes: Iterable[str]) -> None:
        from p4p.nt import NTNDArray
        from p4p.server import Server
        from p4p.server.thread import SharedPV

        self._nt = NTNDArray()
        # no nt= on the PVs: they take the Values this class wraps (with their uniqueId)
        self._pvs = {suffix: SharedPV(initial=self._nt.wrap(np.zeros((1, 1), np.uint16)))
                     for suffix in suffixes}
        conf = {}
        interfaces = os.environ.get("EPICS_CAS_INTF_ADDR_LIST")
        if interfaces and "EPICS_PVAS_INTF_ADDR_LIST" not in os.environ:
            conf["EPICS_PVAS_INTF_ADDR_LIST"] = interfaces
        self._server = Server(providers=[{prefix + s: pv for s, pv in self._pvs.items()}],
                              conf=conf, useenv=True)

    def post(self, suffix: str, image: np.ndarray, unique_id: int,
             timestamp_ns: int | None = None) -> None:
        """Publish ``image`` with its unique id and time (ns since the Unix epoch; now when
        not known)."""
        timestamp_ns = timestamp_ns or time.time_ns()
        seconds, nanoseconds = divmod(int(timestamp_ns), 1_000_000_000)
        value: Any = self._nt.wrap(image, attrib={
            "ColorMode": 0, "NDArrayUniqueId": unique_id,
            "NDArrayTimeStamp": seconds - EPICS_EPOCH_S + nanoseconds / 1e9,
            "NDArrayEpicsTSSec": seconds - EPICS_EPOCH_S, "NDArrayEpicsTSnSec": nanoseconds,
        })
        value["uniqueId"] = unique_id
        value["codec.name"] = ""
        for field in ("timeStamp", "dataTimeStamp"):
            value[f"{field}.secondsPastEpoch"] = seconds
            value[f"{field}.nanoseconds"] = nanoseconds
        self._pvs[suffix].post(value)

    def close(self) -> None:
        self._server.stop()


def pva_images(prefix: str, suffixes: Iterable[str]) -> PvaImages | None:
    """``PvaImages`` for ``prefix``, or None (with a log line) where p4p is not installed."""
    try:
        return PvaImages(prefix, suffixes)
    except ImportError:
        log.info("p4p is not installed: no PV Access images (pip install pimega[pva])")
        return None


PvaBase = make_group("PvaBase", *PVA_STACK)
