"""Node assembly for the commands: which sources and detector control a node is handed."""

from __future__ import annotations

from pathlib import Path

from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout
from pimega.ingest.rdma import PyverbsVerbs, RdmaLink, RdmaSource, device_address
from pimega.ingest.replay import NexusReplay, RawCaptureReplay
from pimega.ingest.tcp import TcpSource
from pimega.pipeline.backend import Backend
from pimega.runtime.engine import Acquisition
from pimega.sim.detector import SimulatedDetector
from pimega.sim.rdma_sender import RdmaSimulator
from pimega.sim.sender import SimConfig

RDMA_SIM_PORT = 7471  # where an RDMA node with the built-in simulator listens


def simulated_node(layout: ArrayLayout, config: SimConfig | None = None,
                   host: str = "127.0.0.1", port: int = 0,
                   backend: Backend | None = None) -> Acquisition:
    """A node fed by the built-in simulator over loopback TCP."""
    source = TcpSource(host, port)
    detector = SimulatedDetector(*source.address, config or SimConfig(layout=layout))
    return Acquisition(layout, [source], detector=detector, backend=backend)


def listening_node(layout: ArrayLayout, host: str, port: int,
                   backend: Backend | None = None) -> Acquisition:
    """A node receiving from external senders (a detector, ``pimega-sim``) on host:port."""
    return Acquisition(layout, [TcpSource(host, port)], backend=backend)


def replay_node(layout: ArrayLayout, path: Path, rate_hz: float | None = None,
                backend: Backend | None = None) -> Acquisition:
    """A node replaying a file: NeXus/HDF5 written by this project, or raw wire frames."""
    if not path.is_file():
        raise ConfigError(f"replay file {path} does not exist")
    with open(path, "rb") as file:
        signature = file.read(8)
    replay = (NexusReplay(path, layout, rate_hz) if signature.startswith(b"\x89HDF")
              else RawCaptureReplay(path, rate_hz))
    return Acquisition(layout, [replay], detector=replay, backend=backend)


def rdma_node(layout: ArrayLayout, host: str | None, port: int,
              config: SimConfig | None = None, backend: Backend | None = None) -> Acquisition:
    """A node receiving over RDMA on host:port (host None: the RDMA device's address); with
    ``config`` the built-in simulator sends to it over the same device.

    Raises :class:`~pimega.ingest.rdma.RdmaUnavailable` (a PimegaError) saying why, where
    pyverbs or an RDMA device is missing.
    """
    verbs = PyverbsVerbs()
    address = host or device_address()
    source = RdmaSource(address, port, verbs=verbs)
    detector = None if config is None else RdmaSimulator(
        lambda modules: RdmaLink.connect(verbs, address, port, modules), config)
    return Acquisition(layout, [source], detector=detector, backend=backend)
