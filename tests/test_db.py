"""db/: the checked-in PV list and autosave request files are what the code generates, and
they say what the IOC serves."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pimega.iocs.app import ioc_class
from pimega.iocs.factory import all_pv_names
from pimega.screens import commands
from pimega.screens.db import AUTOSAVE_TOP, PATTERNS, PV_LIST, db_files
from pimega.screens.files import differences
from pimega.screens.pvs import ServedPVs, served_pvs, subgroups

DB = Path(__file__).resolve().parents[1] / "db"


def pv_list_rows() -> list[list[str]]:
    header, *rows = (DB / PV_LIST).read_text(encoding="utf-8").splitlines()
    assert header.split("\t") == ["pv", "record", "access", "enum_strings", "description"]
    return [row.split("\t") for row in rows]


def test_checked_in_db_files_are_the_generated_ones():
    found = differences(db_files(), DB, PATTERNS)
    assert not found, "db/ is out of date; regenerate with `pimega db db/`:\n" + "\n".join(found)


def test_check_option_finds_a_changed_file_and_a_stale_one(tmp_path, capsys):
    copy = tmp_path / "db"
    shutil.copytree(DB, copy)
    (copy / PV_LIST).write_text((copy / PV_LIST).read_text().replace("read-only", "read-write", 1))
    (copy / "autosave" / "old_settings.req").write_text("$(P)$(R)Gone\n")
    assert commands.db([str(copy), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{PV_LIST}: differs" in err and "old_settings.req: not generated" in err
    assert f"regenerate with: pimega db {copy}" in err


def test_pv_list_is_the_ioc_list_under_a_p_macro():
    rows = pv_list_rows()
    listed = [(name, record, tuple(strings.split("|")) if strings else ())
              for name, record, _, strings, _ in rows]
    assert listed == all_pv_names(ioc_class(1), "$(P)")
    assert len(rows) > 800


def test_pv_list_access_follows_the_served_pvs():
    access = {name: level for name, _, level, _, _ in pv_list_rows()}
    assert access["$(P)cam1:AcquireTime"] == "read-write"
    assert access["$(P)cam1:AcquireTime_RBV"] == "read-only"
    assert access["$(P)HDF1:FilePath"] == "read-write"
    assert access["$(P)Heartbeat_RBV"] == "read-only"
    assert {level for level in access.values()} == {"read-only", "read-write"}
    assert all(not name.endswith("_RBV") for name, level in access.items()
               if level == "read-write")


def test_autosave_top_file_includes_each_group_file_with_its_r():
    prefixes = {f"pimega_{attr}_settings.req": prefix
                for attr, (prefix, _) in subgroups(ioc_class(1)).items()}
    lines = [line for line in (DB / AUTOSAVE_TOP).read_text().splitlines()
             if not line.startswith("#")]
    included = {}
    for line in lines:
        match = re.fullmatch(r'file "([\w.]+)", P=\$\(P\), R=(\S+)', line)
        assert match, line
        included[match[1]] = match[2]
        assert prefixes[match[1]] == match[2]
        assert (DB / "autosave" / match[1]).is_file()
    assert {p.name for p in (DB / "autosave").glob("*.req")} == {*included, "pimega_settings.req"}


def test_autosave_lists_only_configuration_setpoints_of_their_group():
    groups = subgroups(ioc_class(1))
    for attr, (_, group_class) in groups.items():
        path = DB / "autosave" / f"pimega_{attr}_settings.req"
        if not path.exists():
            continue
        served = ServedPVs((pv.name, pv) for pv in served_pvs(group_class, ""))
        names = [line.removeprefix("$(P)$(R)") for line in path.read_text().splitlines()
                 if not line.startswith("#")]
        assert names and len(set(names)) == len(names), path.name
        for name in names:
            pv = served[name]
            assert pv.writable and pv.record not in {"busy", "calcout", "asyn"}, (attr, name)
    cam = (DB / "autosave" / "pimega_cam_settings.req").read_text()
    for setpoint in ("AcquireTime", "AcquirePeriod", "NumImages", "ImageMode", "CounterDepth"):
        assert f"$(P)$(R){setpoint}\n" in cam
    for never in ("Acquire", "ArrayCounter", "SizeX", "ShutterControl"):
        assert f"$(P)$(R){never}\n" not in cam
    hdf = (DB / "autosave" / "pimega_hdf_settings.req").read_text()
    assert "$(P)$(R)FilePath\n" in hdf and "$(P)$(R)Capture\n" not in hdf
    stats = (DB / "autosave" / "pimega_stats_settings.req").read_text()
    assert "$(P)$(R)MinValue\n" not in stats  # a reset target, not an echoed setting
