"""A tiny caproto IOC for the access security, autosave and circuit tests, in the test process
or as a server: ``python -m tests.tinyioc access FILE.acf``, ``... autosave SAVE.json`` or
``... paced`` (prints ``ready`` once it serves)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from caproto.asyncio.server import run
from caproto.server import PVGroup, PvpropertyEnum, PvpropertyString, pvproperty

from pimega.iocs.access import AccessContext, AccessGroup, AccessPolicy, GroupMap
from pimega.iocs.autosave import Autosave
from pimega.iocs.circuit import PacedContext

PREFIX = "T:"
#: The prefix of the paced server (a test process's pyepics keeps channels of a stopped one).
PACED_PREFIX = "PACED:"
#: The PVs the autosave server saves (not Frames).
SAVED = [PREFIX + "Exposure", PREFIX + "Mode", PREFIX + "FileName"]


class Camera(PVGroup):
    """A few settings as the IOC serves them: a validated, echoed setpoint, an enum, text."""

    async def _put_exposure(self, instance: Any, value: float) -> float:
        if value <= 0:
            raise ValueError(f"Exposure must be > 0, not {value}")
        await self.exposure_rbv.write(value)
        return value

    # the ignore: caproto types a putter's self as PVGroup
    exposure = pvproperty(value=1.0, name="Exposure", record="ao",
                          put=_put_exposure)  # pyright: ignore[reportArgumentType]
    exposure_rbv = pvproperty(value=1.0, name="Exposure_RBV", read_only=True)
    mode = pvproperty(value="Single", name="Mode", dtype=PvpropertyEnum,
                      enum_strings=("Single", "Multiple", "Continuous"))
    file_name = pvproperty(value="", name="FileName", dtype=PvpropertyString)
    frames = pvproperty(value=0, name="Frames")
    counter = pvproperty(value=0, name="Counter_RBV", read_only=True)


async def ready(async_lib: Any) -> None:
    print("ready", flush=True)


async def serve_access(acf: str) -> None:
    """Camera in DEFAULT, Mode in LOCKED, and the reload PVs under ``T:AS:``."""
    policy = AccessPolicy.load(acf)
    access = AccessGroup(prefix=PREFIX + "AS:")
    access.policy = policy
    pvdb = {**Camera(prefix=PREFIX).pvdb, **access.pvdb}
    await AccessContext(pvdb, policy, GroupMap.parse("Mode LOCKED", PREFIX)).run(
        startup_hook=ready)


async def serve_paced() -> None:
    """Camera under `PACED_PREFIX`, served by the IOC's `PacedContext`."""
    await PacedContext(Camera(prefix=PACED_PREFIX).pvdb).run(startup_hook=ready)


def serve_autosave(path: str) -> None:
    """Camera with `SAVED` restored at start and saved on change; SIGTERM ends it as it
    ends pimega-ioc."""
    camera = Camera(prefix=PREFIX)
    autosave = Autosave(camera.pvdb, SAVED, Path(path), PREFIX)

    async def startup(async_lib: Any) -> None:
        await autosave.restore()
        await ready(async_lib)
        await autosave.run()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(camera.pvdb, startup_hook=startup)
    finally:
        autosave.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if sys.argv[1] == "access":
        asyncio.run(serve_access(sys.argv[2]))
    elif sys.argv[1] == "paced":
        asyncio.run(serve_paced())
    else:
        serve_autosave(sys.argv[2])
