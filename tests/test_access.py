"""Access security: the .acf parser, the rights it grants, and a real caproto server whose
clients (other processes, other user names) get exactly those rights, before and after a
reload."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest
from caproto import AccessRights, ChannelType

from pimega.cli.loopback import loopback_environment
from pimega.iocs.access import (
    AccessContext,
    AccessDenied,
    AccessPolicy,
    AcfError,
    GroupMap,
    load_acf,
    parse_acf,
)

from .caprocess import client, tiny_ioc, wait_for
from .tinyioc import Camera

NO, R, RW = AccessRights.NO_ACCESS, AccessRights.READ, AccessRights.READ | AccessRights.WRITE

BEAMLINE_ACF = """
# π-MEGA beamline rules
UAG(ops)   {alice, "bob"}          # operators
UAG(staff) {carol}
HAG(consoles) {Console1, "127.0.0.1"}
ASG(DEFAULT) {
    RULE(1, READ)
    RULE(1, WRITE, NOTRAPWRITE) {
        UAG(ops)
        HAG(consoles)
    }
    RULE(1,WRITE) { UAG(staff) }
}
ASG(OPERATE) {
    RULE(0, WRITE) { UAG(ops, staff) }
    RULE(1, READ)
}
ASG(HIDDEN) {
    RULE(1, NONE)
}
ASG(EMPTY)
"""


def test_parse_a_beamline_file() -> None:
    config = parse_acf(BEAMLINE_ACF)
    assert set(config.groups) == {"DEFAULT", "OPERATE", "HIDDEN", "EMPTY"}
    read_all, ops_write, staff_write = config.groups["DEFAULT"]
    assert (read_all.level, read_all.access, read_all.users, read_all.hosts) == (1, R, None, None)
    assert ops_write.users == {"alice", "bob"}
    assert ops_write.hosts == {"console1", "127.0.0.1"}  # host names in lower case
    assert (staff_write.access, staff_write.users, staff_write.hosts) == (RW, {"carol"}, None)
    assert config.groups["OPERATE"][0].users == {"alice", "bob", "carol"}
    assert config.groups["EMPTY"] == ()


def test_without_default_nothing_is_allowed() -> None:
    config = parse_acf("ASG(OTHER) { RULE(1, WRITE) }")
    assert config.groups["DEFAULT"] == ()
    assert config.rights("DEFAULT", "h", "u") == NO
    assert config.rights("OTHER", "h", "u") == RW


@pytest.mark.parametrize(("asg", "host", "user", "level", "rights"), [
    ("DEFAULT", "console1", "alice", 1, RW),
    ("DEFAULT", "CONSOLE1", "bob", 1, RW),       # host compared in lower case
    ("DEFAULT", "127.0.0.1", "alice", 0, RW),
    ("DEFAULT", "elsewhere", "alice", 1, R),     # an operator, but not on a console
    ("DEFAULT", "console1", "Alice", 1, R),      # user names match exactly
    ("DEFAULT", "console1", "mallory", 1, R),
    ("DEFAULT", "anywhere", "carol", 1, RW),     # a rule without HAG: any host
    ("UNKNOWN", "console1", "alice", 1, RW),     # an undefined group is DEFAULT
    ("OPERATE", "anywhere", "bob", 0, RW),       # RULE(0, ...) covers the value (level 0)
    ("OPERATE", "anywhere", "bob", 1, R),        # ... not the fields (level 1)
    ("OPERATE", "anywhere", "mallory", 0, R),
    ("HIDDEN", "console1", "alice", 0, NO),
    ("EMPTY", "console1", "alice", 0, NO),       # a defined group without rules
])
def test_rights(asg: str, host: str, user: str, level: int, rights: AccessRights) -> None:
    assert parse_acf(BEAMLINE_ACF).rights(asg, host, user, level) == rights


@pytest.mark.parametrize(("text", "line", "message"), [
    ("UAG(ops) {alice,\n  bob", 2, "expected ',' or '}', found the end of the file"),
    ("UAG(ops) {alice bob}", 1, "expected ',' or '}', found 'bob'"),
    ("\n\nFOO(x)", 3, "expected UAG, HAG or ASG, found 'FOO'"),
    ("UAG(a) {x}\nHAG(h)\nUAG(a) {y}", 3, "UAG(a) is defined twice (first on line 1)"),
    ("ASG(A) {\n  RULE(2, READ)\n}", 2, "a rule's level is 0 or 1, not '2'"),
    ("ASG(A) {\n  RULE(1, ALL)\n}", 2, "expected NONE, READ or WRITE, found 'ALL'"),
    ("ASG(A) {\n  RULE(1, WRITE) {\n    UAG(nobody)\n  }\n}", 3, "UAG(nobody) is not defined"),
    ("ASG(A) { RULE(1, WRITE) { HAG(h) } }", 1, "HAG(h) is not defined"),
    ("ASG(A) {\n RULE(1, READ)\n", 2, "expected RULE or '}', found the end of the file"),
    ('UAG(a) {"alice}', 1, "a quote that is not closed on its line"),
    ("# $(P)\nUAG(a) {$(USER)}", 2, "unexpected character '$'"),
    ("ASG(A) {\n  INPA(BL:OPSTATE)\n  RULE(1, WRITE)\n}", 2, "INPA: rules that depend on PV"),
    ('ASG(A) {\n  RULE(1, WRITE) {\n    CALC("A=1")\n  }\n}', 3, "CALC: rules that depend on PV"),
    ("ASG(A) {\n  RULE(1, WRITE, TRAPWRITE)\n}", 2, "TRAPWRITE is not supported"),
])
def test_parse_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(AcfError) as error:
        parse_acf(text, "beamline.acf")
    assert error.value.line == line
    assert str(error.value).startswith(f"beamline.acf:{line}: {message}")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(AcfError, match=r"missing\.acf: cannot read"):
        load_acf(tmp_path / "missing.acf")


def test_group_map() -> None:
    groups = GroupMap.parse("# pattern ASG\ncam1:Acquire*  OPERATE\nHDF1:*  WRITER # files\n",
                            "BL:")
    assert groups("BL:cam1:AcquireTime") == "OPERATE"
    assert groups("BL:HDF1:FilePath") == "WRITER"
    assert groups("BL:Stats1:Total_RBV") == "DEFAULT"
    with pytest.raises(AcfError, match=r"groups:2: expected 'PATTERN ASG'"):
        GroupMap.parse("a B\nHDF1:*\n", "BL:")


def test_checks_follow_record_levels_and_read_only(caplog: pytest.LogCaptureFixture) -> None:
    async def check() -> None:
        context = AccessContext(Camera(prefix="T:").pvdb, AccessPolicy(parse_acf(BEAMLINE_ACF)),
                                GroupMap.parse("Exposure OPERATE\nFrames HIDDEN\n", "T:"))
        assert context["T:Exposure"].check_access("pc", "bob") == RW
        assert context["T:Exposure.VAL"].check_access("pc", "bob") == RW
        assert context["T:Exposure.DESC"].check_access("pc", "bob") == R  # a level 1 field
        assert context["T:Exposure.PROC"].check_access("pc", "bob") == R
        assert context["T:Counter_RBV"].check_access("console1", "alice") == R  # read-only
        assert context["T:Frames"].check_access("console1", "alice") == NO
        with pytest.raises(AccessDenied, match="no read access to T:Frames"):
            await context["T:Frames"].auth_read("console1", "alice", ChannelType.LONG)
        exposure = context["T:Exposure"]
        for _ in range(3):
            with pytest.raises(AccessDenied, match="no write access to T:Exposure"):
                await exposure.auth_write("pc", "mallory", [5.0], ChannelType.DOUBLE, None)
        await exposure.auth_write("pc", "bob", [5.0], ChannelType.DOUBLE, None)
        assert exposure.value == 5.0

    with caplog.at_level(logging.WARNING, "pimega.iocs.access"):
        asyncio.run(check())
    assert [r.getMessage() for r in caplog.records] == [
        "access security: read of T:Frames refused to alice@console1",
        "access security: write of T:Exposure refused to mallory@pc"]  # once, rate-limited


def test_failed_reload_keeps_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "beamline.acf"
    path.write_text(BEAMLINE_ACF)
    policy = AccessPolicy.load(path)
    path.write_text("ASG(DEFAULT) {\n  RULE(1, WRITE) {\n    CALC(\"A\")\n  }\n}\n")
    assert not asyncio.run(policy.reload())
    assert policy.rights("DEFAULT", "console1", "alice", 1) == RW
    assert policy.rights("DEFAULT", "console1", "mallory", 1) == R
    assert policy.status.startswith(f"reload failed, previous rules kept: {path}:3: CALC")
    path.write_text("ASG(DEFAULT) { RULE(1, WRITE) }")
    assert asyncio.run(policy.reload())
    assert policy.rights("DEFAULT", "console1", "mallory", 1) == RW


def rules(writers: str) -> str:
    return f"""UAG(writers) {{{writers}}}
ASG(DEFAULT) {{
    RULE(1, READ)
    RULE(1, WRITE) {{ UAG(writers) }}
}}
ASG(LOCKED) {{ RULE(1, READ) }}
"""


def test_clients_get_the_rights_of_their_user_and_a_reload_changes_them(tmp_path: Path) -> None:
    acf = tmp_path / "beamline.acf"
    acf.write_text(rules("alice"))
    env = {**os.environ, **loopback_environment()}
    with (tiny_ioc("access", acf, env) as server,
          client(env, "alice") as alice, client(env, "mallory") as mallory):
        server.expect("ready")
        assert alice.ask("rights T:Exposure") == RW
        assert alice.ask("put T:Exposure 2.5") == "ok"
        assert alice.ask("rights T:Mode") == R  # an ASG of its own
        assert mallory.ask("rights T:Exposure") == R
        assert mallory.ask("rights T:Exposure.DESC") == R
        for value in (7, 8):  # caproto's client sends puts it has no right to: the IOC refuses
            assert mallory.ask(f"send T:Exposure {value}") == "sent"
            assert mallory.ask("send T:Exposure.DESC \"mine\"") == "sent"
        assert mallory.ask("get T:Exposure") == 2.5
        assert alice.ask("get T:Exposure.DESC") == ""

        acf.write_text(rules("mallory"))  # SIGHUP: connected clients get their new rights
        server.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: mallory.ask("rights T:Exposure"), RW)
        wait_for(lambda: alice.ask("rights T:Exposure"), R)
        assert mallory.ask("put T:Exposure 7") == "ok"
        assert alice.ask("send T:Exposure 9") == "sent"
        assert alice.ask("get T:Exposure") == 7

        acf.write_text("UAG(writers) {alice}\nASG(DEFAULT) {\n  RULE(1, WRITE, TRAPWRITE)\n}\n")
        assert mallory.ask("send T:AS:Reload 1") == "sent"  # the reload PV: the file is refused
        wait_for(lambda: mallory.ask("get T:AS:Status_RBV").startswith("reload failed"), True)
        assert f"{acf}:3: TRAPWRITE is not supported" in mallory.ask("get T:AS:Status_RBV")
        assert mallory.ask("put T:Exposure 3") == "ok"  # the old rules stay
        assert alice.ask("rights T:Exposure") == R

    log = server.log()
    refusals = [line for line in log.splitlines() if "refused to" in line]
    assert len([line for line in refusals if "mallory@" in line]) == 1, log  # one line, at most
    assert len([line for line in refusals if "alice@" in line]) == 1, log    # every 10 s each
    assert "AccessDenied" not in log, log  # no traceback from caproto for a refusal
