"""areaDetector fidelity against a real ``pimega-ioc --sim`` with real clients: readbacks that
never lie, exposure timing, compression, file modes, plugin counters, NeXus validation, PV
Access time stamps and Proc1's corrections."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import epics
import h5py
import numpy as np
import pytest

import tests.test_ioc as ioc_tests
from pimega.screens.pvs import ServedPV, ServedPVs
from pimega.sim.patterns import counter_array_image
from tests.test_ioc import LAYOUT, capture_and_acquire, put, stop_capture, text, wait_for

ioc = ioc_tests.ioc  # fixtures: an IOC for this module, and its PVs in a known state
pv = ioc_tests.pv

pytestmark = pytest.mark.slow

EPICS_EPOCH_S = 631152000
#: Settings of the plugins these tests change, put back before each test.
EXTRA_STATE = (
    ("HDF1:AutoSave", "No"), ("HDF1:Compression", "None"), ("HDF1:NexusDefinition", "NXtomo"),
    ("HDF1:SampleName", "sample"),
    ("HDF1:EnableCallbacks", "Enable"), ("Proc1:EnableBackground", "Disable"),
    ("Proc1:EnableFlatField", "Disable"), ("Proc1:EnableOffsetScale", "Disable"),
    ("Proc1:EnableLowClip", "Disable"), ("Proc1:EnableHighClip", "Disable"),
    ("Proc1:EnableFilter", "Disable"), ("Proc1:DataTypeOut", "Automatic"),
    ("Proc1:ScaleFlatField", 255.0), ("Proc1:EnableBadPixels", "Disable"),
    ("Proc1:BadPixelFile", ""),
)
#: Setpoints the sweep leaves out: busy records act, and these need a context to be valid.
NOT_SWEPT = {"FilePath", "BadPixelFile", "FileTemplate", "Dimensions"}


@pytest.fixture(autouse=True)
def extra_state(pv):
    for suffix, value in EXTRA_STATE:
        put(pv, suffix, value)


def acquire(pv, n: int, mode: str = "Multiple") -> None:
    put(pv, "cam1:ImageMode", mode)
    put(pv, "cam1:NumImages", n)
    assert pv("cam1:Acquire").put(1, wait=True, timeout=30) is not None


def test_enabling_a_reference_that_is_not_there_is_refused(pv):
    """First in this module: no test has saved a flat yet (the sweep puts SaveFlatField)."""
    assert text(pv, "Proc1:ValidFlatField_RBV") == "Invalid"
    pv("Proc1:EnableFlatField").put("Enable", wait=True, timeout=10)
    assert text(pv, "Proc1:EnableFlatField_RBV") == "Disable"


# --- 1. readbacks never lie -------------------------------------------------------------


def sweep_values(setpoint: ServedPV) -> list:
    """Valid values to put on a setpoint: each enum state, or two of its type."""
    if setpoint.enum_strings:
        return list(range(len(setpoint.enum_strings)))
    if setpoint.text or setpoint.record == "stringout":
        return ["pimega_sweep"]
    return [0.5, 2.0] if setpoint.record == "ao" else [1, 2]


def test_every_setpoint_and_its_readback_agree_after_each_valid_value(ioc, pv):
    """Each writable PV echoed in a readback takes each valid value or refuses it; either
    way setpoint and _RBV read the same afterwards, and it is put back as it was."""
    served = ServedPVs.of(1, ioc.prefix)
    pairs = [(setpoint, readback) for name, setpoint in served.items()
             if setpoint.writable and setpoint.record != "busy"
             and name.rsplit(":", 1)[-1] not in NOT_SWEPT
             and (readback := served.readback(name)) is not None]
    assert len(pairs) > 200

    def channel(served: ServedPV) -> epics.PV:
        return epics.PV(served.name, auto_monitor=False, connection_timeout=10)

    def read(channel: epics.PV, served: ServedPV):
        return channel.get(as_string=served.text or served.record == "stringout",
                           use_monitor=False, timeout=10)

    disagree = []
    for setpoint, readback in pairs:
        put_channel, readback_channel = channel(setpoint), channel(readback)
        original = read(put_channel, setpoint)
        for value in [*sweep_values(setpoint), original]:
            put_channel.put(value, wait=True, timeout=10)  # refused: nothing changes
            shown = (read(put_channel, setpoint), read(readback_channel, setpoint))
            if shown[0] != shown[1]:
                disagree.append(f"{setpoint.name}={value!r}: {shown}")
    assert not disagree, "\n".join(disagree[:20])


def test_data_type_is_the_counter_depths_and_refuses_any_other(pv, tmp_path):
    assert text(pv, "cam1:DataType") == text(pv, "cam1:DataType_RBV") == "UInt16"
    pv("cam1:DataType").put("Int8", wait=True, timeout=10)
    assert text(pv, "cam1:DataType") == text(pv, "cam1:DataType_RBV") == "UInt16"
    assert "fixed by the counter depth" in text(pv, "cam1:StatusMessage_RBV")
    pv("cam1:ColorMode").put("RGB1", wait=True, timeout=10)
    assert text(pv, "cam1:ColorMode_RBV") == "Mono"
    pv("cam1:NDimensions").put(3, wait=True, timeout=10)
    assert pv("cam1:NDimensions").get() == pv("cam1:NDimensions_RBV").get() == 2
    assert "set by the arrays" in text(pv, "cam1:StatusMessage_RBV")
    filename = capture_and_acquire(pv, tmp_path, "dtype", "Single", 1)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    stop_capture(pv)
    with h5py.File(filename) as f:
        assert f["/entry/data/data"].dtype == np.uint16
    put(pv, "cam1:CounterDepth", "24 bits")
    assert text(pv, "cam1:DataType") == text(pv, "cam1:DataType_RBV") == "UInt32"


# --- 2. exposure timing -----------------------------------------------------------------


@pytest.mark.parametrize(("exposure", "n"), [(0.5, 1), (0.2, 5)])
def test_an_acquisition_lasts_its_frames_exposures(pv, exposure, n):
    put(pv, "cam1:AcquireTime", exposure)
    put(pv, "cam1:AcquirePeriod", 0.0)
    remaining: list[float] = []
    monitor = epics.PV(pv("cam1:TimeRemaining_RBV").pvname, auto_monitor=True,
                       callback=lambda value, **_: remaining.append(value))
    assert monitor.wait_for_connection(timeout=10)
    t0 = time.monotonic()
    acquire(pv, n)
    elapsed = time.monotonic() - t0
    monitor.disconnect()
    assert n * exposure * 0.95 <= elapsed < n * exposure + 1.5
    assert pv("cam1:NumImagesCounter_RBV").get() == n
    counting = [v for v in remaining if v > 0]
    assert len(counting) >= 2 and counting == sorted(counting, reverse=True), remaining
    assert max(counting) <= n * exposure


# --- 3. every compression choice --------------------------------------------------------

READER = """
import json, sys
import h5py, hdf5plugin
with h5py.File(sys.argv[1], "r") as f:
    data = f["/entry/data/data"]
    print(json.dumps({"filters": sorted(data._filters), "frames": data[()].tolist()}))
"""


@pytest.mark.parametrize(("compression", "options", "filter_id"), [
    ("None", {}, None), ("N-bit", {"NumDataBits": 12}, "5"), ("szip", {}, "szip"),
    ("zlib", {"ZLevel": 4}, "gzip"), ("Blosc", {"BloscCompressor": "ZSTD"}, "32001"),
    ("Blosc", {"BloscCompressor": "LZ4", "BloscShuffle": "Bit"}, "32001"),
    ("BSLZ4", {}, "32008"), ("LZ4", {}, "32004"),
])
def test_every_compression_is_written_and_read_back_by_h5py_and_hdf5plugin(
        pv, tmp_path, compression, options, filter_id):
    put(pv, "HDF1:Compression", compression)
    for suffix, value in options.items():
        put(pv, f"HDF1:{suffix}", value)
    assert text(pv, "HDF1:Compression_RBV") == compression
    filename = capture_and_acquire(pv, tmp_path, "packed", "Multiple", 2)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    stop_capture(pv)
    read = subprocess.run([sys.executable, "-c", READER, filename], capture_output=True,
                          text=True, check=True)
    result = json.loads(read.stdout)
    assert result["filters"] == ([filter_id] if filter_id else [])
    for k in range(2):
        np.testing.assert_array_equal(result["frames"][k], counter_array_image(LAYOUT, k, 12))


def test_jpeg_compression_is_refused_with_its_reason(pv):
    pv("HDF1:Compression").put("JPEG", wait=True, timeout=10)
    assert text(pv, "HDF1:Compression_RBV") == "None"
    assert "JPEG" in text(pv, "HDF1:WriteMessage")


@pytest.mark.parametrize(("mode", "frames"), [("Single", 1), ("Capture", 3), ("Stream", 3)])
def test_each_file_write_mode_writes_a_file(pv, tmp_path, mode, frames):
    put(pv, "HDF1:FilePath", f"{tmp_path}/")
    put(pv, "HDF1:FileName", mode)
    put(pv, "HDF1:FileWriteMode", mode)
    put(pv, "HDF1:NumCapture", 3)
    pv("HDF1:Capture").put(1, use_complete=True)
    wait_for(pv, "HDF1:Capture_RBV", lambda v: v == 1)
    acquire(pv, 3)
    wait_for(pv, "HDF1:Capture_RBV", lambda v: v == 0)
    with h5py.File(text(pv, "HDF1:FullFileName_RBV")) as f:
        assert f["/entry/data/data"].shape[0] == frames


def test_single_mode_with_auto_save_writes_each_frame_into_its_own_file(pv, tmp_path):
    put(pv, "HDF1:FilePath", f"{tmp_path}/")
    put(pv, "HDF1:FileName", "single")
    put(pv, "HDF1:FileWriteMode", "Single")
    put(pv, "HDF1:AutoSave", "Yes")
    acquire(pv, 3)
    wait_for(pv, "HDF1:FileNumber_RBV", lambda v: v == 4)
    put(pv, "HDF1:AutoSave", "No")
    assert text(pv, "HDF1:FullFileName_RBV") == f"{tmp_path}/single_000003.h5"
    for k in range(3):
        with h5py.File(tmp_path / f"single_{k + 1:06d}.h5") as f:
            np.testing.assert_array_equal(f["/entry/data/data"][()],
                                          [counter_array_image(LAYOUT, k, 12)])
    acquire(pv, 2)  # AutoSave off: no new file
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"single_{k:06d}.h5" for k in (1, 2, 3)]
    newest = pv("cam1:UniqueId_RBV").get()

    # WriteFile: the newest frame (the second of that acquisition) into the next file
    assert pv("HDF1:WriteFile").put("Write", wait=True, timeout=10) is not None
    assert text(pv, "HDF1:WriteFile_RBV") == "Done"
    for _ in range(2):  # and still after the status polls (they once put AutoSave's back)
        assert text(pv, "HDF1:FullFileName_RBV") == f"{tmp_path}/single_000004.h5"
        assert pv("HDF1:FileNumber_RBV").get() == 5
        time.sleep(0.3)
    with h5py.File(tmp_path / "single_000004.h5") as f:
        np.testing.assert_array_equal(f["/entry/data/data"][()],
                                      [counter_array_image(LAYOUT, 1, 12)])
        assert f["/entry/instrument/detector/unique_id"][()].tolist() == [newest]

    put(pv, "HDF1:FileWriteMode", "Stream")
    pv("HDF1:WriteFile").put("Write", wait=True, timeout=10)
    assert "in Single mode" in text(pv, "HDF1:WriteMessage")
    pv("HDF1:ReadFile").put("Read", wait=True, timeout=10)
    assert "ReadFile is not available" in text(pv, "HDF1:WriteMessage")
    assert len(list(tmp_path.iterdir())) == 4


# --- 4. plugin counters and time stamps -------------------------------------------------


def test_each_plugin_counts_the_arrays_it_processed_and_skipped(pv, tmp_path):
    plugins = ("Stats1:", "ROI1:", "HDF1:", "image1:", "Proc1:")
    for plugin in plugins:
        put(pv, f"{plugin}ArrayCounter", 0)
        put(pv, f"{plugin}DroppedArrays", 0)
    put(pv, "cam1:AcquirePeriod", 0.02)
    put(pv, "Stats1:TS:TSAcquire", 1)
    capture_and_acquire(pv, tmp_path, "counted", "Multiple", 6)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    stop_capture(pv)
    last = pv("cam1:UniqueId_RBV").get()
    assert pv("HDF1:ArrayCounter_RBV").get() == 6
    assert pv("Proc1:ArrayCounter_RBV").get() == 6
    assert pv("HDF1:UniqueId_RBV").get() == last
    for plugin in ("Stats1:", "ROI1:", "image1:"):
        wait_for(pv, f"{plugin}UniqueId_RBV", lambda v: v == last)
        counted = pv(f"{plugin}ArrayCounter_RBV").get() + pv(f"{plugin}DroppedArrays_RBV").get()
        assert counted == 6, plugin
        assert pv(f"{plugin}ArrayCounter_RBV").get() >= 1, plugin
    for plugin in (*plugins, "cam1:"):
        seconds = pv(f"{plugin}EpicsTSSec_RBV").get()
        assert abs(seconds + EPICS_EPOCH_S - time.time()) < 60, plugin
        assert pv(f"{plugin}TimeStamp_RBV").get() == pytest.approx(
            seconds + pv(f"{plugin}EpicsTSNsec_RBV").get() / 1e9)
    assert pv("Stats1:TS:TSCurrentPoint").get() >= 1
    assert len(pv("Stats1:TSTotal").get()) == pv("Stats1:TS:TSCurrentPoint").get()
    put(pv, "Stats1:TS:TSAcquire", 0)
    put(pv, "Stats1:Reset", 1)
    assert pv("Stats1:Total_RBV").get() == 0


# --- 6. NeXus that validates ------------------------------------------------------------


@pytest.mark.parametrize("definition", ["NXtomo", "NXmx"])
def test_the_file_validates_against_the_definition_it_names(pv, tmp_path, definition):
    nxvalidate = shutil.which("nxvalidate", path=str(sys.prefix) + "/bin")
    if nxvalidate is None:
        pytest.skip("nexusformat (nxvalidate) is not installed: pip install nexusformat")
    put(pv, "HDF1:NexusDefinition", definition)
    put(pv, "HDF1:DetDist", 250.0)
    put(pv, "HDF1:BeamX", 15.5)
    put(pv, "HDF1:SampleName", f"lysozyme_{definition}")
    filename = capture_and_acquire(pv, tmp_path, definition, "Single", 1)
    start = time.time()
    for _ in range(3):  # as an ophyd count of 3 single frames
        pv("cam1:Acquire").put(1, wait=True, timeout=30)
    stop_capture(pv)
    report = subprocess.run([nxvalidate, "-e", filename], capture_output=True, text=True,
                            check=False).stdout
    assert "Total number of errors: 0" in report, report
    with h5py.File(filename) as f:
        assert f.attrs["default"] == "entry"
        assert f["entry/definition"].asstr()[()] == definition
        detector = f["entry/instrument/detector"]
        np.testing.assert_array_equal(detector["frame_number"][()], [0, 1, 2])
        assert list(np.diff(detector["unique_id"][()])) == [1, 1]
        stamps = detector["timestamp"][()] / 1e9
        assert all(start - 1 < stamp < time.time() + 1 for stamp in stamps), stamps
        assert f["entry/end_time"].asstr()[()] >= f["entry/start_time"].asstr()[()]
        assert f["entry/sample/name"].asstr()[()] == f"lysozyme_{definition}"
        if definition == "NXmx":
            assert detector["distance"][()] == pytest.approx(0.25)
            assert detector["beam_center_x"][()] == pytest.approx(15.5 * 55e-6)


# --- 5. PV Access image time stamps -----------------------------------------------------


def test_the_pv_access_image_carries_the_frames_time_and_attributes(pv, ioc):
    p4p_client = pytest.importorskip("p4p.client.thread", reason="p4p is not installed")
    assert text(pv, "Pva1:PvName_RBV") == ioc.prefix + "Pva1:Image"
    updates = []
    context = p4p_client.Context("pva", unwrap=False)
    subscription = context.monitor(ioc.prefix + "Pva1:Image", updates.append)
    try:
        before = time.time()
        acquire(pv, 1)
        unique_id = pv("cam1:UniqueId_RBV").get()
        wait_for(pv, "Pva1:UniqueId_RBV", lambda v: v == unique_id)
        deadline = time.monotonic() + 10
        while not any(u["uniqueId"] == unique_id for u in updates):
            assert time.monotonic() < deadline, "no monitor update of the new frame"
            time.sleep(0.05)
    finally:
        subscription.close()
        context.close()
    value = next(u for u in updates if u["uniqueId"] == unique_id)
    stamp = value["timeStamp"]
    assert before - 1 < stamp["secondsPastEpoch"] + stamp["nanoseconds"] / 1e9 < time.time()
    assert (value["dataTimeStamp"]["secondsPastEpoch"], value["dataTimeStamp"]["nanoseconds"]) \
        == (stamp["secondsPastEpoch"], stamp["nanoseconds"])
    assert value["codec"]["name"] == ""
    attributes = {a["name"]: a["value"] for a in value["attribute"]}
    assert attributes["ColorMode"] == 0
    assert attributes["NDArrayUniqueId"] == unique_id
    assert pv("Pva1:ArrayCounter_RBV").get() >= 1


# --- 7. corrections through Proc1 -------------------------------------------------------


def test_a_dark_and_a_flat_saved_through_proc1_apply_to_the_next_frames(pv, tmp_path):
    put(pv, "Proc1:SaveBackground", "Yes")
    acquire(pv, 1)  # frame 0 of the counter pattern becomes the background
    wait_for(pv, "Proc1:ValidBackground_RBV", lambda v: v == 1)
    assert text(pv, "Proc1:SaveBackground_RBV") == "No"
    put(pv, "Proc1:SaveFlatField", "Yes")
    acquire(pv, 1)
    wait_for(pv, "Proc1:ValidFlatField_RBV", lambda v: v == 1)
    for suffix, value in (("EnableBackground", "Enable"), ("EnableFlatField", "Enable"),
                          ("ScaleFlatField", 100.0), ("DataTypeOut", "Float32")):
        put(pv, f"Proc1:{suffix}", value)
    assert text(pv, "HDF1:DataType_RBV") == "Float32"
    assert text(pv, "cam1:DataType_RBV") == "UInt16"  # the detector's, Proc1 converts
    filename = capture_and_acquire(pv, tmp_path, "corrected", "Multiple", 3)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    stop_capture(pv)
    reference = counter_array_image(LAYOUT, 0, 12).astype(np.float64)
    with h5py.File(filename) as f:
        data = f["/entry/data/data"][()]
        process = f["/entry/process"]
        assert process["background_applied"][()] and process["flatfield_applied"][()]
        np.testing.assert_array_equal(process["background"][()], reference)
    assert data.dtype == np.float32
    for k in range(3):
        raw = counter_array_image(LAYOUT, k, 12).astype(np.float64) - reference
        expected = np.where(reference != 0, raw * 100.0 / np.where(reference != 0, reference, 1),
                            raw)
        np.testing.assert_allclose(data[k], expected, rtol=1e-5)


def test_a_bad_pixel_mask_from_a_file_zeroes_its_pixels_and_is_recorded(pv, tmp_path):
    pv("Proc1:EnableBadPixels").put("Enable", wait=True, timeout=10)
    assert text(pv, "Proc1:EnableBadPixels_RBV") == "Disable"  # no mask loaded yet
    mask = np.zeros(LAYOUT.shape, bool)
    mask[3, 5] = mask[20, 1] = True
    np.save(tmp_path / "mask.npy", mask)
    put(pv, "Proc1:BadPixelFile", str(tmp_path / "mask.npy"))
    assert text(pv, "Proc1:ValidBadPixels_RBV") == "Valid"
    put(pv, "Proc1:EnableBadPixels", "Enable")
    filename = capture_and_acquire(pv, tmp_path, "masked", "Single", 1)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    stop_capture(pv)
    expected = counter_array_image(LAYOUT, 0, 12)
    expected[mask] = 0
    with h5py.File(filename) as f:
        np.testing.assert_array_equal(f["/entry/data/data"][0], expected)
        np.testing.assert_array_equal(f["/entry/process/pixel_mask"][()], mask)


def test_stock_ophyd_process_plugin_connects(ioc):
    from ophyd.areadetector.plugins import ProcessPlugin

    plugin = ProcessPlugin(ioc.prefix + "Proc1:", name="proc")
    plugin.wait_for_connection(all_signals=True, timeout=20)
    assert plugin.plugin_type.get().startswith("NDPluginProcess")
    assert plugin.data_type_out.get(as_string=True) == "Automatic"


# --- 8. start-up ------------------------------------------------------------------------


def test_a_second_ioc_with_a_served_prefix_refuses_to_start(ioc):
    second = subprocess.run(
        [sys.executable, "-m", "pimega.cli.ioc", "--prefix", ioc.prefix, "--sim", "--chips",
         "2x2", "--chip-size", "16", "--no-autosave"],
        capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 1
    assert "already serves" in second.stderr


@pytest.mark.parametrize("command", ["pimega-ioc", "pimega-sim"])
def test_commands_say_their_version(command):
    from pimega import __version__

    module = {"pimega-ioc": "pimega.cli.ioc", "pimega-sim": "pimega.cli.sim"}[command]
    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"{command} {__version__}"

