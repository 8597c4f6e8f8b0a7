"""Autosave: the user's settings survive a restart of the IOC.

`Autosave` keeps a list of setpoint PVs (from synApps-style request files, see
`request_pvs`) in one JSON file: ``restore()`` at start writes the saved values through
each PV's put path (so the IOC validates and applies them as a client put), and ``run()``
saves, at most once per second, whenever one of them changed, and once more on the way out
(``close()`` waits for that one, after the IOC has closed its data file).
The file is replaced atomically (temporary file, fsync, rename, fsync of the directory), so
a crash leaves the previous save or the new one, never half of one. Its header names the
format, its version and the IOC's prefix: a file that is corrupt or another IOC's is
reported, moved aside (``settings.json.rejected``) and ignored, never a reason not to start.

caproto's own ``caproto.server.autosave`` (``AutosaveHelper``, ``autosaved``,
``RotatingFileManager``) does not fit: it marks pvproperties at class level (these PVs
come from generated groups and request files), saves on a fixed period whether anything
changed or not, writes without fsync and without a header, and is itself a PVGroup (a PV of
its own in the IOC's list).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from caproto import (
    ChannelByte,
    ChannelChar,
    ChannelData,
    ChannelEnum,
    ChannelFloat,
    ChannelInteger,
    ChannelNumeric,
    ChannelShort,
    ChannelString,
)

from pimega.core.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "pimega-autosave"
VERSION = 1
FILE_NAME = "settings.json"
#: At most one save per this many seconds.
INTERVAL_S = 1.0


def default_directory(prefix: str) -> Path:
    """``$XDG_STATE_HOME/pimega/<prefix>`` (else ``~/.local/state/pimega/<prefix>``), the
    prefix as a directory name: ``BL:PIMEGA:`` → ``BL_PIMEGA``."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "pimega" / (re.sub(r"[^\w.-]+", "_", prefix, flags=re.ASCII).strip("_") or "_")


_INCLUDE = re.compile(r'file\s+"?([^",\s]+)"?\s*,?\s*(.*)')
_MACRO = re.compile(r"\$[({](\w+)[)}]")


def request_pvs(files: Mapping[str, str], top: str, macros: Mapping[str, str]) -> list[str]:
    """The PV names a synApps request file asks to save, ``file "x.req", R=...`` includes
    followed (``files`` holds each file's text by path, includes relative to the including
    file), ``$(NAME)`` macros expanded."""

    def expand(text: str, values: Mapping[str, str]) -> str:
        def value(match: re.Match[str]) -> str:
            if match[1] not in values:
                raise ConfigError(f"{top}: macro $({match[1]}) has no value in {text!r}")
            return values[match[1]]

        return _MACRO.sub(value, text)

    if top not in files:
        raise ConfigError(f"autosave request file {top} not found")
    names: list[str] = []
    for line in files[top].splitlines():
        line = line.split("#", 1)[0].strip()
        if include := _INCLUDE.fullmatch(line):
            pairs = (pair.split("=", 1) for pair in include[2].split(",") if "=" in pair)
            values = {**macros, **{k.strip(): expand(v.strip(), macros) for k, v in pairs}}
            path = posixpath.join(posixpath.dirname(top), include[1])
            names += request_pvs(files, path, values)
        elif line:
            names.append(expand(line, macros))
    return list(dict.fromkeys(names))


class Autosave:
    """Saves the PVs ``names`` of ``pvdb`` in ``path`` for the IOC with PV ``prefix``."""

    def __init__(self, pvdb: Mapping[str, ChannelData], names: Iterable[str], path: Path,
                 prefix: str, interval: float = INTERVAL_S) -> None:
        names = list(names)
        if missing := [name for name in names if name not in pvdb]:
            log.warning("autosave: %d PV(s) to save are not served, e.g. %s", len(missing),
                        missing[0])
        self.channels = {name: pvdb[name] for name in names if name in pvdb}
        self.path = Path(path)
        self.prefix = prefix
        self.interval = interval
        self._saved: dict[str, Any] | None = None  # the values in the file, once known
        self._error = ""  # the last failure to save, reported once
        # one thread: saves follow one another (the last on the way out after one under way)
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="autosave")

    def values(self) -> dict[str, Any]:
        """The current value of each saved PV, as the file holds it."""
        return {name: _plain(channel.value) for name, channel in self.channels.items()}

    def read(self) -> dict[str, Any] | None:
        """The values in the file; None if there is none, or it is not a save of this IOC
        (then reported and moved aside)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            log.info("autosave: no saved settings in %s yet", self.path)
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.error("autosave: cannot read %s, settings not restored: %s", self.path, exc)
            return None
        try:
            document = json.loads(text)
        except ValueError as exc:
            return self._reject(f"not JSON ({exc})")
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            return self._reject(f"not a {FORMAT} file")
        if document.get("version") != VERSION:
            return self._reject(f"format version {document.get('version')!r}, not {VERSION}")
        if document.get("prefix") != self.prefix:
            return self._reject(f"saved by the IOC with prefix {document.get('prefix')!r}, "
                                f"not {self.prefix!r}")
        values = document.get("values")
        if not isinstance(values, dict):
            return self._reject("no values")
        return values

    def _reject(self, why: str) -> None:
        aside = self.path.with_name(self.path.name + ".rejected")
        try:
            os.replace(self.path, aside)
            where = f"moved to {aside}"
        except OSError as exc:
            where = f"left in place ({exc})"
        log.error("autosave: %s is %s: settings not restored, file %s", self.path, why, where)

    async def restore(self) -> int:
        """Put the saved values, each through its PV's put path; a value the IOC refuses, or
        that no Channel Access client could put (`restorable`), is logged and skipped. The
        number restored."""
        saved = self.read() or {}
        restored = 0
        for name, channel in self.channels.items():
            if name not in saved:
                continue
            try:
                await channel.write(restorable(channel, saved[name]))
            except Exception as exc:  # whatever the put path refuses with
                log.warning("autosave: %s = %r not restored: %s", name, saved[name], exc)
            else:
                restored += 1
        if saved:
            log.info("autosave: restored %d of %d setting(s) from %s", restored, len(saved),
                     self.path)
        self._saved = saved
        return restored

    async def run(self) -> None:
        """Save whenever a value changed, at most once per ``interval``, until cancelled;
        then once more. Saves run on a thread of their own, and the last one is not waited
        for here (`close` waits for it): on the way out, a disk slow to fsync must not hold
        back the closing of the data file."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.interval)
                values = self.values()
                if values != self._saved:
                    await loop.run_in_executor(self._saver, self._save, values)
        finally:
            if (values := self.values()) != self._saved:
                self._saver.submit(self._save, values)

    def close(self) -> None:
        """Wait for the saves under way or queued (the last one on the way out)."""
        self._saver.shutdown(wait=True)

    def _save(self, values: dict[str, Any]) -> None:
        document = {"format": FORMAT, "version": VERSION, "prefix": self.prefix,
                    "saved": datetime.now(UTC).isoformat(timespec="seconds"), "values": values}
        try:
            _write_atomically(self.path, json.dumps(document, indent=1) + "\n")
        except (OSError, TypeError, ValueError) as exc:
            if str(exc) != self._error:  # once per distinct failure, not every second
                log.error("autosave: cannot save settings to %s: %s", self.path, exc)
            self._error = str(exc)
            return
        if self._error:
            log.info("autosave: saving to %s again", self.path)
        self._saved, self._error = values, ""


#: Characters a DBR_STRING holds (EPICS's MAX_STRING_SIZE).
MAX_STRING_SIZE = 40
_FLOAT32_MAX = 3.4028234663852886e38


def restorable(channel: ChannelData, value: Any) -> Any:
    """``value`` if a Channel Access client could put it on ``channel`` (of the PV's kind:
    an enum state, text within its length, finite numbers within the type's range, a scalar
    or an array within its length), else ValueError saying why. The put path checks a
    client's DBR data before converting it; a settings file edited by hand, or damaged,
    would bypass that and leave a PV holding what it cannot serve (a LONG of 1e12, a DOUBLE
    of "abc": every read of it fails)."""
    if isinstance(channel, ChannelEnum):
        strings = list(channel.enum_strings)
        if (value in strings if isinstance(value, str)
                else _is_whole(value) and 0 <= value < len(strings)):
            return value
        raise ValueError(f"{value!r} is not one of {strings}")
    if isinstance(channel, (ChannelString, ChannelChar)) and isinstance(channel.value, str):
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not text")
        limit = ((channel.long_string_max_length if isinstance(channel, ChannelChar) else None)
                 or MAX_STRING_SIZE)
        if len(value.encode(channel.string_encoding or "latin-1", "replace")) > limit:
            raise ValueError(f"text of {len(value)} characters is longer than {limit}")
        return value
    if isinstance(channel, ChannelNumeric):
        length = channel.max_length or 1
        if isinstance(value, list) != (length > 1):
            raise ValueError(f"{value!r} is not {'an array' if length > 1 else 'a number'}")
        values = value if length > 1 else [value]
        if len(values) > length:
            raise ValueError(f"{len(values)} elements, more than {length}")
        for number in values:
            _check_number(channel, number)
    return value


#: The whole-number channel kinds and the range of each.
_WHOLE_RANGES = ((ChannelByte, "CHAR", 0, 2**8 - 1), (ChannelShort, "SHORT", -(2**15), 2**15 - 1),
                 (ChannelInteger, "LONG", -(2**31), 2**31 - 1))


def _check_number(channel: ChannelNumeric, number: Any) -> None:
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{number!r} is not a number")
    if not math.isfinite(number):
        raise ValueError(f"{number!r} is not a finite number")
    if isinstance(channel, ChannelFloat) and abs(number) > _FLOAT32_MAX:
        raise ValueError(f"{number!r} is outside the FLOAT range")
    for kind, type_name, low, high in _WHOLE_RANGES:
        if isinstance(channel, kind):
            if not _is_whole(number):
                raise ValueError(f"{number!r} is not a whole number")
            if not low <= number <= high:
                raise ValueError(f"{number!r} is outside the {type_name} range")


def _is_whole(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value == int(value))


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: the old file or the new one survive a crash, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)


def _plain(value: Any) -> Any:
    """A PV's value as JSON holds it (NumPy scalars and arrays as Python numbers and lists)."""
    return value.tolist() if hasattr(value, "tolist") else value
