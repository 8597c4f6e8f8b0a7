"""Autosave: settings put by a client survive a restart of a real caproto IOC; a corrupt,
foreign or half-written save is reported and never stops the IOC."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from pimega.cli.loopback import loopback_environment
from pimega.core.errors import ConfigError
from pimega.iocs.autosave import FILE_NAME, Autosave, default_directory, request_pvs

from .caprocess import client, tiny_ioc, wait_for
from .tinyioc import PREFIX, SAVED, Camera

ROOT = Path(__file__).resolve().parents[1]


def saved_values(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["values"] if path.exists() else {}


def test_settings_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    env = {**os.environ, **loopback_environment()}
    with tiny_ioc("autosave", path, env) as ioc, client(env, "op") as op:
        ioc.expect("ready")
        for command in ('put T:Exposure 0.25', 'put T:Mode "Multiple"',
                        'put T:FileName "scan"', "put T:Frames 5"):
            assert op.ask(command) == "ok"
        wait_for(lambda: saved_values(path).get("T:FileName"), "scan")  # saved as they change
        assert op.ask('put T:FileName "scan2"') == "ok"
    # SIGTERM right after the last put: the last save is made on the way out
    assert saved_values(path) == {"T:Exposure": 0.25, "T:Mode": "Multiple", "T:FileName": "scan2"}
    document = json.loads(path.read_text())
    assert (document["format"], document["version"], document["prefix"]) == (
        "pimega-autosave", 1, PREFIX)

    with tiny_ioc("autosave", path, env) as ioc, client(env, "op") as op:
        ioc.expect("ready")
        assert op.ask("get T:Exposure") == 0.25
        assert op.ask("get T:Exposure_RBV") == 0.25  # restored through the put path
        assert op.ask("get T:Mode") == 1
        assert op.ask("get T:FileName") == "scan2"
        assert op.ask("get T:Frames") == 0  # not in the list: not saved
    assert "restored 3 of 3 setting(s)" in ioc.log()


def restore(path: Path) -> Camera:
    """A Camera after restoring from ``path``, and a save of it made by `Autosave.run`."""
    camera = Camera(prefix=PREFIX)
    autosave = Autosave(camera.pvdb, SAVED, path, PREFIX, interval=0.01)

    async def start_and_run_briefly() -> None:
        await autosave.restore()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(autosave.run(), 0.1)

    asyncio.run(start_and_run_briefly())
    autosave.close()
    return camera


def write_save(path: Path, values: dict[str, Any], **header: Any) -> None:
    path.write_text(json.dumps({"format": "pimega-autosave", "version": 1, "prefix": PREFIX,
                                **header, "values": values}))


def test_a_refused_value_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / FILE_NAME
    write_save(path, {"T:Exposure": -1.0, "T:Mode": "Continuous", "T:Gone": 3})
    with caplog.at_level(logging.INFO, "pimega.iocs.autosave"):
        camera = restore(path)
    assert camera.exposure.value == 1.0
    assert camera.mode.value == "Continuous"
    assert "T:Exposure = -1.0 not restored: Exposure must be > 0" in caplog.text
    assert "restored 1 of 3 setting(s)" in caplog.text
    assert saved_values(path) == {"T:Exposure": 1.0, "T:Mode": "Continuous", "T:FileName": ""}


@pytest.mark.parametrize(("content", "why"), [
    ('{"format": "pimega-autosave", "version": 1, "prefix": "T:", "values": {"T:Mo',
     "is not JSON"),
    ("[1, 2, 3]", "is not a pimega-autosave file"),
    ('{"format": "pimega-autosave", "version": 2, "prefix": "T:", "values": {}}',
     "is format version 2, not 1"),
    ('{"format": "pimega-autosave", "version": 1, "prefix": "OTHER:", '
     '"values": {"T:Mode": "Continuous"}}',
     "is saved by the IOC with prefix 'OTHER:', not 'T:'"),
    ('{"format": "pimega-autosave", "version": 1, "prefix": "T:", "values": [1]}',
     "is no values"),
])
def test_a_corrupt_or_foreign_file_is_reported_and_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, why: str) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(content)
    with caplog.at_level(logging.ERROR, "pimega.iocs.autosave"):
        camera = restore(path)
    assert camera.mode.value == "Single"
    assert f"{path} {why}" in caplog.text
    assert f"settings not restored, file moved to {path}.rejected" in caplog.text
    assert (tmp_path / f"{FILE_NAME}.rejected").read_text() == content  # kept for a human
    assert saved_values(path)["T:Mode"] == "Single"  # the IOC saves its own again


def test_a_stale_temporary_file_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    write_save(path, {"T:Mode": "Multiple"})
    (tmp_path / f"{FILE_NAME}.tmp").write_text('{"format": "pimega-autosave", "val')  # a crash
    camera = restore(path)
    assert camera.mode.value == "Multiple"
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]  # the save replaced it


def test_a_failing_save_is_reported_once(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "not-a-directory" / FILE_NAME
    path.parent.write_text("")
    with caplog.at_level(logging.ERROR, "pimega.iocs.autosave"):
        restore(path)
    assert caplog.text.count("cannot save settings") == 1


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_directory("BL:PIMEGA:") == tmp_path / "pimega" / "BL_PIMEGA"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_directory("PIMEGA:") == tmp_path / ".local" / "state" / "pimega" / "PIMEGA"


def test_request_files() -> None:
    files = {path.name: path.read_text() for path in (ROOT / "db" / "autosave").glob("*.req")}
    names = request_pvs(files, "pimega_settings.req", {"P": "BL:"})
    assert {"BL:cam1:AcquireTime", "BL:cam1:CounterDepth", "BL:HDF1:FilePath",
            "BL:image1:PreviewBinning", "BL:ROI1:MinX"} <= set(names)
    listed = sum(1 for name, text in files.items() if name != "pimega_settings.req"
                 for line in text.splitlines() if line.startswith("$(P)$(R)"))
    assert len(names) == listed
    with pytest.raises(ConfigError, match=r"macro \$\(P\) has no value"):
        request_pvs(files, "pimega_settings.req", {})
