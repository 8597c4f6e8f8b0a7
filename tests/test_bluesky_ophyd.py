"""ophyd (v1) ``PimegaDetector`` against a real ``pimega-ioc --sim``, run by a real RunEngine.

Frames are read back from the run's resource/datum documents and compared with the
simulator's counter pattern. Under ophyd's ``SingleTrigger`` each trigger is its own
acquisition, whose frames are numbered from 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import numpy as np
import pytest
from bluesky.plans import count, scan
from bluesky.utils import RunEngineInterrupted
from ophyd.sim import SynAxis

from pimega.bluesky.ophyd import DATASET, PimegaDetector, read_datum_frames
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.sim.patterns import counter_array_image

from .conftest import assert_ioc_idle, interrupt_after_frames

LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16))
pytestmark = pytest.mark.slow

Documents = list[tuple[str, dict]]


@pytest.fixture(scope="module")
def connected_det(small_ioc) -> PimegaDetector:
    det = PimegaDetector(small_ioc.prefix, name="det", write_path_template="/tmp")
    det.wait_for_connection(timeout=20)
    return det


@pytest.fixture
def det(connected_det, tmp_path) -> Iterator[PimegaDetector]:
    """The detector writing into this test's ``tmp_path``, its stage_sigs restored after."""
    stage_sigs = dict(connected_det.stage_sigs)
    connected_det.hdf1.write_path_template = str(tmp_path)
    yield connected_det
    connected_det.stage_sigs.clear()
    connected_det.stage_sigs.update(stage_sigs)


def run(RE, plan) -> Documents:
    docs: Documents = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def of_kind(docs: Documents, kind: str) -> list[dict]:
    return [doc for name, doc in docs if name == kind]


def recorded_frames(docs: Documents, key: str = "det_image") -> list[np.ndarray]:
    """Each event's frames, found through its datum and resource documents."""
    resources = {doc["uid"]: doc for doc in of_kind(docs, "resource")}
    datums = {doc["datum_id"]: doc for doc in of_kind(docs, "datum")}
    frames = []
    for event in of_kind(docs, "event"):
        datum = datums[event["data"][key]]
        frames.append(read_datum_frames(resources[datum["resource"]], datum))
    return frames


def test_stock_cam_and_hdf5_classes_connect_every_signal(connected_det):
    # ophyd connects lazily: ask for every signal of the stock AreaDetectorCam and HDF5Plugin
    for part in (connected_det.cam, connected_det.hdf1):
        part.wait_for_connection(all_signals=True, timeout=30)


def test_pimega_pvs_read_back(connected_det):
    assert connected_det.cam.counter_depth.get() == "12 bits"
    assert connected_det.cam.max_frame_rate.get() == 2000
    assert connected_det.pipe.decode.state.get() == "Idle"
    assert connected_det.hdf1.plugin_type.get().startswith("NDFileHDF5")
    assert connected_det.hints == {"fields": ["det_stats1_total"]}
    assert "det_cam_counter_depth" in connected_det.read_configuration()


def test_count_records_each_frame_in_one_file(RE, det, small_ioc):
    docs = run(RE, count([det], num=5))
    (resource,) = of_kind(docs, "resource")
    assert resource["spec"] == "AD_HDF5"
    assert len(of_kind(docs, "datum")) == 5
    (descriptor,) = of_kind(docs, "descriptor")
    assert list(descriptor["data_keys"]["det_image"]["shape"]) == [1, *LAYOUT.shape]
    expected = counter_array_image(LAYOUT, 0, 12)  # each trigger is a new acquisition
    frames = recorded_frames(docs)
    assert len(frames) == 5
    for frame in frames:
        np.testing.assert_array_equal(frame, expected[None])
    totals = [event["data"]["det_stats1_total"] for event in of_kind(docs, "event")]
    assert totals == [float(expected.sum())] * 5
    with h5py.File(f"{resource['root']}{resource['resource_path']}", "r") as f:
        assert f[DATASET].shape == (5, *LAYOUT.shape)
    assert_ioc_idle(small_ioc.prefix)


def test_several_frames_per_point_keep_their_order(RE, det):
    det.stage_sigs["cam.num_images"] = 3
    frames = recorded_frames(run(RE, count([det], num=2)))
    expected = np.stack([counter_array_image(LAYOUT, i, 12) for i in range(3)])
    assert len(frames) == 2
    for frame in frames:
        np.testing.assert_array_equal(frame, expected)


def test_counter_depth_sets_the_recorded_data_type(RE, det):
    det.stage_sigs["cam.counter_depth"] = "24 bits"  # restored to 12 bits at unstage
    docs = run(RE, count([det], num=1))
    (descriptor,) = of_kind(docs, "descriptor")
    assert descriptor["data_keys"]["det_image"]["dtype_numpy"] == "<u4"
    (frame,) = recorded_frames(docs)
    np.testing.assert_array_equal(frame[0], counter_array_image(LAYOUT, 0, 24))
    assert det.cam.counter_depth.get() == "12 bits"


def test_step_scan_records_one_frame_per_motor_point(RE, det):
    motor = SynAxis(name="motor")
    docs = run(RE, scan([det], motor, -1.0, 1.0, 4))
    events = of_kind(docs, "event")
    assert [e["data"]["motor"] for e in events] == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])
    frames = recorded_frames(docs)
    assert [f.shape for f in frames] == [(1, *LAYOUT.shape)] * 4
    for frame in frames:
        np.testing.assert_array_equal(frame[0], counter_array_image(LAYOUT, 0, 12))


@pytest.mark.parametrize(("interrupt", "exit_status"), [("abort", "abort"), ("stop", "success")])
def test_abort_or_stop_mid_acquisition_leaves_the_ioc_idle_and_the_file_readable(
    RE, det, small_ioc, interrupt, exit_status
):
    one_frame_per_point = dict(det.stage_sigs)
    period_before = det.cam.acquire_period.get()
    det.stage_sigs.update({"cam.num_images": 5000, "cam.acquire_period": 0.005})
    docs: Documents = []
    watcher = interrupt_after_frames(getattr(RE, interrupt), small_ioc.prefix, 5)
    with pytest.raises(RunEngineInterrupted):
        RE(count([det], num=1), lambda name, doc: docs.append((name, doc)))
    watcher.join(timeout=10)
    assert RE.state == "idle"
    assert [stop["exit_status"] for stop in of_kind(docs, "stop")] == [exit_status]
    assert_ioc_idle(small_ioc.prefix)
    assert det.cam.acquire_period.get() == period_before  # unstage restored the settings
    assert not of_kind(docs, "event")  # the resource would have come with the first event
    with h5py.File(det.hdf1.full_file_name.get(), "r") as f:
        data = f[DATASET][:]
    assert 5 <= len(data) < 5000
    for i, frame in enumerate(data):
        np.testing.assert_array_equal(frame, counter_array_image(LAYOUT, i, 12))
    det.stage_sigs = one_frame_per_point
    assert len(recorded_frames(run(RE, count([det], num=2)))) == 2
