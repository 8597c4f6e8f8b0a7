"""The GPU backend: numba-cuda kernels (:mod:`.kernels`) on a device (:mod:`.device`: CuPy, or
numba-cuda's own API and its simulator), driven by the conveyor of :mod:`.backend`.

Importing this package imports neither CuPy nor numba-cuda; making a :class:`GpuBackend` does.
"""

from .backend import STAGES, FrameResult, GpuBackend, GpuError, GpuProcessor, Ticket

__all__ = ["STAGES", "FrameResult", "GpuBackend", "GpuError", "GpuProcessor", "Ticket"]
