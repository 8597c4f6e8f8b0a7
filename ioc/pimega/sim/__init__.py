"""The simulated π-MEGA detector: test patterns, a tomography phantom and a TCP frame sender."""

from .patterns import COUNTER_PERIOD, counter_array_image, counter_image, module_payload
from .phantom import PhantomScan, ScanFrame, line_integrals
from .sender import PhantomParams, SimConfig, Simulator

__all__ = [
    "COUNTER_PERIOD",
    "PhantomParams",
    "PhantomScan",
    "ScanFrame",
    "SimConfig",
    "Simulator",
    "counter_array_image",
    "counter_image",
    "line_integrals",
    "module_payload",
]
