"""pimega-ioc --access FILE: the rules enforced on the real IOC's PVs, by user name."""

from __future__ import annotations

import os

import pytest

from .caprocess import client, wait_for
from .conftest import start_ioc, stop_ioc

pytestmark = pytest.mark.slow

RULES = """
UAG(operators) {alice}
ASG(DEFAULT) {
    RULE(1, READ)
    RULE(1, WRITE) { UAG(operators) }
}
"""


def test_writes_are_granted_to_the_users_the_rules_name_and_refused_to_others(tmp_path):
    acf = tmp_path / "pimega.acf"
    acf.write_text(RULES)
    ioc = start_ioc("PMACF:", tmp_path / "ioc.log", "--sim", "--chips", "2x2", "--chip-size",
                    "16", "--access", str(acf))
    env = os.environ.copy()
    try:
        with client(env, "alice") as alice, client(env, "mallory") as mallory:
            assert alice.ask("put PMACF:cam1:NumImages 7") == "ok"
            assert alice.ask("get PMACF:cam1:NumImages_RBV") == 7
            assert mallory.ask("rights PMACF:cam1:NumImages") == 1  # READ only, as shown
            assert mallory.ask("send PMACF:cam1:NumImages 99") == "sent"  # sent anyway
            wait_for(lambda: "mallory" in ioc.log(), True)  # the refusal, logged by name
            assert mallory.ask("get PMACF:cam1:NumImages_RBV") == 7  # reads, never writes
    finally:
        stop_ioc(ioc)
