"""Exceptions shared by the layers. Each carries a message a user can act on."""


class PimegaError(Exception):
    """Base of every π-MEGA error."""


class WireError(PimegaError):
    """A frame that does not follow wire format v1 (the stream goes on without it)."""


class ConfigError(PimegaError, ValueError):
    """A setting outside what the detector or the back-end supports."""


class WriterError(PimegaError):
    """The HDF5 writer could not keep a frame (disk full, file closed, ...)."""
