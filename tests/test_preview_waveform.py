"""image1:ArrayData for many viewers (decision 12): the frame's own width (SHORT, LONG when
the IOC starts at 24 bit), one conversion per update shared by every subscriber, the newest
image only for a slow one. Unit checks of the waveform, then real IOCs read by pyepics,
caproto's client and ophyd-async.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import caproto as ca
import epics
import numpy as np
import pytest
from caproto import AlarmSeverity, ChannelType
from caproto._utils import ChannelFilter
from caproto.server import PVGroup, pvproperty
from caproto.server.common import SubscriptionSpec
from caproto.threading.client import Context

from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.iocs.image_group import (
    PreviewWaveform,
    WireArray,
    _as_waveform,
    carries,
    waveform_type,
)
from pimega.sim.patterns import counter_array_image

from .conftest import RunningIOC, start_ioc, stop_ioc

LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16))
#: A UInt16 image whose values cross 32767 (SHORT's signed range) and reach 65535.
UINT16_IMAGE = np.arange(40000, 40000 + 32 * 32 * 25, 25, dtype=np.uint32).clip(
    0, 65535).astype(np.uint16).reshape(32, 32)


# --- the waveform, without a server -------------------------------------------------------


def test_the_waveform_type_follows_the_frame_width():
    assert [waveform_type(np.dtype(t)) for t in ("u1", "u2", "i2", "u4", "f4")] == [
        "SHORT", "SHORT", "SHORT", "LONG", "LONG"]
    assert carries("SHORT", np.dtype(np.uint16)) and carries("SHORT", np.dtype(np.uint8))
    assert not carries("SHORT", np.dtype(np.uint32))
    assert carries("LONG", np.dtype(np.uint32)) and carries("LONG", np.dtype(np.uint16))
    for ftvl in ("SHORT", "LONG"):  # never truncated: not shown instead
        assert not carries(ftvl, np.dtype(np.float32))
        assert not carries(ftvl, np.dtype(np.uint64))


def test_uint16_above_32767_goes_out_bit_for_bit_and_casts_back():
    wire = _as_waveform(UINT16_IMAGE, "SHORT")
    assert isinstance(wire, WireArray) and isinstance(wire, bytes) and wire.dtype == np.dtype(">i2")
    assert len(wire) == UINT16_IMAGE.size and wire.nbytes == 2 * UINT16_IMAGE.size
    assert wire == UINT16_IMAGE.astype(">u2").tobytes()  # the bits, big-endian
    assert (wire.array() < 0).any()  # read as SHORT, as ADCore's NDStdArrays sends it
    np.testing.assert_array_equal(wire.array().astype(np.uint16), UINT16_IMAGE.ravel())
    np.testing.assert_array_equal(wire[:7].array(), wire.array()[:7])  # elements, not bytes
    assert len(wire[:7]) == 7 and wire[3] == wire.array()[3]
    assert pickle.loads(pickle.dumps(wire)) == wire
    image24 = counter_array_image(LAYOUT, 0, 24)
    np.testing.assert_array_equal(_as_waveform(image24, "LONG").array().astype(np.uint32),
                                  image24.ravel())


async def _read(waveform: PreviewWaveform) -> Any:
    """(metadata, values) of a DBR_TIME read of the native type, as caproto's server reads."""
    return await waveform.read(ChannelType.TIME_INT)


class _Preview(PVGroup):
    data = pvproperty(value=[], name="ArrayData", dtype=PreviewWaveform, max_length=32 * 32,
                      record="waveform")


def test_one_update_is_converted_once_whatever_the_subscribers():
    """Every subscription's EventAddResponse carries the very bytes posted: caproto converts
    nothing per subscriber (TIME, CTRL and plain reads of the native type alike); another
    element type asked for is converted, correctly."""

    async def run() -> None:
        waveform = _Preview(prefix="T:").data
        waveform.set_type("SHORT")
        assert waveform.data_type == ChannelType.INT and waveform.max_subscription_backlog == 1
        no_filter = ChannelFilter(None, None, None, None)
        queues = [asyncio.Queue() for _ in range(3)]
        kinds = ("TIME_INT", "CTRL_INT", "INT", "TIME_DOUBLE")
        for queue, kind in zip(queues * 2, kinds, strict=False):
            spec = SubscriptionSpec(db_entry=waveform, data_type_name=kind, mask=1,
                                    channel_filter=no_filter)
            waveform._queues[queue][None][kind].add(spec)
        wire = _as_waveform(UINT16_IMAGE, "SHORT")
        await waveform.post_image(wire)
        updates = [queue.get_nowait() for queue in queues for _ in range(queue.qsize())]
        assert len(updates) == len(kinds)
        for specs, metadata, values, _, _ in updates:
            (kind,) = {spec.data_type_name for spec in specs}
            data_type = ChannelType[kind]
            response = ca.EventAddResponse(values, data_type, len(values), 1, 1,
                                           metadata=metadata)
            if kind == "TIME_DOUBLE":
                assert values is not wire
                np.testing.assert_array_equal(response.data, wire.array())
                continue
            assert values is wire and response.buffers[1] is wire
            assert response.data_count == UINT16_IMAGE.size
            np.testing.assert_array_equal(response.data.astype(np.uint16),
                                          UINT16_IMAGE.ravel())
        read_metadata, read_values = await _read(waveform)
        assert read_values is wire and read_metadata.severity == AlarmSeverity.NO_ALARM

    asyncio.run(run())


def test_an_image_the_waveform_cannot_hold_leaves_it_invalid_until_the_next():
    async def run() -> None:
        waveform = _Preview(prefix="T:").data
        waveform.set_type("SHORT")
        await waveform.post_image(_as_waveform(UINT16_IMAGE, "SHORT"))
        await waveform.mark_stale()
        metadata, values = await _read(waveform)
        assert metadata.severity == AlarmSeverity.INVALID_ALARM
        np.testing.assert_array_equal(values.array().astype(np.uint16), UINT16_IMAGE.ravel())
        await waveform.post_image(_as_waveform(UINT16_IMAGE[:2], "SHORT"))
        metadata, values = await _read(waveform)
        assert metadata.severity == AlarmSeverity.NO_ALARM and len(values) == 64
        with pytest.raises(ValueError, match="SHORT"):
            await waveform.post_image(_as_waveform(UINT16_IMAGE, "LONG"))

    asyncio.run(run())


def test_the_bench_times_the_per_subscriber_path_now_and_before():
    from pimega.cli.bench_preview import bench_serialisation

    figures = {f.figure: f for f in bench_serialisation(repeats=2)}
    assert set(figures) == {"preview_update_ms_1subscriber", "preview_update_ms_3subscribers",
                            "preview_ms_per_further_subscriber"}
    for figure in figures.values():  # (the per-subscriber figure is a difference: any sign)
        assert figure.unit == "ms"
        assert figure.ratio == pytest.approx(figure.value / figure.baseline)
    assert figures["preview_update_ms_1subscriber"].value > 0


# --- real IOCs ------------------------------------------------------------------------------


class _OneIOCAtATime:
    """The IOCs of these tests, one running at a time: the IOCs of a test session share one
    CA port, and a second one would answer the searches meant for the first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: tuple[str, RunningIOC] | None = None

    def get(self, kind: str) -> RunningIOC:
        if self.running is not None and self.running[0] == kind:
            return self.running[1]
        self.close()
        directory = self.directory / kind
        directory.mkdir()
        if kind == "short":  # the default 12 bit: ArrayData SHORT
            ioc = start_ioc("PMPREVIEW:", directory / "ioc.log", "--sim", "--chips", "2x2",
                            "--chip-size", "16", "--no-autosave")
        elif kind == "long":  # restarted with 24 bit saved: ArrayData LONG
            prefix = "PMPREVIEW24:"
            (directory / "settings.json").write_text(json.dumps({
                "format": "pimega-autosave", "version": 1, "prefix": prefix,
                "values": {prefix + "cam1:CounterDepth": "24 bits"}}))
            ioc = start_ioc(prefix, directory / "ioc.log", "--sim", "--chips", "2x2",
                            "--chip-size", "16", "--autosave-dir", str(directory))
        else:  # one module of 384² for the stalled client, whose circuit's backlog of
            # updates (caproto's default 10000) fills within the test
            ioc = start_ioc("PMSTALL:", directory / "ioc.log", "--sim", "--chips", "6x6",
                            "--chip-size", "64", "--no-autosave",
                            env={"CAPROTO_MAX_TOTAL_SUBSCRIPTION_BACKLOG": str(STALL_BACKLOG)})
        self.running = kind, ioc
        return ioc

    def close(self) -> None:
        if self.running is not None:
            stop_ioc(self.running[1])
            self.running = None


#: Updates a circuit may have queued in the stalled-client test's IOC.
STALL_BACKLOG = 100


@pytest.fixture(scope="module")
def iocs(tmp_path_factory) -> Iterator[_OneIOCAtATime]:
    iocs = _OneIOCAtATime(tmp_path_factory.mktemp("iocs"))
    yield iocs
    iocs.close()


@pytest.fixture
def short_ioc(iocs) -> RunningIOC:
    return iocs.get("short")


@pytest.fixture
def long_ioc(iocs) -> RunningIOC:
    return iocs.get("long")


def _put(prefix: str, suffix: str, value) -> None:
    assert epics.caput(prefix + suffix, value, wait=True, timeout=10) == 1, suffix


def _acquire_one(prefix: str, monitor: epics.PV) -> np.ndarray:
    """Acquire one frame; ArrayData once the preview shows it and ``monitor`` has it too."""
    _put(prefix, "cam1:ImageMode", "Single")
    _put(prefix, "image1:MinCallbackTime", 0.0)
    shown = epics.caget(prefix + "image1:ArrayCounter_RBV")
    assert epics.caput(prefix + "cam1:Acquire", 1, wait=True, timeout=30) == 1
    deadline = time.monotonic() + 20
    while epics.caget(prefix + "image1:ArrayCounter_RBV") == shown:
        assert time.monotonic() < deadline, "the preview never showed the frame"
        time.sleep(0.05)
    data = np.asarray(epics.caget(prefix + "image1:ArrayData"))
    while not np.array_equal(np.asarray(monitor.get(use_monitor=True)), data):
        assert time.monotonic() < deadline, "the monitor never brought the frame"
        time.sleep(0.05)
    return data


def _as_data_type(prefix: str, data: Any) -> np.ndarray:
    """What an areaDetector client does: cast ArrayData to image1:DataType_RBV."""
    data_type = str(epics.caget(prefix + "image1:DataType_RBV", as_string=True))
    return np.asarray(data).astype(np.dtype(data_type.lower()))


def _ophyd_async_read(RE, prefix: str, element: type) -> np.ndarray:
    """ArrayData through ophyd-async: the waveform's element type, cast to the plugin's
    data_type (DataType_RBV)."""
    from bluesky.run_engine import call_in_bluesky_event_loop
    from ophyd_async.core import Array1D, init_devices
    from ophyd_async.epics import adcore
    from ophyd_async.epics.core import epics_signal_r

    async def read() -> np.ndarray:
        async with init_devices(timeout=20):
            image = adcore.NDPluginBaseIO(prefix + "image1:")
            data = epics_signal_r(Array1D[element], prefix + "image1:ArrayData")
        dtype = np.dtype((await image.data_type.get_value()).value.lower())
        return (await data.get_value()).astype(dtype)

    return call_in_bluesky_event_loop(read(), timeout=60)


@pytest.mark.slow
def test_a_uint16_frame_above_32767_reads_back_through_every_client(short_ioc, RE):
    prefix = short_ioc.prefix
    monitor = epics.PV(prefix + "image1:ArrayData", auto_monitor=True)
    assert monitor.wait_for_connection(timeout=10)
    assert monitor.type == "time_short"  # DBR_SHORT, as NDStdArrays with FTVL=SHORT
    assert epics.caget(prefix + "image1:ArrayData.FTVL", as_string=True) == "SHORT"
    settings = (("Proc1:EnableOffsetScale", "Enable"), ("Proc1:Offset", 40000.0),
                ("Proc1:DataTypeOut", "UInt16"))
    try:
        for suffix, value in settings:
            _put(prefix, suffix, value)
        expected = (counter_array_image(LAYOUT, 0, 12).astype(np.uint32) + 40000).clip(
            0, 65535).astype(np.uint16).ravel()
        assert expected.max() > 32767
        data = _acquire_one(prefix, monitor)
        assert data.dtype == np.int16 and (data < 0).any()
        assert epics.caget(prefix + "image1:DataType_RBV", as_string=True) == "UInt16"
        np.testing.assert_array_equal(_as_data_type(prefix, data), expected)  # pyepics
        np.testing.assert_array_equal(
            _as_data_type(prefix, epics.caget(prefix + "image1:ArrayData")), expected)
        context = Context()
        try:
            (pv,) = context.get_pvs(prefix + "image1:ArrayData")
            pv.wait_for_connection(timeout=10)
            for data_type in ("native", "time", "control"):
                read = pv.read(data_type=data_type, timeout=10)
                np.testing.assert_array_equal(_as_data_type(prefix, read.data), expected)
        finally:
            context.disconnect()
        np.testing.assert_array_equal(_ophyd_async_read(RE, prefix, np.int16), expected)
    finally:
        monitor.disconnect()
        for suffix, value in (("Proc1:EnableOffsetScale", "Disable"), ("Proc1:Offset", 0.0),
                              ("Proc1:DataTypeOut", "Automatic")):
            _put(prefix, suffix, value)


@pytest.mark.slow
def test_24_bit_frames_on_a_short_waveform_are_counted_not_truncated(short_ioc):
    prefix = short_ioc.prefix
    monitor = epics.PV(prefix + "image1:ArrayData", auto_monitor=True, form="time")
    assert monitor.wait_for_connection(timeout=10)
    try:
        shown = _acquire_one(prefix, monitor)
        dropped = epics.caget(prefix + "image1:DroppedArrays_RBV")
        counter = int(epics.caget(prefix + "image1:ArrayCounter_RBV") or 0)
        _put(prefix, "cam1:CounterDepth", "24 bits")  # accepted: files and Pva1 carry it
        assert epics.caput(prefix + "cam1:Acquire", 1, wait=True, timeout=30) == 1
        deadline = time.monotonic() + 20
        while epics.caget(prefix + "image1:DroppedArrays_RBV") == dropped:
            assert time.monotonic() < deadline, "the 24-bit frame was neither shown nor counted"
            time.sleep(0.05)
        assert epics.caget(prefix + "image1:ArrayCounter_RBV") == counter
        deadline = time.monotonic() + 10
        while monitor.severity != AlarmSeverity.INVALID_ALARM:
            assert time.monotonic() < deadline, "ArrayData never went INVALID"
            time.sleep(0.05)
        np.testing.assert_array_equal(monitor.get(use_monitor=True), shown)  # not truncated
        assert epics.caget(prefix + "image1:DataType_RBV", as_string=True) == "UInt16"
        _put(prefix, "cam1:CounterDepth", "12 bits")
        _acquire_one(prefix, monitor)
        assert monitor.severity == AlarmSeverity.NO_ALARM
        assert epics.caget(prefix + "image1:ArrayCounter_RBV") == counter + 1
    finally:
        monitor.disconnect()
        _put(prefix, "cam1:CounterDepth", "12 bits")


@pytest.mark.slow
def test_an_ioc_started_at_24_bit_serves_long_and_every_depth_reads_back(long_ioc, RE):
    prefix = long_ioc.prefix
    monitor = epics.PV(prefix + "image1:ArrayData", auto_monitor=True)
    assert monitor.wait_for_connection(timeout=10)
    try:
        assert monitor.type == "time_long"
        assert epics.caget(prefix + "image1:ArrayData.FTVL", as_string=True) == "LONG"
        assert epics.caget(prefix + "cam1:CounterDepth", as_string=True) == "24 bits"
        expected = counter_array_image(LAYOUT, 0, 24).ravel()
        assert expected.max() > 65535
        data = _acquire_one(prefix, monitor)
        assert epics.caget(prefix + "image1:DataType_RBV", as_string=True) == "UInt32"
        np.testing.assert_array_equal(_as_data_type(prefix, data), expected)
        np.testing.assert_array_equal(_ophyd_async_read(RE, prefix, np.int32), expected)
        _put(prefix, "cam1:CounterDepth", "12 bits")  # UInt16 in LONG: widened, exact
        data = _acquire_one(prefix, monitor)
        assert epics.caget(prefix + "image1:DataType_RBV", as_string=True) == "UInt16"
        np.testing.assert_array_equal(_as_data_type(prefix, data),
                                      counter_array_image(LAYOUT, 0, 12).ravel())
    finally:
        monitor.disconnect()


def _stalled_subscriber(pv_name: str) -> socket.socket:
    """A client that subscribes to ``pv_name`` and then never reads: its TCP window fills
    and the server's sends to it block."""
    address = ("127.0.0.1", int(os.environ["EPICS_CA_SERVER_PORT"]))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address)
    circuit = ca.VirtualCircuit(our_role=ca.CLIENT, address=address, priority=0)
    channel = ca.ClientChannel(pv_name, circuit)

    def send(*commands) -> None:
        sock.sendall(b"".join(circuit.send(*commands)))

    send(ca.VersionRequest(priority=0, version=13), ca.HostNameRequest("stalled"),
         ca.ClientNameRequest("stalled"))
    send(channel.create())
    deadline = time.monotonic() + 10
    while channel.states[ca.CLIENT] is not ca.CONNECTED:
        assert time.monotonic() < deadline, "the stalled client did not connect"
        commands, _ = circuit.recv(sock.recv(65536))
        for command in commands:
            circuit.process_command(command)
    send(channel.subscribe(data_count=0))
    return sock


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.slow
def test_a_client_that_stops_reading_costs_no_memory_and_slows_no_one(iocs):
    """384² previews at the 50 Hz floor to a client that never reads: the IOC's memory stays
    where it was and another viewer keeps getting new images."""
    ioc = iocs.get("stall")
    seen: list[int] = []
    viewer = epics.PV(ioc.prefix + "image1:UniqueId_RBV", auto_monitor=True,
                      callback=lambda value, **_: seen.append(value))
    stalled = None
    try:
        for suffix, value in (("image1:MinCallbackTime", 0.0), ("cam1:AcquirePeriod", 0.01),
                              ("cam1:ImageMode", "Continuous")):
            _put(ioc.prefix, suffix, value)
        epics.caput(ioc.prefix + "cam1:Acquire", 1)
        deadline = time.monotonic() + 30
        while len(seen) < 20:
            assert time.monotonic() < deadline, "the preview did not run"
            time.sleep(0.1)
        stalled = _stalled_subscriber(ioc.prefix + "image1:ArrayData")
        time.sleep(2)  # its socket buffers fill; from here on it holds the server's sends
        before, shown = _rss_mb(ioc.process.pid), len(seen)
        time.sleep(6)  # ~300 previews of 290 KB: 88 MB if they queued for it
        growth = _rss_mb(ioc.process.pid) - before
        assert ioc.process.poll() is None
        assert growth < 40, f"the IOC grew {growth:.0f} MB with a stalled client"
        assert len(seen) > shown + 10, "the other viewer stopped getting new images"
    finally:
        viewer.disconnect()
        epics.caput(ioc.prefix + "cam1:Acquire", 0, wait=True, timeout=10)
        if stalled is not None:
            stalled.close()
