"""π-MEGA detector back-end: wire-format ingest, CPU/GPU pipeline, HDF5 writer and caproto IOC."""

__version__ = "0.1.0"
