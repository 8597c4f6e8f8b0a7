"""One line, at most once a second, for each refused put — not caproto's traceback per put.

caproto logs every put its putter refuses with ``log.exception`` on ``caproto.circ``: 2 KB of
traceback for a wrong value, and a client repeating a bad put floods the log. A refusal is
expected input, so it becomes one warning with the client and the reason; repeats within a
second are counted and reported with the next line that passes.
"""

from __future__ import annotations

import logging
import time

CAPROTO_CIRCUIT_LOGGER = "caproto.circ"


class RefusedPutFilter(logging.Filter):
    def __init__(self, interval_s: float = 1.0) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._quiet_until = 0.0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, ValueError) or "write request" not in str(record.msg):
            return True
        now = time.monotonic()
        if now < self._quiet_until:
            self._suppressed += 1
            return False
        user, host = (record.args or ("?", "?"))[:2]  # type: ignore[index]
        message = f"put refused for {user}@{host}: {error}"
        if self._suppressed:
            message += f" ({self._suppressed} more refused puts not logged)"
            self._suppressed = 0
        self._quiet_until = now + self._interval_s
        record.msg, record.args, record.exc_info, record.exc_text = message, (), None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install() -> None:
    logging.getLogger(CAPROTO_CIRCUIT_LOGGER).addFilter(RefusedPutFilter())
