"""RDMA ingest (RoCE v2, InfiniBand, Soft-RoCE): frames written straight into the frame rings.

- :mod:`.protocol` — the protocol as plain state (messages, credits, immediates);
- :mod:`.verbs` — the small verbs interface it runs on, with two implementations:
  :mod:`.loopback` (in process) and :mod:`.pyverbs_impl` (a device, pyverbs imported lazily);
- :mod:`.source` — :class:`RdmaSource`, the engine's frame source (the receiving end);
- :mod:`.sender` — :class:`RdmaLink`, the sending end (detectors, the simulator).
"""

from .errors import ProtocolError, RdmaDisconnected, RdmaError, RdmaUnavailable
from .loopback import LoopbackFabric
from .pyverbs_impl import PyverbsVerbs, device_address, unavailable_reason
from .sender import RdmaLink
from .source import RdmaSource
from .verbs import Verbs

__all__ = [
    "LoopbackFabric",
    "ProtocolError",
    "PyverbsVerbs",
    "RdmaDisconnected",
    "RdmaError",
    "RdmaLink",
    "RdmaSource",
    "RdmaUnavailable",
    "Verbs",
    "device_address",
    "unavailable_reason",
]
