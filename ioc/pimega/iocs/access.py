"""EPICS access security for the IOC: the rules of an .acf file on every PV.

The subset of EPICS's access-security file that beamlines use::

    UAG(ops)      {alice, bob}           # users, matched exactly
    HAG(consoles) {console1, "pc-2"}     # hosts, compared in lower case
    ASG(DEFAULT) {
        RULE(1, READ)
        RULE(1, WRITE) { UAG(ops) HAG(consoles) }
    }

A client's rights on a PV are the most that the passing rules of the PV's group grant (a
group the file does not define is ``DEFAULT``; a file without ``ASG(DEFAULT)`` gives those
PVs no access, as in EPICS). The user and host are what the client sent in the CA handshake:
nothing authenticates them, and a HAG entry matches the host *name* the client sends (an IP
address matches a client that names itself by it). As in EPICS's record types, the value
(``VAL``, ``CMD``, ``RES``) is level 0 and every other field (``.DESC``, ``.PROC``, ...) level 1.
``INP``/``CALC`` and ``TRAPWRITE`` are refused, not ignored.

`AccessContext` (caproto's asyncio server) puts the checks on the PVs and record fields that
clients name, through caproto's own hook, ``check_access``: caproto sends the rights when a
client connects (so clients show a PV read-only) and asks again on every read and write. A
refused read or write is logged here in one line per client every `DENIAL_LOG_INTERVAL_S`
seconds; caproto's own traceback for it is dropped. `AccessPolicy.reload` (SIGHUP, or the
``Reload`` PV of `AccessGroup`) reads the file again, keeping the old rules if it has an
error, and connected clients get their new rights.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NamedTuple

import caproto as ca
from caproto import AccessRights, ChannelData, Forbidden
from caproto.server import PvpropertyCharRO, pvproperty
from caproto.server.common import DisconnectedCircuit

from pimega.core.errors import ConfigError

from .circuit import PacedContext
from .factory import CheckedInteger
from .record_fields import LazyFieldsGroup, lazy_class

log = logging.getLogger(__name__)

DEFAULT = "DEFAULT"
#: Fields that EPICS's standard record types put at access level 0; all others are level 1.
LEVEL0_FIELDS = frozenset({"VAL", "CMD", "RES"})
DENIAL_LOG_INTERVAL_S = 10.0

_ACCESS = {"NONE": AccessRights.NO_ACCESS, "READ": AccessRights.READ,
           "WRITE": AccessRights.READ | AccessRights.WRITE}
_ALL = AccessRights.READ | AccessRights.WRITE
_UNSUPPORTED = ("rules that depend on PV values (INP/CALC) are not supported by pimega-ioc; "
                "remove it")


class AcfError(ConfigError):
    """An access-security file pimega-ioc cannot use; ``line`` is where (0: the whole file).
    A ValueError too, so a refused reload put is logged as one line (`pimega.iocs.logfilter`)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Rule:
    """``RULE(level, access)``; ``users``/``hosts`` None: anyone / anywhere."""

    level: int
    access: AccessRights
    users: frozenset[str] | None = None
    hosts: frozenset[str] | None = None

    def passes(self, host: str, user: str, level: int) -> bool:
        return (level <= self.level
                and (self.users is None or user in self.users)
                and (self.hosts is None or host.lower() in self.hosts))


@dataclass(frozen=True)
class AccessConfig:
    """The access security groups of one file, by name (``DEFAULT`` always present)."""

    groups: Mapping[str, tuple[Rule, ...]]

    def rights(self, asg: str, host: str, user: str, level: int = 1) -> AccessRights:
        """The rights of ``user`` on ``host`` on a field of ``level`` in group ``asg``."""
        rules = self.groups.get(asg)
        if rules is None:
            rules = self.groups[DEFAULT]
        rights = AccessRights.NO_ACCESS
        for rule in rules:
            if rule.passes(host, user, level):
                rights |= rule.access
        return rights


def parse_acf(text: str, source: str = "acf") -> AccessConfig:
    """The configuration of an .acf file's text; `AcfError` ("source:line: ...") if the file
    has an error or uses what pimega-ioc does not support (INP, CALC, TRAPWRITE)."""
    return _Parser(text, source).parse()


def load_acf(path: str | os.PathLike[str]) -> AccessConfig:
    """`parse_acf` of a file; an unreadable file is an `AcfError` too."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AcfError(f"{path}: cannot read the access security file: {exc}") from exc
    return parse_acf(text, str(path))


@dataclass(frozen=True)
class _Token:
    kind: str  # "word" (unquoted), "string" (quoted) or "punct"
    text: str
    line: int

    def __str__(self) -> str:
        return repr(self.text) if self.kind == "string" else f"'{self.text}'"


class _RawRule(NamedTuple):
    """A rule as written: its UAG and HAG references are checked once the file is read."""

    level: int
    access: AccessRights
    uags: list[_Token]
    hags: list[_Token]


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*")
    | (?P<word>[A-Za-z0-9_\-+:.\[\]<>;]+)
    | (?P<punct>[(){},])
""", re.VERBOSE)


def _tokens(text: str, source: str) -> Iterator[_Token]:
    line, pos = 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            what = "a quote that is not closed on its line" if text[pos] == '"' else (
                f"unexpected character {text[pos]!r}")
            raise AcfError(f"{source}:{line}: {what}", line)
        kind, value = match.lastgroup or "", match.group()
        if kind == "newline":
            line += 1
        elif kind == "string":
            yield _Token(kind, re.sub(r"\\(.)", r"\1", value[1:-1]), line)
        elif kind in ("word", "punct"):
            yield _Token(kind, value, line)
        pos = match.end()


class _Parser:
    """Recursive descent over the tokens; group references are checked at the end."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = list(_tokens(text, source))
        self.pos = 0
        self.uags: dict[str, set[str]] = {}
        self.hags: dict[str, set[str]] = {}
        self.defined: dict[tuple[str, str], int] = {}  # (kind, name) -> line
        self.asgs: dict[str, list[_RawRule]] = {}

    def error(self, message: str, line: int) -> AcfError:
        return AcfError(f"{self.source}:{line}: {message}", line)

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str) -> _Token:
        token = self.peek()
        if token is None:
            last = self.tokens[-1].line if self.tokens else 1
            raise self.error(f"expected {expected}, found the end of the file", last)
        self.pos += 1
        return token

    def punct(self, char: str, expected: str = "") -> _Token:
        expected = expected or f"'{char}'"
        token = self.take(expected)
        if token.kind != "punct" or token.text != char:
            raise self.error(f"expected {expected}, found {token}", token.line)
        return token

    def at(self, char: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "punct" and token.text == char

    def name(self, what: str) -> _Token:
        token = self.take(what)
        if token.kind == "punct":
            raise self.error(f"expected {what}, found {token}", token.line)
        return token

    def names(self, what: str, close: str) -> list[_Token]:
        """``name, name, ...`` up to ``close`` (taken); empty if ``close`` comes first."""
        found: list[_Token] = []
        while not self.at(close):
            if found:
                self.punct(",", f"',' or '{close}'")
            found.append(self.name(what))
        self.punct(close)
        return found

    def parse(self) -> AccessConfig:
        while self.peek() is not None:
            keyword = self.take("UAG, HAG or ASG")
            if keyword.kind != "word" or keyword.text not in ("UAG", "HAG", "ASG"):
                raise self.error(f"expected UAG, HAG or ASG, found {keyword}", keyword.line)
            self.punct("(")
            name = self.name(f"the name of the {keyword.text}")
            self.punct(")")
            self.define(keyword.text, name)
            if keyword.text == "ASG":
                self.asgs[name.text] = self.asg_body() if self.at("{") else []
                continue
            members: list[_Token] = []
            if self.at("{"):
                self.punct("{")
                members = self.names("a name", "}")
            if keyword.text == "UAG":
                self.uags[name.text] = {member.text for member in members}
            else:
                self.hags[name.text] = {member.text.lower() for member in members}
        return AccessConfig({name: tuple(self.resolve(rule) for rule in rules)
                             for name, rules in {DEFAULT: [], **self.asgs}.items()})

    def define(self, kind: str, name: _Token) -> None:
        first = self.defined.get((kind, name.text))
        if first is not None:
            raise self.error(f"{kind}({name.text}) is defined twice (first on line {first})",
                             name.line)
        self.defined[kind, name.text] = name.line

    def asg_body(self) -> list[_RawRule]:
        """``{ RULE(...) [{ ... }] ... }``."""
        self.punct("{")
        rules = []
        while not self.at("}"):
            keyword = self.name("RULE or '}'")
            if re.fullmatch(r"INP[A-L]", keyword.text):
                raise self.error(f"{keyword.text}: {_UNSUPPORTED}", keyword.line)
            if keyword.kind != "word" or keyword.text != "RULE":
                raise self.error(f"expected RULE or '}}', found {keyword}", keyword.line)
            rules.append(self.rule())
        self.punct("}")
        return rules

    def rule(self) -> _RawRule:
        """``(level, access[, NOTRAPWRITE]) [{ UAG(name, ...) HAG(name, ...) }]``."""
        self.punct("(")
        level = self.name("the rule's level (0 or 1)")
        if level.text not in ("0", "1"):
            raise self.error(f"a rule's level is 0 or 1, not {level}", level.line)
        self.punct(",")
        access = self.name("NONE, READ or WRITE")
        if access.text not in _ACCESS:
            raise self.error(f"expected NONE, READ or WRITE, found {access}", access.line)
        if self.at(","):
            self.punct(",")
            trap = self.name("TRAPWRITE or NOTRAPWRITE")
            if trap.text == "TRAPWRITE":
                raise self.error("TRAPWRITE is not supported by pimega-ioc (no write "
                                 "trapping); remove it or write NOTRAPWRITE", trap.line)
            if trap.text != "NOTRAPWRITE":
                raise self.error(f"expected TRAPWRITE or NOTRAPWRITE, found {trap}", trap.line)
        self.punct(")")
        rule = _RawRule(int(level.text), _ACCESS[access.text], [], [])
        if self.at("{"):
            self.punct("{")
            while not self.at("}"):
                clause = self.name("UAG, HAG or '}'")
                if clause.text == "CALC":
                    raise self.error(f"CALC: {_UNSUPPORTED}", clause.line)
                if clause.kind != "word" or clause.text not in ("UAG", "HAG"):
                    raise self.error(f"expected UAG, HAG or '}}', found {clause}", clause.line)
                self.punct("(")
                (rule.uags if clause.text == "UAG" else rule.hags).extend(
                    self.names(f"the name of a {clause.text}", ")"))
            self.punct("}")
        return rule

    def resolve(self, rule: _RawRule) -> Rule:
        return Rule(rule.level, rule.access, self.members("UAG", self.uags, rule.uags),
                    self.members("HAG", self.hags, rule.hags))

    def members(self, kind: str, groups: dict[str, set[str]],
                refs: list[_Token]) -> frozenset[str] | None:
        """Everyone in the referenced groups, or None (anyone) without a reference."""
        if not refs:
            return None
        for ref in refs:
            if ref.text not in groups:
                raise self.error(f"{kind}({ref.text}) is not defined", ref.line)
        return frozenset().union(*(groups[ref.text] for ref in refs))


@dataclass(frozen=True)
class GroupMap:
    """Which ASG each PV belongs to: shell-style patterns on the PV name after the IOC prefix,
    first match wins, ``DEFAULT`` otherwise. The text form (``--access-groups FILE``) is
    one ``PATTERN ASG`` per line, ``#`` comments::

        cam1:Acquire*   OPERATE
        HDF1:*          WRITER
    """

    prefix: str
    patterns: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str, prefix: str, source: str = "groups") -> GroupMap:
        patterns = []
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2:
                raise AcfError(f"{source}:{number}: expected 'PATTERN ASG', found {line.strip()!r}",
                               number)
            patterns.append((words[0], words[1]))
        return cls(prefix, tuple(patterns))

    def __call__(self, pvname: str) -> str:
        name = pvname.removeprefix(self.prefix)
        return next((asg for pattern, asg in self.patterns if fnmatchcase(name, pattern)), DEFAULT)


class AccessDenied(Forbidden):
    """A read or write the access rules refuse (logged here, not by caproto)."""


class _QuietDenials(logging.Filter):
    """Drops caproto's traceback for an `AccessDenied` (the context has logged one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], AccessDenied))


_QUIET_DENIALS = _QuietDenials()


class AccessPolicy:
    """The rules in force (None: everything allowed) and the file they come from."""

    def __init__(self, config: AccessConfig | None = None, path: Path | None = None) -> None:
        self.config = config
        self.path = path
        self.status = f"rules from {path}" if path else "no access security: all allowed"
        #: Awaited after each reload, loaded or not (the server, the status PV).
        self.listeners: list[Callable[[AccessPolicy], Awaitable[None]]] = []

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AccessPolicy:
        """The policy of an .acf file; `AcfError` if it cannot be used (refuse to start)."""
        return cls(load_acf(path), Path(path))

    def rights(self, asg: str, host: str | None, user: str | None, level: int) -> AccessRights:
        if self.config is None:
            return _ALL
        return self.config.rights(asg, host or "", user or "", level)

    async def reload(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Read the file (``path``, else the current one) again; on an error log it and keep
        the rules in force. True if it loaded."""
        path = Path(path) if path is not None else self.path
        try:
            if path is None:
                raise AcfError("no access security file")
            config = load_acf(path)
        except AcfError as exc:
            self.status = f"reload failed, previous rules kept: {exc}"
            log.error("access security %s", self.status)
            loaded = False
        else:
            self.config, self.path, self.status = config, path, f"rules from {path}"
            log.info("access security reloaded from %s", path)
            loaded = True
        for listener in self.listeners:
            await listener(self)
        return loaded


class AccessContext(PacedContext):
    """The IOC's asyncio server (`PacedContext`) with ``policy`` on every PV that clients
    name, PV ``name`` (record fields: their record's name) in group ``group_of(name)``.

    The checks go on a ChannelData the first time a client names it: wrapping all of them
    up front costs ~2.5 kB each, and a record field exists only once named
    (`record_fields`). On SIGHUP and
    after any `AccessPolicy.reload`, connected clients get their new rights. Create it in
    the event loop that runs it (caproto's rule).
    """

    def __init__(self, pvdb: dict[str, Any], policy: AccessPolicy,
                 group_of: Callable[[str], str] = lambda pvname: DEFAULT,
                 interfaces: list[str] | None = None) -> None:
        super().__init__(pvdb, interfaces)
        self.policy = policy
        self.group_of = group_of
        self._denials: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._reloads: set[asyncio.Task[bool]] = set()
        policy.listeners.append(self.push_rights)
        logging.getLogger("caproto.circ").addFilter(_QUIET_DENIALS)
        groups = {group_of(name) for name in pvdb}
        if policy.config is not None and (unknown := sorted(groups - policy.config.groups.keys())):
            log.warning("access security: ASG %s not in %s: those PVs follow DEFAULT",
                        ", ".join(unknown), policy.path)

    def __getitem__(self, pvname: str) -> ChannelData:
        instance = super().__getitem__(pvname)
        if not isinstance(instance.check_access, _Guard):
            _, record, field, _ = ca.parse_record_field(pvname)
            level = 0 if not field or field in LEVEL0_FIELDS else 1
            _Guard.put_on(instance, self, pvname, self.group_of(record), level)
        return instance

    async def run(self, **kwargs: Any) -> None:
        """caproto's ``run``, reloading the access security file on SIGHUP."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        try:
            await super().run(**kwargs)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    def _reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.policy.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def push_rights(self, policy: AccessPolicy) -> None:
        """Send an AccessRightsResponse for every connected channel whose rights changed,
        as an EPICS IOC does after a reload."""
        sent = 0
        for circuit in list(self.circuits):
            channels = [chan for chan in circuit.circuit.channels.values()
                        if chan.states[ca.SERVER] is ca.CONNECTED]
            try:
                for chan in channels:
                    rights = self[chan.name].check_access(circuit.client_hostname,
                                                          circuit.client_username)
                    if rights != chan.access_rights:
                        await circuit.send(ca.AccessRightsResponse(cid=chan.cid,
                                                                   access_rights=rights))
                        sent += 1
            except DisconnectedCircuit:
                continue  # that client has gone: nothing to tell it
        if sent:
            log.info("access security: new rights sent on %d channel(s)", sent)

    def report_denial(self, kind: str, pvname: str, host: str | None, user: str | None) -> None:
        """Log a refused ``kind`` ("read", "write"): one line per client and kind every
        `DENIAL_LOG_INTERVAL_S`, with the number refused in between."""
        key = (kind, host or "", user or "")
        now = time.monotonic()
        last, suppressed = self._denials.get(key, (-math.inf, 0))
        if now - last < DENIAL_LOG_INTERVAL_S:
            self._denials[key] = (last, suppressed + 1)
            return
        self._denials[key] = (now, 0)
        more = f" (and {suppressed} more refused since the last report)" if suppressed else ""
        log.warning("access security: %s of %s refused to %s@%s%s", kind, pvname, user, host,
                    more)


class _Guard:
    """The access checks of one ChannelData: caproto's own check (read-only PVs stay
    read-only) narrowed by the policy's rules for the PV's group and the field's level."""

    __slots__ = ("asg", "context", "inner_check", "inner_read", "inner_write", "level",
                 "pvname")

    def __init__(self, context: AccessContext, instance: ChannelData, pvname: str, asg: str,
                 level: int) -> None:
        self.context, self.pvname, self.asg, self.level = context, pvname, asg, level
        self.inner_check = instance.check_access
        self.inner_read, self.inner_write = instance.auth_read, instance.auth_write

    @classmethod
    def put_on(cls, instance: ChannelData, context: AccessContext, pvname: str, asg: str,
               level: int) -> None:
        guard = cls(context, instance, pvname, asg, level)
        instance.check_access = guard
        instance.auth_read = guard.auth_read
        instance.auth_write = guard.auth_write

    def __call__(self, hostname: str | None, username: str | None) -> AccessRights:
        rules = self.context.policy.rights(self.asg, hostname, username, self.level)
        return self.inner_check(hostname, username) & rules

    def require(self, right: AccessRights, hostname: str | None, username: str | None) -> None:
        if right not in self(hostname, username):
            kind = "read" if right is AccessRights.READ else "write"
            self.context.report_denial(kind, self.pvname, hostname, username)
            raise AccessDenied(f"no {kind} access to {self.pvname}")

    async def auth_read(self, hostname: Any, username: Any, *args: Any, **kwargs: Any) -> Any:
        self.require(AccessRights.READ, hostname, username)
        return await self.inner_read(hostname, username, *args, **kwargs)

    async def auth_write(self, hostname: Any, username: Any, *args: Any, **kwargs: Any) -> Any:
        self.require(AccessRights.WRITE, hostname, username)
        return await self.inner_write(hostname, username, *args, **kwargs)


NO_POLICY = "no access security file: every client may write"


class AccessGroup(LazyFieldsGroup):
    """``Reload`` (write 1: read the access security file again; a failed reload fails the
    put) and ``Status_RBV`` (the rules in force, or why the last reload failed). Set
    ``policy`` before the server starts."""

    policy: AccessPolicy | None = None

    async def _put_reload(self, instance: Any, value: int) -> int:
        if value not in (0, 1):
            reason = f"Reload {value} refused: write 1 to read the access security file again"
            await self.status.write(f"{reason}; {self._in_force()}"[:255])
            raise AcfError(reason)
        if value:
            if self.policy is None:
                raise AcfError("no access security file to reload")
            if not await self.policy.reload():
                raise AcfError(self.policy.status)
        return 0

    def _in_force(self) -> str:
        return NO_POLICY if self.policy is None else self.policy.status

    async def _start(self, instance: Any, async_lib: Any) -> None:
        if self.policy is None:
            await self.status.write(NO_POLICY)
        else:
            self.policy.listeners.append(self._show)
            await self._show(self.policy)

    async def _show(self, policy: AccessPolicy) -> None:
        await self.status.write(policy.status[:255])

    # the ignores: caproto types a hook's self as PVGroup
    reload = pvproperty(value=0, name="Reload", record="longout",
                        dtype=CheckedInteger,  # NaN or 1e12 refused, not cast to some LONG
                        put=_put_reload,  # pyright: ignore[reportArgumentType]
                        doc="Write 1: read the access security file again")
    status = pvproperty(value="", name="Status_RBV", dtype=lazy_class(PvpropertyCharRO),
                        max_length=256, record="waveform",
                        read_only=True,
                        startup=_start,  # pyright: ignore[reportArgumentType]
                        doc="Access security rules in force, or why a reload failed")
