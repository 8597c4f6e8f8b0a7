"""Geometry, wire format, bit packing, errors: the pieces every layer shares."""
