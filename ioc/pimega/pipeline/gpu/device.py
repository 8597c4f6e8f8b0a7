"""Device memory, pinned host memory, streams, events and copies behind one interface.

The conveyor (:mod:`.backend`) talks to a :class:`Device`, never to CuPy or numba-cuda:

- :class:`CupyDevice`: CuPy's memory pools (device and pinned), streams and events, copies by
  ``cudaMemcpyAsync``; kernels see its arrays as numba views (``__cuda_array_interface__``)
  and launch on its streams through ``numba.cuda.external_stream``. The choice on a device.
- :class:`NumbaDevice`: numba-cuda's own API (``cuda.device_array``, ``cuda.pinned_array``,
  ``cuda.stream``, ``cuda.event``, ``copy_to_device`` / ``copy_to_host`` on a stream). On a
  device where CuPy is missing; and under numba-cuda's simulator (``NUMBA_ENABLE_CUDASIM=1``),
  where every call runs at once on the host, so that the whole conveyor runs in CI. The
  simulator's events record the host clock (work is done when it is queued, so the time
  between two events is the time the work took) and its memory is counted by this class.
- :class:`FaultyDevice`: a device that fails on purpose (lost, out of memory, hung), for
  tests; ``PIMEGA_GPUSIM_FAULT`` wraps the simulated device in one (see :func:`open_device`).

:func:`open_device` picks one: the simulator where numba runs it, else CuPy, else numba-cuda;
without any it raises :class:`~pimega.core.errors.ConfigError` saying why.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from pimega.core.errors import ConfigError

log = logging.getLogger(__name__)

_H2D, _D2H = 1, 2  # cudaMemcpyKind
_CUDA_ERROR_OUT_OF_MEMORY = 2
_HOST_MEMORY_ALREADY_REGISTERED = 712  # cudaErrorHostMemoryAlreadyRegistered
#: ``kind@batch`` (``lost@3``: the third batch waited on finds the device lost; ``oom``: every
#: device allocation fails; ``hang@2``: the second batch never completes; ``absent``: there
#: is no device). Read by :func:`open_device` under the simulator only.
FAULT_VARIABLE = "PIMEGA_GPUSIM_FAULT"


def simulated() -> bool:
    """Whether numba runs its CUDA simulator in this process (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba.core import config

    return bool(getattr(config, "ENABLE_CUDASIM", 0))


class Device:
    """What the conveyor needs of a GPU (see the module docstring). Device arrays are what
    the kernels take; host arrays are NumPy arrays."""

    name = ""
    library = ""
    simulated = False

    def pinned(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """An uninitialised NumPy array in pinned (page-locked) host memory."""
        raise NotImplementedError

    def pin(self, array: np.ndarray) -> None:
        """Page-lock host memory made elsewhere (until :meth:`release`), for fast copies."""

    def empty(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike, stream: Any) -> Any:
        """An uninitialised device array, its memory ordered on ``stream``."""
        raise NotImplementedError

    def upload(self, array: np.ndarray, stream: Any) -> Any:
        """A device copy of host ``array``, made on ``stream``."""
        raise NotImplementedError

    def stream(self) -> Any:
        raise NotImplementedError

    def kernel_stream(self, stream: Any) -> Any:
        """``stream`` as numba kernels take it."""
        return stream

    def event(self) -> Any:
        raise NotImplementedError

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def wait_event(self, stream: Any, event: Any) -> None:
        """Work queued on ``stream`` from now on waits for ``event``."""
        raise NotImplementedError

    def done(self, event: Any) -> bool:
        """Whether the work before ``event`` has finished (never blocks)."""
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def copy_h2d(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        """Queue a copy of host ``src`` into device ``dst`` (contiguous, the same bytes)."""
        raise NotImplementedError

    def copy_d2h(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        """Queue a copy of device ``src`` into host ``dst`` (contiguous, the same bytes)."""
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def memory(self) -> tuple[int, int]:
        """(used, total) bytes of device memory; total 0 where unknown."""
        raise NotImplementedError

    def release(self) -> None:
        """Hand cached memory back and unpin what :meth:`pin` pinned."""

    def classify(self, exc: BaseException) -> str | None:
        """``"oom"`` for out of memory, ``"failed"`` for another CUDA error, None for an
        exception that is not the device's."""
        return None


# --- CuPy ------------------------------------------------------------------------------------

def cupy_on_a_device() -> Any:
    """CuPy, with a CUDA device to run on; else :class:`ConfigError` saying which is missing."""
    try:
        import cupy  # pyright: ignore[reportMissingImports]
    except ImportError as exc:
        raise ConfigError(f"CuPy not installed ({exc})") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise ConfigError(f"no CUDA device ({exc})") from exc
    if count < 1:
        raise ConfigError("no CUDA device")
    return cupy


class CupyDevice(Device):
    """CuPy memory, streams and events on the current CUDA device."""

    library = "CuPy"

    def __init__(self) -> None:
        cupy = cupy_on_a_device()
        import cupyx  # pyright: ignore[reportMissingImports]
        from numba import cuda
        from numba.cuda.cudadrv import driver, error

        self.cp, self.cupyx, self.cuda = cupy, cupyx, cuda
        self._oom = (cupy.cuda.memory.OutOfMemoryError,)
        self._errors = (cupy.cuda.runtime.CUDARuntimeError, cupy.cuda.driver.CUDADriverError,
                        driver.CudaAPIError, error.CudaSupportError)
        self._registered: list[int] = []
        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self.name = properties["name"].decode()

    def pinned(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        return self.cupyx.empty_pinned(shape, dtype=dtype)

    def pin(self, array: np.ndarray) -> None:
        runtime = self.cp.cuda.runtime
        try:
            runtime.hostRegister(array.ctypes.data, array.nbytes, 0)
        except runtime.CUDARuntimeError as exc:
            if getattr(exc, "status", None) != _HOST_MEMORY_ALREADY_REGISTERED:
                log.warning("could not pin %d bytes of host memory: %s", array.nbytes, exc)
            return
        self._registered.append(array.ctypes.data)

    def empty(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike, stream: Any) -> Any:
        with stream:  # the pool hands this memory, once freed, only to later work on stream
            array = self.cp.empty(shape, dtype)
        return self.cuda.as_cuda_array(array, sync=False)  # ordered by the conveyor's events

    def upload(self, array: np.ndarray, stream: Any) -> Any:
        with stream:
            device = self.cp.ascontiguousarray(self.cp.asarray(array))
        return self.cuda.as_cuda_array(device, sync=False)

    def stream(self) -> Any:
        return self.cp.cuda.Stream(non_blocking=True)

    def kernel_stream(self, stream: Any) -> Any:
        return self.cuda.external_stream(stream.ptr)

    def event(self) -> Any:
        return self.cp.cuda.Event()

    def wait_event(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def done(self, event: Any) -> bool:
        return bool(event.done)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self.cp.cuda.get_elapsed_time(start, end))

    def copy_h2d(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        self.cp.cuda.runtime.memcpyAsync(_pointer(dst), src.ctypes.data, src.nbytes, _H2D,
                                         stream.ptr)

    def copy_d2h(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self.cp.cuda.runtime.memcpyAsync(dst.ctypes.data, _pointer(src), dst.nbytes, _D2H,
                                         stream.ptr)

    def memory(self) -> tuple[int, int]:
        free, total = self.cp.cuda.runtime.memGetInfo()
        return int(total - free), int(total)

    def release(self) -> None:
        for pointer in self._registered:
            try:
                self.cp.cuda.runtime.hostUnregister(pointer)
            except self.cp.cuda.runtime.CUDARuntimeError as exc:
                log.warning("could not unpin host memory: %s", exc)
        self._registered.clear()
        self.cp.get_default_memory_pool().free_all_blocks()
        self.cp.get_default_pinned_memory_pool().free_all_blocks()

    def classify(self, exc: BaseException) -> str | None:
        if isinstance(exc, self._oom):
            return "oom"
        return "failed" if isinstance(exc, self._errors) else None


def _pointer(device_array: Any) -> int:
    """Device address of the first element of a numba (or CuPy) device array."""
    return device_array.__cuda_array_interface__["data"][0]


# --- numba-cuda (a device, or its simulator) -------------------------------------------------

class _HostClockEvent:
    """A simulator event: the host clock when recorded (the simulator works synchronously)."""

    def __init__(self) -> None:
        self.time = 0.0

    def record(self, stream: Any = 0) -> None:
        self.time = time.perf_counter()


class NumbaDevice(Device):
    """numba-cuda's memory, streams and events: on the current device, or its simulator."""

    library = "numba-cuda"

    def __init__(self) -> None:
        from numba import cuda
        from numba.cuda.cudadrv import driver, error

        self.cuda: Any = cuda  # untyped: numba's stubs type dtype arguments too narrowly
        self.simulated = simulated()
        if self.simulated:
            self.name = "simulator"
        else:
            try:
                device = cuda.get_current_device()
            except (error.CudaSupportError, driver.CudaAPIError) as exc:
                detail = " ".join(str(exc).split())  # numba's is several lines long
                raise ConfigError(f"no CUDA device ({detail[:80]})") from exc
            name = device.name
            self.name = name.decode() if isinstance(name, bytes) else str(name)
        self._errors = (driver.CudaAPIError, error.CudaSupportError,
                        *(getattr(error, name) for name in ("CudaDriverError",)
                          if hasattr(error, name)))  # the simulator has none
        self._pinned: list[Any] = []
        self._allocated = 0  # bytes of live device arrays (the simulator's memory figure)

    def pinned(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        return self.cuda.pinned_array(shape, dtype=np.dtype(dtype))

    def pin(self, array: np.ndarray) -> None:
        if self.simulated:
            return
        try:
            self._pinned.append(self.cuda.current_context().mempin(
                array, array.ctypes.data, array.nbytes))
        except self._errors as exc:
            log.warning("could not pin %d bytes of host memory: %s", array.nbytes, exc)

    def empty(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike, stream: Any) -> Any:
        return self._count(self.cuda.device_array(shape, np.dtype(dtype), stream=stream))

    def upload(self, array: np.ndarray, stream: Any) -> Any:
        return self._count(self.cuda.to_device(np.ascontiguousarray(array), stream=stream))

    def _count(self, array: Any) -> Any:
        nbytes = int(array.nbytes)
        self._allocated += nbytes
        weakref.finalize(array, self._free, nbytes)
        return array

    def _free(self, nbytes: int) -> None:
        self._allocated -= nbytes

    def stream(self) -> Any:
        return self.cuda.stream()

    def event(self) -> Any:
        return _HostClockEvent() if self.simulated else self.cuda.event(timing=True)

    def wait_event(self, stream: Any, event: Any) -> None:
        if not self.simulated:
            event.wait(stream)

    def done(self, event: Any) -> bool:
        return True if self.simulated else bool(event.query())

    def elapsed_ms(self, start: Any, end: Any) -> float:
        if self.simulated:
            return 1e3 * (end.time - start.time)
        return float(start.elapsed_time(end))

    def copy_h2d(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        dst.copy_to_device(src, stream=stream)

    def copy_d2h(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        src.copy_to_host(dst, stream=stream)

    def memory(self) -> tuple[int, int]:
        if self.simulated:
            return self._allocated, 0
        free, total = self.cuda.current_context().get_memory_info()
        return int(total - free), int(total)

    def release(self) -> None:
        self._pinned.clear()  # numba unpins each when it is freed
        if not self.simulated:
            pending = getattr(self.cuda.current_context(), "deallocations", None)
            if pending is not None:
                pending.clear()  # free what numba still holds for later

    def classify(self, exc: BaseException) -> str | None:
        if not isinstance(exc, self._errors):
            return None
        return "oom" if getattr(exc, "code", None) == _CUDA_ERROR_OUT_OF_MEMORY else "failed"


# --- faults, for tests -----------------------------------------------------------------------

class SimulatedCudaError(RuntimeError):
    """The error a :class:`FaultyDevice` raises, as a lost device's or a full one's would."""

    def __init__(self, message: str, oom: bool = False) -> None:
        super().__init__(message)
        self.oom = oom


class FaultyDevice(Device):
    """``inner`` with one fault (tests): ``lost`` — the ``at``-th batch finds the device lost
    when it is waited on; ``oom`` — device allocations fail from the ``at``-th on; ``hang``
    — the ``at``-th batch never finishes."""

    KINDS = ("lost", "oom", "hang")

    def __init__(self, inner: Device, kind: str, at: int = 1) -> None:
        if kind not in self.KINDS or at < 1:
            raise ConfigError(f"a GPU fault is one of {self.KINDS} at a count ≥ 1, got "
                              f"{kind!r} at {at}")
        self.inner, self.kind, self.at = inner, kind, at
        self.name, self.library, self.simulated = inner.name, inner.library, inner.simulated
        self._allocations = 0
        #: event → the batch it ends (its use since it was last recorded), numbered as
        #: batches are first waited on
        self._events: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._waits = 0

    @classmethod
    def parse(cls, inner: Device, text: str) -> FaultyDevice:
        kind, _, at = text.partition("@")
        try:
            return cls(inner, kind.strip(), int(at or 1))
        except ValueError as exc:
            raise ConfigError(f"{FAULT_VARIABLE}={text!r}: expected KIND@N with KIND one of "
                              f"{cls.KINDS}") from exc

    def pinned(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        return self.inner.pinned(shape, dtype)

    def pin(self, array: np.ndarray) -> None:
        self.inner.pin(array)

    def empty(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike, stream: Any) -> Any:
        self._allocations += 1
        if self.kind == "oom" and self._allocations >= self.at:
            raise SimulatedCudaError(f"out of memory allocating {shape} {np.dtype(dtype)} "
                                     f"(simulated fault)", oom=True)
        return self.inner.empty(shape, dtype, stream)

    def upload(self, array: np.ndarray, stream: Any) -> Any:
        return self.inner.upload(array, stream)

    def stream(self) -> Any:
        return self.inner.stream()

    def kernel_stream(self, stream: Any) -> Any:
        return self.inner.kernel_stream(stream)

    def event(self) -> Any:
        return self.inner.event()

    def record(self, event: Any, stream: Any) -> None:
        self._events.pop(event, None)  # a new use of the event: numbered when waited on
        self.inner.record(event, stream)

    def wait_event(self, stream: Any, event: Any) -> None:
        self.inner.wait_event(stream, event)

    def done(self, event: Any) -> bool:
        batch = self._events.get(event)
        if batch is None:
            self._waits += 1
            batch = self._events[event] = self._waits
        if batch >= self.at and self.kind == "lost":
            raise SimulatedCudaError("an illegal memory access was encountered: the device "
                                     "is lost (simulated fault)")
        if batch >= self.at and self.kind == "hang":
            return False
        return self.inner.done(event)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return self.inner.elapsed_ms(start, end)

    def copy_h2d(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        self.inner.copy_h2d(dst, src, stream)

    def copy_d2h(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self.inner.copy_d2h(dst, src, stream)

    def synchronize(self, stream: Any) -> None:
        self.inner.synchronize(stream)

    def memory(self) -> tuple[int, int]:
        return self.inner.memory()

    def release(self) -> None:
        self.inner.release()

    def classify(self, exc: BaseException) -> str | None:
        if isinstance(exc, SimulatedCudaError):
            return "oom" if exc.oom else "failed"
        return self.inner.classify(exc)


# --- choosing one ----------------------------------------------------------------------------

def open_device(order: Sequence[type[Device]] = (CupyDevice, NumbaDevice)) -> Device:
    """The simulator where numba runs it (wrapped in a :class:`FaultyDevice` when
    ``PIMEGA_GPUSIM_FAULT`` is set), else the first of ``order`` that finds a device."""
    try:
        import numba.cuda  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"GPU backend unavailable: numba-cuda not installed ({exc})") from exc
    if simulated():
        fault = os.environ.get(FAULT_VARIABLE, "").strip()
        if fault == "absent":
            raise ConfigError(f"GPU backend unavailable: no CUDA device (simulated fault: "
                              f"{FAULT_VARIABLE}={fault})")
        device: Device = NumbaDevice()
        return FaultyDevice.parse(device, fault) if fault else device
    reasons = []
    for kind in order:
        try:
            return kind()
        except ConfigError as exc:
            reasons.append(f"{kind.library}: {' '.join(str(exc).split())}")
    raise ConfigError("GPU backend unavailable: " + "; ".join(reasons))
