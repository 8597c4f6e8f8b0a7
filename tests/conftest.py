"""Shared fixtures: loopback-only Channel Access, and a real IOC subprocess per test module.

The CA ports are chosen once per test run (free ports), and set in ``os.environ`` before
any CA client library is imported, so that the IOC subprocesses and every client in this
process (pyepics, the caproto client, ophyd, ophyd-async) meet on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from pimega.cli.loopback import loopback_environment

os.environ.update(loopback_environment())

# ophyd loads pyepics through epicscorelibs' libca; do it first, as ophyd would
import epicscorelibs.path.pyepics  # noqa: F401


@dataclass
class RunningIOC:
    prefix: str
    process: subprocess.Popen
    log_path: Path
    log_file: IO[str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_ioc(prefix: str, log_path: Path, *extra: str, timeout: float = 60.0,
              module: str = "pimega.cli.ioc", env: Mapping[str, str] | None = None
              ) -> RunningIOC:
    """Start ``pimega-ioc`` (or the IOC command of ``module``, e.g. ``pimega.cli.array``), its
    environment this process's updated with ``env``, and wait until its heartbeat PV answers
    (searched where this process's ``EPICS_CA_ADDR_LIST`` says). The search is sent again
    after each unanswered try: left to itself, caproto's client backs off and found the IOC
    ~10 s after it first answered. One client context, so one UDP socket: a new one a try
    could take the port a node of the array tests was told to bind."""
    from caproto.threading.client import Context

    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_ioc
    if "--no-autosave" not in extra and "--autosave-dir" not in extra:
        extra = (*extra, "--autosave-dir", str(log_path.parent / "autosave"))
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--prefix", prefix, *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    ioc = RunningIOC(prefix, process, log_path, log)
    context = Context()
    deadline = time.monotonic() + timeout
    try:
        (pv,) = context.get_pvs(f"{prefix}Heartbeat_RBV", timeout=0.5)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"IOC exited with {process.returncode}:\n{ioc.log()}")
            try:
                if pv.read(timeout=0.5).data[0] > 0:
                    return ioc
            except TimeoutError:
                context.broadcaster.search_now()
        raise RuntimeError(f"IOC did not answer within {timeout} s:\n{ioc.log()}")
    except BaseException:
        stop_ioc(ioc)
        raise
    finally:
        context.disconnect()


def stop_ioc(ioc: RunningIOC) -> None:
    ioc.process.terminate()
    try:
        ioc.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        ioc.process.kill()
        ioc.process.wait()
    ioc.log_file.close()


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """The numba kernels every IOC compiles or loads at start, compiled once here into their
    on-disk cache: on a fresh clone each takes ~15 s to compile, and five IOCs compiling at
    once on two cores outran their start-up timeout."""
    from pimega.pipeline.backend import CpuBackend
    from pimega.runtime.recon import LiveRecon

    CpuBackend().warm_up()
    LiveRecon.warm_up()


@pytest.fixture(scope="module")
def small_ioc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIOC]:
    """An IOC with the simulator, one module of 2x2 chips of 16 pixels (32x32 images)."""
    directory = tmp_path_factory.mktemp("ioc")
    ioc = start_ioc("PMTEST:", directory / "ioc.log", "--sim", "--chips", "2x2",
                    "--chip-size", "16")
    yield ioc
    stop_ioc(ioc)


@pytest.fixture(scope="session")
def RE():
    """One RunEngine for the session: its event loop outlives every CA channel."""
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 4 MiB tmpfs mounted for the test (needs root or CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 4 MiB tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def interrupt_after_frames(interrupt, prefix: str, n_frames: int) -> threading.Thread:
    """A thread that calls ``interrupt()`` (``RE.abort``, ``RE.stop``) once the IOC's file
    holds ``n_frames`` frames."""
    import epics

    def watch() -> None:
        while (epics.caget(prefix + "HDF1:NumCaptured_RBV", timeout=10) or 0) < n_frames:
            time.sleep(0.02)
        interrupt()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def assert_ioc_idle(prefix: str) -> None:
    """After a scan, stopped or not: nothing acquiring, no file open."""
    import epics

    def text(suffix: str) -> str:
        value = epics.caget(prefix + suffix, as_string=True, timeout=10)
        assert value is not None, f"{suffix} did not answer"
        return value

    assert text("cam1:DetectorState_RBV") in ("Idle", "Aborted")
    assert text("cam1:Acquire_RBV") == "Done"
    assert text("HDF1:Capture_RBV") == "Done"
