"""``cam1:TriggerMode`` and ``cam1:TriggerSoftware`` against a real ``pimega-ioc --sim``:
External waits for triggers and exposes AcquireTime after each; what the node cannot do is
refused with its reason (``--listen``: see test_ioc_listen)."""

from __future__ import annotations

import threading
import time

import epics
import pytest

from .conftest import start_ioc, stop_ioc

pytestmark = pytest.mark.slow
SMALL = ("--chips", "2x2", "--chip-size", "16")


@pytest.fixture(scope="module")
def sim_ioc(tmp_path_factory):
    ioc = start_ioc("PMTRIGGER:", tmp_path_factory.mktemp("trigger") / "ioc.log", "--sim", *SMALL)
    yield ioc.prefix
    stop_ioc(ioc)


def get(prefix: str, suffix: str, **kw):
    return epics.caget(prefix + suffix, timeout=10, connection_timeout=15, **kw)


def put(prefix: str, suffix: str, value) -> None:
    assert epics.caput(prefix + suffix, value, wait=True, timeout=10, connection_timeout=15) == 1


def assert_message_says(prefix: str, text: str) -> None:
    """cam1:StatusMessage_RBV holds ``text`` as soon as the refused put returns: pyepics reads
    its monitor cache, and the IOC answers a put after the updates it caused (decision 15)."""
    message = get(prefix, "cam1:StatusMessage_RBV", as_string=True)
    assert text in message, f"StatusMessage_RBV is {message!r}, not {text!r}"


@pytest.fixture(autouse=True)
def internal_after(request):
    yield
    if "sim_ioc" in request.fixturenames:
        prefix = request.getfixturevalue("sim_ioc")
        put(prefix, "cam1:Acquire", 0)
        put(prefix, "cam1:TriggerMode", "Internal")


def test_external_mode_sends_one_frame_per_trigger_after_its_exposure(sim_ioc):
    p = sim_ioc
    put(p, "cam1:TriggerMode", "External")
    assert get(p, "cam1:TriggerMode_RBV", as_string=True) == "External"
    put(p, "cam1:AcquireTime", 0.2)
    put(p, "cam1:AcquirePeriod", 0.01)  # not used when triggered
    put(p, "cam1:ImageMode", "Multiple")
    put(p, "cam1:NumImages", 3)
    before = get(p, "cam1:ArrayCounter_RBV")
    done = threading.Event()
    epics.PV(p + "cam1:Acquire").put(1, use_complete=True, callback=lambda **_: done.set())
    time.sleep(1.0)  # five exposures' time: no trigger, no frame
    assert get(p, "cam1:ArrayCounter_RBV") == before
    assert get(p, "cam1:Acquire_RBV") == 1 and not done.is_set()
    assert get(p, "cam1:DetectorState_RBV", as_string=True) == "Waiting"
    assert get(p, "cam1:TimeRemaining_RBV") == 0  # triggers set the pace: unknown

    for n in range(1, 4):
        pulsed = time.monotonic()
        put(p, "cam1:TriggerSoftware", "Trigger")
        assert get(p, "cam1:TriggerSoftware", as_string=True) == "Done"
        deadline = pulsed + 10
        while get(p, "cam1:ArrayCounter_RBV") != before + n:
            assert time.monotonic() < deadline, f"frame {n} never came"
            time.sleep(0.02)
        assert time.monotonic() - pulsed >= 0.2  # the frame leaves when its exposure ends
    assert done.wait(10), "Acquire did not complete after NumImages triggers"
    assert get(p, "cam1:NumImagesCounter_RBV") == 3
    # pyepics reads from its monitor cache: the IOC answers the put after its updates
    assert get(p, "cam1:DetectorState_RBV", as_string=True) == "Idle"


def test_a_software_trigger_outside_external_mode_is_refused(sim_ioc):
    p = sim_ioc
    before = get(p, "cam1:ArrayCounter_RBV")
    put(p, "cam1:TriggerSoftware", "Trigger")
    assert_message_says(p, "External trigger mode")
    assert get(p, "cam1:TriggerSoftware", as_string=True) == "Done"
    assert get(p, "cam1:ArrayCounter_RBV") == before


def test_gated_needs_a_gate_input_the_simulator_has_not(sim_ioc):
    p = sim_ioc
    put(p, "cam1:TriggerMode", "Gated")
    assert get(p, "cam1:TriggerMode", as_string=True) == "Internal"
    assert get(p, "cam1:TriggerMode_RBV", as_string=True) == "Internal"
    assert_message_says(p, "Gated trigger needs a detector")


def test_the_trigger_mode_cannot_change_while_acquiring(sim_ioc):
    p = sim_ioc
    put(p, "cam1:ImageMode", "Continuous")
    put(p, "cam1:AcquirePeriod", 0.05)
    epics.caput(p + "cam1:Acquire", 1)
    deadline = time.monotonic() + 10
    while get(p, "cam1:StatusMessage_RBV", as_string=True) != "Acquiring":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    put(p, "cam1:TriggerMode", "External")
    assert get(p, "cam1:TriggerMode_RBV", as_string=True) == "Internal"
    assert_message_says(p, "cannot change while acquiring")

