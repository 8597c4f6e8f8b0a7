"""Errors of the RDMA transport, each with a message a user can act on."""

from __future__ import annotations

from pimega.core.errors import PimegaError


class RdmaError(PimegaError):
    """The RDMA transport failed (set-up, a refused connection, a broken queue pair)."""


class RdmaUnavailable(RdmaError):
    """pyverbs or an RDMA device is missing: RDMA cannot run on this machine."""


class RdmaDisconnected(RdmaError):
    """The peer went away or the connection broke; what was delivered before stands."""


class ProtocolError(RdmaError):
    """A message or an immediate that breaks the protocol; ``module`` is the one it concerns
    (None when it names no module this connection carries)."""

    def __init__(self, message: str, module: int | None = None) -> None:
        super().__init__(message)
        self.module = module
