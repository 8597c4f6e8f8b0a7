"""The GPU backend: numba-cuda kernels (:mod:`.kernels`) driven through CuPy (:mod:`.backend`).

Importing this package imports neither CuPy nor numba-cuda; making a :class:`GpuBackend` does.
"""

from .backend import FrameResult, GpuBackend, GpuError, GpuProcessor, Ticket

__all__ = ["FrameResult", "GpuBackend", "GpuError", "GpuProcessor", "Ticket"]
