"""The array coordinator (``pimega-array``) over four module IOCs (``pimega-ioc --sim``), all
on loopback: the stock clients drive the array as one detector, and its master file holds
the simulator's counter pattern of the whole array, bit-exact.

Several Channel Access servers on one host need a UDP port each on loopback (a unicast search
reaches one of the servers sharing a port only): every module IOC gets its own
``EPICS_CA_SERVER_PORT``, the coordinator serves on the session's, and this process's
``EPICS_CA_ADDR_LIST`` names them all.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from bluesky.plans import count
from bluesky.run_engine import call_in_bluesky_event_loop
from caproto import ChannelType
from caproto.threading.client import Context
from ophyd_async.core import StaticPathProvider, TriggerInfo, UUIDFilenameProvider, init_devices

from pimega.bluesky.ophyd import PimegaDetector
from pimega.bluesky.ophyd_async import pimega_detector
from pimega.cli import array as array_cli
from pimega.cli import ioc as ioc_cli
from pimega.cli import sim as sim_cli
from pimega.cli.loopback import free_port
from pimega.coordinator import ArrayConfig, ModuleNode, default_config, load_config
from pimega.coordinator.aggregate import (
    StatsPart,
    assemble_preview,
    merge_stats,
    split_roi,
)
from pimega.coordinator.link import ACTIONS, MONITORED, SETTINGS, ca_value
from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.iocs.app import ioc_class
from pimega.iocs.factory import all_pv_names
from pimega.pipeline.stats import compute_stats, roi
from pimega.runtime import RoiSettings
from pimega.sim.patterns import counter_array_image

from .conftest import RunningIOC, start_ioc, stop_ioc
from .test_bluesky_ophyd import recorded_frames as datum_frames
from .test_bluesky_ophyd_async import fly, of_kind, run
from .test_bluesky_ophyd_async import recorded_frames as stream_frames

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16), 2, 2)
PREFIX = "PMARRAY:"
NODES = [f"{PREFIX}N{i}:" for i in range(1, LAYOUT.n_modules + 1)]
DATASET = "/entry/data/data"


# -- the parts, without Channel Access -----------------------------------------------------


def test_config_places_modules_by_position_and_refuses_a_hole(tmp_path):
    path = tmp_path / "array.toml"
    path.write_text('chips = [2, 2]\nchip_size = 16\n'
                    '[[module]]\nprefix = "A:"\nposition = [1, 1]\n'
                    '[[module]]\nprefix = "B:"\nposition = [0, 0]\n'
                    '[[module]]\nprefix = "C:"\nposition = [0, 1]\n'
                    '[[module]]\nprefix = "D:"\nposition = [1, 0]\n')
    config = load_config(path)
    assert config.layout == LAYOUT
    assert [(m.prefix, m.module_id) for m in config.modules] == [
        ("B:", 0), ("C:", 1), ("D:", 2), ("A:", 3)]
    assert config.modules[3].label == "M4 (A:)"
    assert default_config("P:").modules[2] == ModuleNode("P:N3:", 2)
    path.write_text('[[module]]\nprefix = "A:"\n[[module]]\nprefix = "B:"\n')
    with pytest.raises(ConfigError, match=r"modules 0 … 3, got modules \[0, 1\]"):
        load_config(path)
    with pytest.raises(ConfigError, match="distinct"):
        ArrayConfig(ArrayLayout(modules_x=2), (ModuleNode("A:", 0), ModuleNode("A:", 1)))


@pytest.mark.parametrize("region", [RoiSettings(), RoiSettings(5, 20, 40, 30),
                                    RoiSettings(33, 0, 10, 64), RoiSettings(1, 2, 0, 0, 1, 1)])
def test_statistics_merged_from_the_modules_equal_those_of_the_whole_roi(region):
    image = np.random.default_rng(1).integers(0, 4096, LAYOUT.shape).astype(np.uint16)
    parts = []
    for module_id, share in enumerate(split_roi(region, LAYOUT)):
        if share is None:
            continue
        top, left = LAYOUT.module_origin(module_id)
        module = image[top:top + 32, left:left + 32]
        r = share.roi
        part = roi(module, r.min_x, r.min_y, r.size_x, r.size_y, r.bin_x, r.bin_y)
        parts.append(StatsPart(compute_stats(part), part.size, share.offset))
    whole = compute_stats(roi(image, region.min_x, region.min_y, region.size_x, region.size_y,
                              region.bin_x, region.bin_y))
    merged = merge_stats(parts)
    for name, value in vars(whole).items():
        assert getattr(merged, name) == pytest.approx(value, rel=1e-9, abs=1e-9), name


def test_preview_is_assembled_from_the_modules_previews():
    previews = [np.full((16, 16), module_id + 1) for module_id in range(4)]
    previews[3] = np.ones((8, 8))  # not binned alike yet: left out
    image = assemble_preview(LAYOUT, 2, previews, np.dtype(np.uint16))
    assert image.shape == (32, 32) and image.dtype == np.uint16
    assert image[0, 0] == 1 and image[0, 16] == 2 and image[16, 0] == 3 and image[16, 16] == 0


def test_every_pv_the_coordinator_uses_is_served_by_a_module_ioc():
    served = {name for name, _, _ in all_pv_names(ioc_class(1, 32), "")}
    assert not {*SETTINGS, *ACTIONS, *MONITORED} - served


def test_compose_array_runs_four_nodes_and_the_coordinator_with_valid_commands():
    compose = yaml.safe_load((ROOT / "docker" / "compose.array.yaml").read_text())
    services = compose["services"]
    nodes = [services[f"node{i}"] for i in range(1, 5)]
    sims = [services[f"sim{i}"] for i in range(1, 5)]
    coordinator = array_cli.parser().parse_args(services["array"]["command"][1:])
    config = default_config(coordinator.prefix)
    addresses = services["array"]["environment"]["EPICS_CA_ADDR_LIST"].split()
    for module, node, sim in zip(config.modules, nodes, sims, strict=True):
        assert node["network_mode"] == sim["network_mode"] == "host"
        node_args = ioc_cli.parser().parse_args(node["command"][1:])
        sim_args = sim_cli.build_parser().parse_args(sim["command"][1:])
        assert node_args.prefix == module.prefix
        assert node_args.listen == (sim_args.host, sim_args.port[0])
        assert sim_args.module_id == module.module_id
        assert f"127.0.0.1:{node['environment']['EPICS_CA_SERVER_PORT']}" in addresses


# -- four module IOCs and the coordinator on loopback --------------------------------------


@dataclass
class Array:
    coordinator: RunningIOC
    nodes: list[RunningIOC]
    client: Client


class Client:
    """Channel Access (caproto's threading client) to the coordinator and the nodes."""

    def __init__(self) -> None:
        self.context = Context()

    def pv(self, name: str) -> Any:
        (pv,) = self.context.get_pvs(name, timeout=5)
        pv.wait_for_connection(timeout=20)
        return pv

    def get(self, name: str) -> Any:
        return ca_value(self.pv(name).read(data_type="control", timeout=10))

    def put(self, name: str, value: Any, callback: Callable[[Any], None] | None = None) -> None:
        """Write; wait for the put-callback unless ``callback`` takes it."""
        pv = self.pv(name)
        if isinstance(value, str) and pv.channel.native_data_type == ChannelType.CHAR:
            value = np.frombuffer(value.encode() + b"\0", np.uint8)
            kwargs: dict[str, Any] = {}
        else:
            value = [value]
            kwargs = {"data_type": ChannelType.STRING} if isinstance(value[0], str) else {}
        pv.write(value, wait=callback is None, callback=callback, timeout=30, **kwargs)

    def wait(self, name: str, accept: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        """Until the monitor of ``name`` shows a value ``accept`` takes; that value."""
        seen: list[Any] = []
        done = threading.Event()

        def update(sub: Any, response: Any) -> None:
            seen.append(ca_value(response))
            if accept(seen[-1]):
                done.set()

        subscription = self.pv(name).subscribe(data_type="control")
        token = subscription.add_callback(update)
        try:
            assert done.wait(timeout), f"{name} never accepted; last {seen[-1:]}"
        finally:
            subscription.remove_callback(token)
        return seen[-1]


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    """Four simulated module IOCs of 2x2 chips of 16 pixels, each on CA ports of its own, and
    the coordinator on the session's port, started together."""
    directory = tmp_path_factory.mktemp("array")
    config = directory / "array.toml"
    config.write_text("chips = [2, 2]\nchip_size = 16\n" + "".join(
        f'[[module]]\nprefix = "{prefix}"\n' for prefix in NODES))
    ports = [free_port() for _ in NODES]
    node_list = " ".join(f"127.0.0.1:{port}" for port in ports)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EPICS_CA_ADDR_LIST", f"127.0.0.1 {node_list}")
        with ThreadPoolExecutor(len(NODES) + 1) as pool:
            nodes = [pool.submit(
                start_ioc, prefix, directory / f"node{i}.log", "--sim", "--chips", "2x2",
                "--chip-size", "16", "--module-id", str(i), "--no-autosave",
                env=_own_ports(port))
                for i, (prefix, port) in enumerate(zip(NODES, ports, strict=True))]
            coordinator = pool.submit(
                start_ioc, PREFIX, directory / "array.log", "--config", str(config),
                module="pimega.cli.array", env={"EPICS_CA_ADDR_LIST": node_list})
            running = _started([*nodes, coordinator])
        client = Client()
        try:
            for i in range(1, LAYOUT.n_modules + 1):
                client.wait(f"{PREFIX}cam1:M{i}:Connected_RBV", lambda v: v == "Yes")
            yield Array(running[-1], running[:-1], client)
        finally:
            client.context.disconnect()
            for ioc in running:
                stop_ioc(ioc)


def _started(starting: list[Future[RunningIOC]]) -> list[RunningIOC]:
    """The IOCs once all have started; if one failed, the others stopped and its error."""
    running, errors = [], []
    for future in starting:
        try:
            running.append(future.result())
        except RuntimeError as exc:
            errors.append(exc)
    if errors:
        for ioc in running:
            stop_ioc(ioc)
        raise errors[0]
    return running


def _own_ports(ca_port: int) -> dict[str, str]:
    """A module IOC's environment: Channel Access and PV Access ports of its own."""
    pva, broadcast = free_port(), free_port()
    return {"EPICS_CA_SERVER_PORT": str(ca_port), "EPICS_CAS_SERVER_PORT": str(ca_port),
            "EPICS_PVA_SERVER_PORT": str(pva), "EPICS_PVAS_SERVER_PORT": str(pva),
            "EPICS_PVA_BROADCAST_PORT": str(broadcast),
            "EPICS_PVAS_BROADCAST_PORT": str(broadcast)}


def counter_frames(n: int, bit_depth: int = 12) -> np.ndarray:
    return np.stack([counter_array_image(LAYOUT, i, bit_depth) for i in range(n)])


def test_the_coordinator_serves_the_array_with_a_module_iocs_pvs(array):
    get = array.client.get
    assert (get(f"{PREFIX}cam1:ArraySizeX_RBV"), get(f"{PREFIX}cam1:ArraySizeY_RBV")) == (64, 64)
    assert get(f"{PREFIX}HDF1:ArraySize0_RBV") == 64
    assert get(f"{PREFIX}cam1:Model_RBV") == "pi-MEGA 4-module"
    assert get(f"{PREFIX}Pipe:Write:State_RBV") == "Idle"
    assert get(f"{PREFIX}cam1:M3:Connected_RBV") == "Yes"


def test_ophyd_async_fly_scan_records_the_whole_array_bit_exact(array, RE, tmp_path):
    async def connect() -> Any:
        async with init_devices(timeout=30):
            det = pimega_detector(PREFIX, StaticPathProvider(UUIDFilenameProvider(), tmp_path),
                                  name="det")
        return det

    det = call_in_bluesky_event_loop(connect(), timeout=60)
    n = 12
    docs = run(RE, fly(det, TriggerInfo(number_of_events=n, livetime=0.004)))
    np.testing.assert_array_equal(stream_frames(docs), counter_frames(n))
    (resource,) = of_kind(docs, "stream_resource")
    master = Path(resource["uri"].removeprefix("file://localhost"))
    with h5py.File(master, "r") as f:  # plain h5py, the capture closed
        assert f[DATASET].is_virtual and f[DATASET].shape == (n, *LAYOUT.shape)
        assert list(f["/entry/instrument/detector/collection/module_frames"]) == [n] * 4
        assert list(f["/entry/instrument/detector/frame_number"]) == list(range(n))
    for i in range(1, 5):  # one file per node beside the master, each its module's frames
        with h5py.File(master.with_name(f"{master.stem}_m{i}.h5"), "r") as f:
            assert f[DATASET].shape == (n, 32, 32)
    for prefix in NODES:  # settings fanned out: each node acquired as the array was told
        assert array.client.get(f"{prefix}cam1:AcquirePeriod_RBV") == 0.004
        assert array.client.get(f"{prefix}cam1:NumImages_RBV") == n
    # the preview: the modules' previews of the last frame, assembled
    last = counter_array_image(LAYOUT, n - 1, 12).ravel()
    array.client.wait(f"{PREFIX}image1:ArrayData",
                      lambda data: np.array_equal(np.asarray(data)[:last.size], last))


def test_ophyd_count_records_one_array_frame_per_point(array, RE, tmp_path):
    det = PimegaDetector(PREFIX, name="det", write_path_template=str(tmp_path))
    det.wait_for_connection(timeout=30)
    docs = run(RE, count([det], num=3))
    expected = counter_array_image(LAYOUT, 0, 12)  # each trigger is a new acquisition
    for frame in datum_frames(docs):
        np.testing.assert_array_equal(frame, expected[None])
    totals = [event["data"]["det_stats1_total"] for event in of_kind(docs, "event")]
    assert totals == [float(expected.sum())] * 3


def test_software_triggers_reach_every_module(array):
    """External mode fans out; each TriggerSoftware pulse gives one array frame."""
    client = array.client
    for name, value in (("TriggerMode", "External"), ("AcquireTime", 0.01),
                        ("ImageMode", "Multiple"), ("NumImages", 2)):
        client.put(f"{PREFIX}cam1:{name}", value)
    ended = threading.Event()
    try:
        client.put(f"{PREFIX}cam1:Acquire", 1, callback=lambda response: ended.set())
        client.wait(f"{PREFIX}cam1:DetectorState_RBV", lambda state: state == "Waiting")
        for prefix in NODES:
            client.wait(f"{prefix}cam1:DetectorState_RBV", lambda state: state == "Waiting")
        for n in (1, 2):
            client.put(f"{PREFIX}cam1:TriggerSoftware", "Trigger")
            client.wait(f"{PREFIX}cam1:NumImagesCounter_RBV", lambda count, n=n: count == n)
        assert ended.wait(20)
        for prefix in NODES:
            assert client.get(f"{prefix}cam1:TriggerMode_RBV") == "External"
            assert client.get(f"{prefix}cam1:NumImagesCounter_RBV") == 2
    finally:
        client.put(f"{PREFIX}cam1:TriggerMode", "Internal")


def test_a_node_refusing_the_capture_is_named(array, tmp_path):
    client = array.client
    (tmp_path / "taken_m2.h5").write_bytes(b"")  # node 2 never replaces a file
    for name, value in (("FilePath", f"{tmp_path}/"), ("FileName", "taken"),
                        ("FileTemplate", "%s%s.h5"), ("AutoIncrement", "No")):
        client.put(f"{PREFIX}HDF1:{name}", value)
    ended = threading.Event()
    client.put(f"{PREFIX}HDF1:Capture", 1, callback=lambda response: ended.set())
    assert ended.wait(30)
    message = client.get(f"{PREFIX}HDF1:WriteMessage")
    assert message.startswith(f"M2 ({NODES[1]}): HDF1:Capture=1 refused") and "exists" in message
    for prefix in NODES:
        assert client.get(f"{prefix}HDF1:Capture_RBV") == "Done"


def test_stop_stops_every_module(array):
    client = array.client
    client.put(f"{PREFIX}cam1:ImageMode", "Continuous")
    ended = threading.Event()
    client.put(f"{PREFIX}cam1:Acquire", 1, callback=lambda response: ended.set())
    client.wait(f"{PREFIX}cam1:NumImagesCounter_RBV", lambda n: n >= 5)
    client.put(f"{PREFIX}cam1:Acquire", 0)
    assert ended.wait(20)
    assert client.get(f"{PREFIX}cam1:DetectorState_RBV") == "Aborted"
    for prefix in NODES:
        assert client.get(f"{prefix}cam1:Acquire_RBV") == "Done"
    client.put(f"{PREFIX}cam1:ImageMode", "Multiple")


def test_a_module_killed_mid_acquisition_is_named_and_the_frames_before_stay(array, tmp_path):
    client = array.client
    for name, value in (("FilePath", f"{tmp_path}/"), ("FileName", "killed"),
                        ("FileTemplate", "%s%s.h5"), ("AutoIncrement", "No"),
                        ("FileWriteMode", "Stream"), ("NumCapture", 0), ("SWMRMode", "On")):
        client.put(f"{PREFIX}HDF1:{name}", value)
    for name, value in (("ImageMode", "Multiple"), ("NumImages", 100000),
                        ("AcquirePeriod", 0.01)):
        client.put(f"{PREFIX}cam1:{name}", value)
    acquired, captured = threading.Event(), threading.Event()
    client.put(f"{PREFIX}HDF1:Capture", 1, callback=lambda response: captured.set())
    client.wait(f"{PREFIX}HDF1:Capture_RBV", lambda v: v == "Capturing")
    client.put(f"{PREFIX}cam1:Acquire", 1, callback=lambda response: acquired.set())
    client.wait(f"{PREFIX}HDF1:NumCaptured_RBV", lambda n: n >= 10)
    os.kill(array.nodes[2].process.pid, signal.SIGKILL)
    assert acquired.wait(30) and captured.wait(30)
    assert client.get(f"{PREFIX}cam1:DetectorState_RBV") == "Error"
    assert client.get(f"{PREFIX}cam1:StatusMessage_RBV").startswith(f"M3 ({NODES[2]}) lost")
    assert client.get(f"{PREFIX}HDF1:WriteStatus") == "Write error"
    assert client.get(f"{PREFIX}HDF1:WriteMessage").startswith(f"M3 ({NODES[2]}) lost")
    assert client.get(f"{PREFIX}cam1:M3:Connected_RBV") == "No"
    for prefix in (NODES[0], NODES[1], NODES[3]):  # the others stopped cleanly
        assert client.get(f"{prefix}cam1:Acquire_RBV") == "Done"
        assert client.get(f"{prefix}cam1:DetectorState_RBV") == "Aborted"
        assert client.get(f"{prefix}HDF1:Capture_RBV") == "Done"
    with h5py.File(tmp_path / "killed.h5", "r") as f:
        data = f[DATASET]
        frames = data.shape[0]
        assert frames >= 10
        held = list(f["/entry/instrument/detector/collection/module_frames"])
        for i in range(frames):
            expected, got = counter_array_image(LAYOUT, i, 12), data[i]
            lost = np.s_[32:, :32]  # module 3's part: its frames if its file survived, else 0
            assert np.array_equal(got[lost], expected[lost]) or not got[lost].any()
            got[lost] = expected[lost]
            np.testing.assert_array_equal(got, expected)
    assert min(held[0], held[1], held[3]) == frames
