"""Record types the catalog serves beyond caproto's own: the synApps ``sseq`` (string
sequence: ADCore links its buttons to one, e.g. ``Stats1:Reset``), a LONG whose put acts."""

from __future__ import annotations

from caproto.server.records import LongoutFields, get_record_registry, register_record


class SseqFields(LongoutFields):
    """Fields of an ``sseq`` record, as far as its VAL goes."""

    _record_type = "sseq"


if "sseq" not in get_record_registry():
    register_record(SseqFields)
