"""ophyd-async ``PimegaDetector`` against a real ``pimega-ioc --sim``, run by a real RunEngine.

Frames are read back from the run's stream resource / stream datum documents and compared
bit-exactly with the simulator's counter pattern (frames are numbered from 0 in each
acquisition: every step-scan trigger is one, a fly scan is one).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import epics
import h5py
import numpy as np
import pytest
from bluesky.plans import count, scan
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.utils import RunEngineInterrupted
from ophyd_async.core import (
    DetectorTrigger,
    StaticPathProvider,
    TriggerInfo,
    UUIDFilenameProvider,
    init_devices,
)
from ophyd_async.epics import adcore
from ophyd_async.sim import SimMotor

from pimega.bluesky.ophyd_async import (
    PimegaCounterDepth,
    PimegaDetector,
    PipelineState,
    pimega_detector,
    read_stream_frames,
)
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.sim.patterns import counter_array_image

from .conftest import assert_ioc_idle, interrupt_after_frames

LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16))
DATASET = "/entry/data/data"
pytestmark = pytest.mark.slow

Documents = list[tuple[str, dict]]


@pytest.fixture
def det(small_ioc, tmp_path, RE) -> PimegaDetector:
    """A detector connected without mocks, writing into this test's ``tmp_path``."""

    async def connect() -> PimegaDetector:
        async with init_devices(timeout=20):
            det = pimega_detector(small_ioc.prefix,
                                  StaticPathProvider(UUIDFilenameProvider(), tmp_path),
                                  name="det")
        return det

    return call_in_bluesky_event_loop(connect(), timeout=60)


def run(RE, plan) -> Documents:
    docs: Documents = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def of_kind(docs: Documents, kind: str) -> list[dict]:
    return [doc for name, doc in docs if name == kind]


def recorded_frames(docs: Documents) -> np.ndarray:
    """Every frame the run's stream datums point at, in order."""
    resources = {doc["uid"]: doc for doc in of_kind(docs, "stream_resource")}
    return np.concatenate([read_stream_frames(resources[datum["stream_resource"]], datum)
                           for datum in of_kind(docs, "stream_datum")])


def file_frames(docs: Documents) -> np.ndarray:
    (resource,) = of_kind(docs, "stream_resource")
    with h5py.File(Path(resource["uri"].removeprefix("file://localhost")), "r") as f:
        return f[DATASET][:]


def counter_frames(n: int, bit_depth: int = 12) -> np.ndarray:
    return np.stack([counter_array_image(LAYOUT, i, bit_depth) for i in range(n)])


def fly(det: PimegaDetector, info: TriggerInfo):
    """prepare → kickoff → collect while completing, in one run; unstages even when aborted."""

    @bpp.stage_decorator([det])
    @bpp.run_decorator()
    def inner():
        yield from bps.prepare(det, info, wait=True)
        yield from bps.declare_stream(det, name="primary", collect=True)
        yield from bps.kickoff(det, wait=True)
        yield from bps.collect_while_completing([det], [det], flush_period=0.2)

    return (yield from inner())


def test_stock_adcore_ios_and_pimega_device_connect_without_mocks(small_ioc, det, RE):
    prefix = small_ioc.prefix

    async def connect_and_read() -> None:
        async with init_devices(timeout=20):
            driver = adcore.ADBaseIO(prefix + "cam1:")
            image = adcore.NDPluginBaseIO(prefix + "image1:")
            hdf = adcore.NDFileHDF5IO(prefix + "HDF1:")
            stats = adcore.NDStatsIO(prefix + "Stats1:")
            roi = adcore.NDROIIO(prefix + "ROI1:")
        assert await driver.array_size_x.get_value() == LAYOUT.shape[1]
        assert await image.port_name.get_value() == "IMAGE1"
        assert await hdf.nd_array_port.get_value() == await driver.port_name.get_value()
        assert await stats.nd_array_port.get_value() == await roi.port_name.get_value()
        assert await det.driver.counter_depth.get_value() == PimegaCounterDepth.TWELVE_BITS
        assert await det.driver.max_frame_rate.get_value() == 2000
        assert await det.pipeline.decode.state.get_value() == PipelineState.IDLE
        assert await det.pipeline.backend.get_value() == "CPU"

    call_in_bluesky_event_loop(connect_and_read(), timeout=60)
    assert det.hints == {"fields": ["det", "det-stats-total"]}


def test_count_records_each_frame_in_one_file(RE, det, small_ioc):
    docs = run(RE, count([det], num=5))
    (resource,) = of_kind(docs, "stream_resource")
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["parameters"]["dataset"] == DATASET
    assert len(of_kind(docs, "stream_datum")) == 5
    (descriptor,) = of_kind(docs, "descriptor")
    assert descriptor["data_keys"]["det"]["shape"] == [1, *LAYOUT.shape]
    assert descriptor["configuration"]["det"]["data"]["det-driver-counter_depth"] == "12 bits"
    expected = counter_array_image(LAYOUT, 0, 12)  # each trigger is a new acquisition
    np.testing.assert_array_equal(recorded_frames(docs), np.stack([expected] * 5))
    assert file_frames(docs).shape == (5, *LAYOUT.shape)
    totals = [event["data"]["det-stats-total"] for event in of_kind(docs, "event")]
    assert totals == [float(expected.sum())] * 5
    assert_ioc_idle(small_ioc.prefix)


def test_fly_scan_writes_exactly_n_frames_bit_exact(RE, det, small_ioc):
    n = 40
    docs = run(RE, fly(det, TriggerInfo(number_of_events=n, livetime=0.002)))
    assert call_in_bluesky_event_loop(det.driver.acquire_period.get_value()) == 0.002
    frames = recorded_frames(docs)
    np.testing.assert_array_equal(frames, counter_frames(n))
    np.testing.assert_array_equal(file_frames(docs), frames)  # exactly n frames in the file
    datums = of_kind(docs, "stream_datum")
    assert datums[0]["indices"]["start"] == 0
    assert datums[-1]["indices"]["stop"] == n
    assert_ioc_idle(small_ioc.prefix)


def test_fly_scan_in_24_bit_mode_records_uint32(RE, det):
    def at_24_bits():
        yield from bps.abs_set(det.driver.counter_depth, PimegaCounterDepth.TWENTY_FOUR_BITS,
                               wait=True)
        yield from fly(det, TriggerInfo(number_of_events=8))
        yield from bps.abs_set(det.driver.counter_depth, PimegaCounterDepth.TWELVE_BITS,
                               wait=True)

    docs = run(RE, at_24_bits())
    (descriptor,) = of_kind(docs, "descriptor")
    assert descriptor["data_keys"]["det"]["dtype_numpy"] == "<u4"
    np.testing.assert_array_equal(recorded_frames(docs), counter_frames(8, bit_depth=24))


def test_step_scan_records_one_frame_per_motor_point(RE, det):
    async def make_motor() -> SimMotor:
        async with init_devices():
            motor = SimMotor(name="motor")
        return motor

    motor = call_in_bluesky_event_loop(make_motor())
    docs = run(RE, scan([det], motor, 0.0, 3.0, 4))
    events = of_kind(docs, "event")
    assert [e["data"]["motor"] for e in events] == [0.0, 1.0, 2.0, 3.0]
    frames = recorded_frames(docs)
    np.testing.assert_array_equal(frames, np.stack([counter_array_image(LAYOUT, 0, 12)] * 4))


@pytest.mark.parametrize(("interrupt", "exit_status"), [("abort", "abort"), ("stop", "success")])
def test_abort_or_stop_mid_fly_scan_leaves_the_ioc_idle_and_the_file_readable(
    RE, det, small_ioc, interrupt, exit_status
):
    docs: Documents = []
    watcher = interrupt_after_frames(getattr(RE, interrupt), small_ioc.prefix, 10)
    with pytest.raises(RunEngineInterrupted):
        RE(fly(det, TriggerInfo(number_of_events=5000, livetime=0.005)),
           lambda name, doc: docs.append((name, doc)))
    watcher.join(timeout=10)
    assert RE.state == "idle"
    assert [stop["exit_status"] for stop in of_kind(docs, "stop")] == [exit_status]
    assert_ioc_idle(small_ioc.prefix)
    filename = call_in_bluesky_event_loop(det.hdf.full_file_name.get_value())
    with h5py.File(filename, "r") as f:
        data = f[DATASET][:]
    assert 10 <= len(data) < 5000
    np.testing.assert_array_equal(data, counter_frames(len(data)))
    # the next scan works
    assert len(recorded_frames(run(RE, count([det], num=2)))) == 2


def test_edge_triggered_fly_scan_takes_one_frame_per_trigger(RE, det, small_ioc):
    """External trigger (``TriggerSoftware`` pulses stand in for the beamline's edges)."""
    prefix, n = small_ioc.prefix, 3
    acquiring = epics.PV(prefix + "cam1:Acquire_RBV", auto_monitor=False)
    pulse = epics.PV(prefix + "cam1:TriggerSoftware", auto_monitor=False)

    def pulses() -> None:
        deadline = time.monotonic() + 30
        while acquiring.get() != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for _ in range(n):
            time.sleep(0.1)
            pulse.put("Trigger", wait=True)

    pulser = threading.Thread(target=pulses, daemon=True)
    pulser.start()
    try:
        docs = run(RE, fly(det, TriggerInfo(number_of_events=n, livetime=0.01,
                                            trigger=DetectorTrigger.EXTERNAL_EDGE)))
    finally:
        pulser.join(30)
        epics.caput(prefix + "cam1:TriggerMode", "Internal", wait=True)
    np.testing.assert_array_equal(recorded_frames(docs), counter_frames(n))
    assert epics.caget(prefix + "cam1:AcquireTime_RBV") == pytest.approx(0.01)
    assert_ioc_idle(prefix)
