"""System tests: a real ``pimega-ioc --sim`` subprocess on loopback, driven by real CA clients."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import epics
import h5py
import numpy as np
import pytest
from caproto.threading.client import Context

from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.pipeline.stats import bin_for_preview
from pimega.sim.patterns import counter_array_image

from .conftest import start_ioc, stop_ioc

LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ioc(request, tmp_path_factory):
    """An IOC for the module using this fixture, on a prefix of its own (``PMIOC:`` here):
    CA clients in this process keep channels of earlier modules' IOCs, and a channel whose
    server went away finds a new one only slowly."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    prefix = "PM" + name.replace("_", "").upper() + ":"
    ioc = start_ioc(prefix, tmp_path_factory.mktemp("ioc") / "ioc.log", "--sim", "--chips",
                    "2x2", "--chip-size", "16")
    yield ioc
    stop_ioc(ioc)


#: The settings every test starts from, whatever the test before it left.
KNOWN_STATE = (
    ("cam1:Acquire", 0), ("HDF1:Capture", 0), ("cam1:ImageMode", "Single"),
    ("cam1:NumImages", 1), ("cam1:AcquireTime", 0.001), ("cam1:AcquirePeriod", 0.001),
    ("cam1:CounterDepth", "12 bits"), ("image1:MinCallbackTime", 0.0),
    ("image1:PreviewBinning", 0), ("HDF1:NumCapture", 0), ("HDF1:FileWriteMode", "Stream"),
    ("HDF1:SWMRMode", "Off"), ("HDF1:LazyOpen", "No"), ("HDF1:AutoIncrement", "Yes"),
    ("HDF1:CreateDirectory", 0), ("HDF1:FileNumber", 1),
)


@pytest.fixture
def pv(ioc):
    """``pv("cam1:Acquire")`` → a connected pyepics PV under the IOC's prefix; the IOC is put
    in :data:`KNOWN_STATE` first, so one failed test does not spill into the next."""
    cache: dict[str, epics.PV] = {}

    def get(suffix: str) -> epics.PV:
        if suffix not in cache:
            cache[suffix] = epics.PV(ioc.prefix + suffix, auto_monitor=False)
            assert cache[suffix].wait_for_connection(timeout=10), f"{suffix} did not connect"
        return cache[suffix]

    for suffix, value in KNOWN_STATE:
        put(get, suffix, value)
    wait_for(get, "cam1:Acquire_RBV", lambda v: v == 0)
    wait_for(get, "HDF1:Capture_RBV", lambda v: v == 0)
    return get


def put(pv, suffix: str, value) -> None:
    assert pv(suffix).put(value, wait=True, timeout=10) is not None, f"put {suffix} timed out"


def wait_for(pv, suffix: str, predicate, timeout: float = 10.0):
    """Wait on a monitor of ``suffix`` until its value satisfies ``predicate``; returns it."""
    seen = threading.Event()
    values: list = []

    def update(value, **_) -> None:
        values.append(value)
        if predicate(value):
            seen.set()

    monitor = epics.PV(pv(suffix).pvname, callback=update, auto_monitor=True)
    try:
        assert seen.wait(timeout), f"{suffix} never satisfied the condition: {values[-5:]}"
        return values[-1]
    finally:
        monitor.disconnect()


def text(pv, suffix: str) -> str:
    return pv(suffix).get(as_string=True)


def listed_pvs(prefix: str) -> list[tuple[str, str, tuple[str, ...]]]:
    out = subprocess.run(
        [sys.executable, "-m", "pimega.cli.ioc", "--list-pvs", "--prefix", prefix,
         "--chips", "2x2", "--chip-size", "16"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        name, record, strings = line.split("\t")
        rows.append((name, record, tuple(strings.split("|")) if strings else ()))
    return rows


def test_every_listed_pv_is_served_with_its_record_type_and_enum_strings(ioc):
    rows = listed_pvs(ioc.prefix)
    assert len(rows) > 800
    context = Context()
    try:
        names = [name for name, _, _ in rows]
        pvs = context.get_pvs(*names, *(f"{n}.RTYP" for n in names), timeout=10)
        by_name = {p.name: p for p in pvs}
        wrong = []
        for name, record, strings in rows:
            rtyp = by_name[f"{name}.RTYP"].read(timeout=10).data[0].decode()
            if rtyp != record:
                wrong.append(f"{name}: RTYP {rtyp} != {record}")
            if strings:
                served = tuple(by_name[name].read(data_type="control", timeout=10)
                               .metadata.enum_strings)
                served = tuple(s.decode() if isinstance(s, bytes) else s for s in served)
                if served != strings:
                    wrong.append(f"{name}: {served} != {strings}")
        assert not wrong, "\n".join(wrong[:20])
    finally:
        context.disconnect()


def capture_and_acquire(pv, tmp_path, name: str, mode: str, n: int) -> str:
    """Start a Stream capture (put-callback left open), run Acquire with put-callback."""
    put(pv, "HDF1:FilePath", str(tmp_path) + "/")
    put(pv, "HDF1:FileName", name)
    put(pv, "HDF1:FileWriteMode", "Stream")
    put(pv, "HDF1:NumCapture", 0)
    put(pv, "cam1:ImageMode", mode)
    put(pv, "cam1:NumImages", n)
    pv("HDF1:Capture").put(1, use_complete=True)
    wait_for(pv, "HDF1:Capture_RBV", lambda v: v == 1)
    return text(pv, "HDF1:FullFileName_RBV")


def stop_capture(pv) -> None:
    """Capture 0; Capture_RBV falls once the file is closed."""
    put(pv, "HDF1:Capture", 0)
    wait_for(pv, "HDF1:Capture_RBV", lambda v: v == 0)


def assert_file_frames(path: str, n: int) -> None:
    with h5py.File(path, "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (n, *LAYOUT.shape)
        for i in range(n):
            np.testing.assert_array_equal(data[i], counter_array_image(LAYOUT, i, 12))


def test_multiple_mode_acquire_returns_after_num_images_and_file_is_bit_exact(pv, tmp_path):
    put(pv, "cam1:CounterDepth", "12 bits")
    filename = capture_and_acquire(pv, tmp_path, "multi", "Multiple", 25)
    assert filename == f"{tmp_path}/multi_000001.h5"  # FileNumber 1, then bumped
    assert pv("HDF1:FileNumber_RBV").get() == 2
    assert pv("cam1:Acquire").put(1, wait=True, timeout=30) is not None
    assert pv("cam1:NumImagesCounter_RBV").get() == 25
    assert text(pv, "cam1:Acquire_RBV") == "Done"
    assert text(pv, "cam1:DetectorState_RBV") == "Idle"
    wait_for(pv, "HDF1:NumCaptured_RBV", lambda v: v == 25)  # the writer may trail Acquire
    stop_capture(pv)
    assert_file_frames(filename, 25)


def test_single_mode_takes_one_frame(pv, tmp_path):
    filename = capture_and_acquire(pv, tmp_path, "single", "Single", 99)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    assert pv("cam1:NumImagesCounter_RBV").get() == 1
    stop_capture(pv)
    assert_file_frames(filename, 1)


def test_acquire_rbv_goes_one_then_zero_for_a_single_frame(pv):
    """ophyd's SingleTrigger completes on a 1 → 0 transition of Acquire_RBV."""
    seen: list[int] = []
    connected = threading.Event()
    rbv = epics.PV(pv("cam1:Acquire_RBV").pvname, callback=lambda value, **_: seen.append(value),
                   connection_callback=lambda conn, **_: conn and connected.set())
    assert connected.wait(10)
    wait_for(pv, "cam1:Acquire_RBV", lambda v: v == 0)  # the first monitor update came
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    wait_for(pv, "cam1:Acquire_RBV", lambda v: v == 0)
    rbv.disconnect()
    assert seen[-2:] == [1, 0]


def test_continuous_mode_runs_until_acquire_zero_and_abort_leaves_a_readable_file(pv, tmp_path):
    put(pv, "cam1:AcquirePeriod", 0.01)
    filename = capture_and_acquire(pv, tmp_path, "cont", "Continuous", 1)
    acquire = pv("cam1:Acquire")
    done = threading.Event()
    acquire.put(1, use_complete=True, callback=lambda **_: done.set())
    wait_for(pv, "HDF1:NumCaptured_RBV", lambda v: v >= 5, timeout=20)
    assert not done.is_set()
    put(pv, "cam1:Acquire", 0)
    assert done.wait(10), "Acquire put-callback never completed"
    assert text(pv, "cam1:DetectorState_RBV") == "Aborted"
    stop_capture(pv)
    with h5py.File(filename, "r") as f:
        n = f["/entry/data/data"].shape[0]
    assert n >= 5
    assert_file_frames(filename, n)


def test_preview_updates_at_its_rate_with_matching_sizes(pv, ioc):
    put(pv, "image1:MinCallbackTime", 0.2)
    put(pv, "cam1:ImageMode", "Continuous")
    put(pv, "cam1:AcquirePeriod", 0.005)
    updates: list[float] = []
    running = threading.Event()
    data = epics.PV(ioc.prefix + "image1:ArrayData", auto_monitor=True,
                    callback=lambda **_: running.is_set() and updates.append(time.monotonic()))
    assert data.wait_for_connection(timeout=10)
    shown_before = pv("image1:ArrayCounter_RBV").get()
    running.set()
    pv("cam1:Acquire").put(1, use_complete=True)
    wait_for(pv, "image1:ArrayCounter_RBV", lambda v: v >= shown_before + 6, timeout=20)
    put(pv, "cam1:Acquire", 0)
    wait_for(pv, "cam1:Acquire_RBV", lambda v: v == 0)
    running.clear()
    image = data.get()
    data.disconnect()
    height, width = pv("image1:ArraySize1_RBV").get(), pv("image1:ArraySize0_RBV").get()
    assert (height, width) == LAYOUT.shape
    shown = image[: height * width].reshape(height, width)
    assert any(np.array_equal(shown, counter_array_image(LAYOUT, k, 12)) for k in range(16))
    intervals = np.diff(updates)
    assert len(updates) >= 4, updates
    assert intervals.min() >= 0.2 * 0.9, intervals  # never faster than MinCallbackTime


@pytest.mark.parametrize(
    ("suffix", "value"),
    [("cam1:AcquireTime", -1.0), ("cam1:AcquirePeriod", -0.5), ("cam1:NumImages", 0),
     ("cam1:CounterDepth", 7), ("cam1:ImageMode", 9), ("HDF1:FilePath", "/does/not/exist/")],
)
def test_invalid_puts_are_refused_and_change_nothing(pv, suffix, value):
    readback = suffix + "_RBV"
    before = pv(readback).get(as_string=True)
    pv(suffix).put(value, wait=True, timeout=10)
    assert pv(readback).get(as_string=True) == before
    assert pv(suffix).get(as_string=True) == before


def test_refusals_explain_themselves(pv, tmp_path):
    pv("cam1:NumImages").put(0, wait=True, timeout=10)
    assert "NumImages must be" in text(pv, "cam1:StatusMessage_RBV")
    put(pv, "HDF1:CreateDirectory", 0)
    pv("HDF1:FilePath").put(f"{tmp_path}/missing/", wait=True, timeout=10)
    assert "does not exist" in text(pv, "HDF1:WriteMessage")
    assert text(pv, "HDF1:WriteStatus") == "Write error"


@pytest.mark.parametrize(("suffix", "value", "reason"), [
    ("HDF1:FilePath", "/etc/", "outside the data directories"),
    ("HDF1:FileName", "../../victim/important", "must not contain"),
    ("HDF1:FileTemplate", "%s%s_%.1000000000d.h5", "wider than"),
    ("HDF1:FileTemplate", "%s%s/../../x%d", "outside FilePath"),
])
def test_files_stay_where_they_belong(pv, tmp_path, suffix, value, reason):
    put(pv, "HDF1:FilePath", f"{tmp_path}/")
    before = text(pv, suffix + "_RBV")
    pv(suffix).put(value, wait=True, timeout=10)
    assert reason in text(pv, "HDF1:WriteMessage")
    assert text(pv, suffix + "_RBV") == before


def test_an_existing_file_is_never_replaced(pv, tmp_path):
    (tmp_path / "keep_000001.h5").write_bytes(b"precious")
    put(pv, "HDF1:AutoIncrement", "No")
    put(pv, "HDF1:FilePath", f"{tmp_path}/")
    put(pv, "HDF1:FileName", "keep")
    pv("HDF1:Capture").put(1, wait=True, timeout=10)
    assert "exists" in text(pv, "HDF1:WriteMessage")
    assert text(pv, "HDF1:Capture_RBV") == "Done"
    put(pv, "HDF1:AutoIncrement", "Yes")  # moves on to the next free number instead
    filename = capture_and_acquire(pv, tmp_path, "keep", "Single", 1)
    assert filename == f"{tmp_path}/keep_000002.h5"
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    stop_capture(pv)
    assert (tmp_path / "keep_000001.h5").read_bytes() == b"precious"
    assert pv("HDF1:FileNumber_RBV").get() == 3


def test_counter_depth_sets_the_frame_rate_limit_and_data_type(pv):
    put(pv, "cam1:CounterDepth", "24 bits")
    assert pv("cam1:MaxFrameRate_RBV").get() == 1000
    assert text(pv, "cam1:DataType_RBV") == "UInt32"
    assert text(pv, "HDF1:DataType_RBV") == "UInt32"
    put(pv, "cam1:CounterDepth", "12 bits")
    assert pv("cam1:MaxFrameRate_RBV").get() == 2000
    assert text(pv, "cam1:DataType_RBV") == "UInt16"


def test_module_and_pipeline_status_pvs_follow_an_acquisition(pv):
    put(pv, "cam1:ImageMode", "Multiple")
    put(pv, "cam1:NumImages", 7)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    assert pv("cam1:M1:RxFrameCount_RBV").get() == 7
    assert pv("Pipe:FramesProcessed_RBV").get() == 7
    assert pv("Pipe:Decode:Frames_RBV").get() == 7
    assert pv("Pipe:Decode:TimePerFrame_RBV").get() > 0
    assert text(pv, "Pipe:Backend_RBV") == "CPU"
    assert text(pv, "cam1:M1:Connected_RBV") == "Yes"
    assert pv("Stats1:Total_RBV").get() > 0


def test_ophyd_async_connects_adcore_devices_without_mocks(ioc, RE, pv, tmp_path):
    from bluesky.run_engine import call_in_bluesky_event_loop
    from ophyd_async.core import init_devices
    from ophyd_async.epics import adcore

    async def connect() -> None:
        async with init_devices(connect=True, timeout=20):
            driver = adcore.ADBaseIO(ioc.prefix + "cam1:")
            hdf = adcore.NDFileHDF5IO(ioc.prefix + "HDF1:")
            stats = adcore.NDStatsIO(ioc.prefix + "Stats1:")
        assert await driver.array_size_x.get_value() == LAYOUT.shape[1]
        await hdf.file_path.set(str(tmp_path) + "/")
        assert await hdf.file_path_exists.get_value() is True
        assert await stats.total.get_value() == epics.caget(ioc.prefix + "Stats1:Total_RBV")

    call_in_bluesky_event_loop(connect(), timeout=60)


def test_capture_put_callback_waits_for_num_capture(pv, tmp_path):
    put(pv, "HDF1:FilePath", str(tmp_path) + "/")
    put(pv, "HDF1:FileName", "numcap")
    put(pv, "HDF1:NumCapture", 4)
    put(pv, "HDF1:FileWriteMode", "Capture")
    done = threading.Event()
    capture = pv("HDF1:Capture")
    capture.put(1, use_complete=True, callback=lambda **_: done.set())
    put(pv, "cam1:ImageMode", "Multiple")
    put(pv, "cam1:NumImages", 10)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    assert done.wait(10), "Capture did not complete after NumCapture frames"
    assert pv("HDF1:NumCaptured_RBV").get() == 4
    assert_file_frames(text(pv, "HDF1:FullFileName_RBV"), 4)


def test_preview_is_served_over_pv_access_as_ntndarray(pv, ioc):
    p4p_client = pytest.importorskip("p4p.client.thread", reason="p4p is not installed")
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    unique_id = pv("cam1:UniqueId_RBV").get()
    wait_for(pv, "image1:UniqueId_RBV", lambda v: v == unique_id)
    context = p4p_client.Context("pva")
    try:
        image = context.get(ioc.prefix + "Pva1:Image", timeout=10)
    finally:
        context.close()
    assert image.shape == LAYOUT.shape
    assert image.raw["uniqueId"] == pv("image1:UniqueId_RBV").get()


def test_an_empty_string_clears_a_long_string_pv(pv):
    """ophyd-async's prepare writes HDF1:XMLFileName = "" (a CHAR array of zeros)."""
    put(pv, "HDF1:XMLFileName", "layout.xml")
    assert text(pv, "HDF1:XMLFileName_RBV") == "layout.xml"
    put(pv, "HDF1:XMLFileName", "")
    assert text(pv, "HDF1:XMLFileName_RBV") == ""



def test_preview_binning_shrinks_the_preview_and_refuses_nonsense(pv):
    put(pv, "image1:PreviewBinning", 2)
    assert (pv("image1:ArraySize1_RBV").get(), pv("image1:ArraySize0_RBV").get()) == (16, 16)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    unique_id = pv("cam1:UniqueId_RBV").get()
    wait_for(pv, "image1:UniqueId_RBV", lambda v: v == unique_id)
    assert pv("image1:ArraySize0_RBV").get() == 16
    expected = bin_for_preview(counter_array_image(LAYOUT, 0, 12), 2)
    np.testing.assert_array_equal(pv("image1:ArrayData").get(count=16 * 16), expected.ravel())
    pv("image1:PreviewBinning").put(-1, wait=True, timeout=10)
    assert pv("image1:PreviewBinning_RBV").get() == 2
    put(pv, "image1:PreviewBinning", 0)
    assert pv("image1:ArraySize0_RBV").get() == LAYOUT.shape[1]


@pytest.mark.parametrize(("mode", "active"), [("On", "Active"), ("Off", "Off")])
def test_swmr_mode_decides_whether_readers_see_the_file_while_it_is_written(
    pv, tmp_path, mode, active
):
    put(pv, "HDF1:SWMRMode", mode)
    filename = capture_and_acquire(pv, tmp_path, f"swmr{mode}", "Multiple", 3)
    assert text(pv, "HDF1:SWMRActive_RBV") == active
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    if mode == "On":  # a live reader, as ophyd-async's collect is
        with h5py.File(filename, "r", swmr=True) as f:
            assert f["/entry/data/data"].shape[0] <= 3
    stop_capture(pv)
    assert text(pv, "HDF1:SWMRActive_RBV") == "Off"
    assert_file_frames(filename, 3)


def test_a_second_clients_acquire_joins_the_running_one_and_completes_with_it(pv, ioc):
    put(pv, "cam1:ImageMode", "Multiple")
    put(pv, "cam1:NumImages", 300)
    put(pv, "cam1:AcquirePeriod", 0.005)
    first, second = threading.Event(), threading.Event()
    pv("cam1:Acquire").put(1, use_complete=True, callback=lambda **_: first.set())
    wait_for(pv, "cam1:Acquire_RBV", lambda v: v == 1)
    other = epics.PV(ioc.prefix + "cam1:Acquire")  # another channel, as another client's
    assert other.wait_for_connection(timeout=10)
    other.put(1, use_complete=True, callback=lambda **_: second.set())
    assert not second.wait(0.5), "the joined put completed while the acquisition ran"
    assert first.wait(30) and second.wait(10)
    assert pv("cam1:NumImagesCounter_RBV").get() == 300  # one acquisition, not two
    other.disconnect()


def test_stop_then_start_at_once_starts_a_new_acquisition(pv):
    put(pv, "cam1:ImageMode", "Multiple")
    put(pv, "cam1:NumImages", 500)
    put(pv, "cam1:AcquirePeriod", 0.005)
    pv("cam1:Acquire").put(1, use_complete=True)
    wait_for(pv, "cam1:NumImagesCounter_RBV", lambda v: v >= 3)
    counter = pv("cam1:ProcessedAcquisitionCounter_RBV").get()
    put(pv, "cam1:NumImages", 5)
    pv("cam1:Acquire").put(0)
    assert pv("cam1:Acquire").put(1, wait=True, timeout=30) is not None
    assert pv("cam1:ProcessedAcquisitionCounter_RBV").get() == counter + 2
    assert pv("cam1:NumImagesCounter_RBV").get() == 5  # the new one ran to its end
    assert text(pv, "cam1:DetectorState_RBV") == "Idle"


def test_capture_stop_then_start_opens_a_second_file(pv, tmp_path):
    first = capture_and_acquire(pv, tmp_path, "again", "Single", 1)
    pv("HDF1:Capture").put(0)
    assert pv("HDF1:Capture").put(1, use_complete=True) is not None
    # Capture_RBV may still read the first capture's 1: the new file's name says it started
    deadline = time.monotonic() + 20
    while (second := text(pv, "HDF1:FullFileName_RBV")) == first:
        assert time.monotonic() < deadline, "no second file was opened"
        time.sleep(0.02)
    wait_for(pv, "HDF1:Capture_RBV", lambda v: v == 1)
    pv("cam1:Acquire").put(1, wait=True, timeout=30)
    stop_capture(pv)
    assert_file_frames(second, 1)


def test_a_flood_of_refused_puts_logs_a_line_a_second_not_tracebacks(pv, ioc):
    log_before = len(ioc.log())
    bad = pv("cam1:NumImages")
    t0 = time.monotonic()
    for _ in range(300):
        bad.put(0, wait=True, timeout=10)
    elapsed = time.monotonic() - t0
    assert pv("cam1:NumImages_RBV").get() == 1
    wait_for(pv, "Heartbeat_RBV", lambda v: True)
    logged = ioc.log()[log_before:]
    # caproto logs a chained traceback (2) for each beacon no repeater received: not a put's
    beacon_tracebacks = 2 * logged.count("Failed to send beacon")
    assert logged.count("Traceback") == beacon_tracebacks, logged
    refusals = [line for line in logged.splitlines() if "put refused" in line]
    assert 1 <= len(refusals) <= elapsed + 2, refusals
    assert "NumImages must be" in refusals[0]


@pytest.mark.parametrize(("suffix", "value"), [
    ("cam1:AcquireTime", float("nan")), ("cam1:AcquireTime", float("inf")),
    ("cam1:AcquireTime", 1e308), ("cam1:NumImages", float("nan")), ("HDF1:FileNumber", 1e20),
    ("HDF1:FileNumber", float("nan")), ("cam1:ArrayCounter", float("-inf")),
    ("HDF1:AutoIncrement", float("nan")),  # Yes (1) now: NaN must not select state 0
    ("image1:MinCallbackTime", float("inf")), ("HDF1:FileNumber", 2.5),
])
def test_numbers_a_pv_cannot_hold_are_refused_and_the_next_acquisition_runs(pv, suffix, value):
    readback = suffix + "_RBV"
    before = pv(readback).get()
    context = Context()  # the caproto client sends a DOUBLE as given, whatever the PV type
    try:
        channel, sync = context.get_pvs(pv(suffix).pvname, pv("cam1:ArrayCallbacks").pvname,
                                        timeout=10)
        channel.write([value], data_type=6, wait=False)  # 6: DBR_DOUBLE; refused: no answer
        sync.write([1], wait=True, timeout=10)  # the circuit handles writes in order
    finally:
        context.disconnect()
    assert pv(readback).get() == before
    assert pv("cam1:Acquire").put(1, wait=True, timeout=30) is not None
    assert text(pv, "cam1:DetectorState_RBV") == "Idle"


def test_min_callback_time_back_from_long_to_short_takes_effect_at_once(pv):
    put(pv, "image1:MinCallbackTime", 20.0)
    put(pv, "image1:MinCallbackTime", 0.0)
    shown_before = pv("image1:ArrayCounter_RBV").get()
    put(pv, "cam1:ImageMode", "Continuous")
    pv("cam1:Acquire").put(1)
    wait_for(pv, "image1:ArrayCounter_RBV", lambda v: v >= shown_before + 3, timeout=3)
    put(pv, "cam1:Acquire", 0)


def test_capture_stops_during_an_acquisition_drop_nothing(pv, tmp_path):
    """Each Capture 0 used to add ~3 to Pipe:Write:Dropped_RBV with no frame missing."""
    put(pv, "cam1:ImageMode", "Continuous")
    put(pv, "cam1:AcquirePeriod", 0.005)
    pv("cam1:Acquire").put(1)
    wait_for(pv, "cam1:Acquire_RBV", lambda v: v == 1)
    files = []
    for k in range(3):
        files.append(capture_and_acquire(pv, tmp_path, f"rot{k}", "Continuous", 1))
        wait_for(pv, "HDF1:NumCaptured_RBV", lambda v: v >= 5)
        stop_capture(pv)
    put(pv, "cam1:Acquire", 0)
    wait_for(pv, "cam1:Acquire_RBV", lambda v: v == 0)
    assert pv("Pipe:Write:Dropped_RBV").get() == 0
    assert pv("cam1:DroppedFrames_RBV").get() == 0
    for name in files:
        with h5py.File(name, "r") as f:
            numbers = f["/entry/instrument/detector/detector_frame_number"][()]
        assert len(numbers) >= 5 and (np.diff(numbers) == 1).all()  # the detector's: no gap
