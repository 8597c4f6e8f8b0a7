"""docker/: the images install and start the IOC with the very commands the README and the
scripts document (no Docker engine here: the files are read, and the commands in compose.yaml
are parsed by the IOC's and the simulator's own argument parsers)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from pimega.cli import ioc as ioc_cli
from pimega.cli import sim as sim_cli

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each step, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            steps.append((instruction.upper(), " ".join(arguments.split())))
    return steps


def readme_start_command() -> str:
    """The README's command that installs and starts the IOC."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines()]
    (start,) = [c for c in commands if c.startswith("bash scripts/start.sh")]
    return start


def start_script_install_command() -> str:
    """How scripts/start.sh installs when the venv is not current (the one install command)."""
    (command,) = re.findall(r"^\s*(bash scripts/install\.sh.*)$",
                            (ROOT / "scripts" / "start.sh").read_text(), re.M)
    return command.strip()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize(("dockerfile", "base", "extras"), [
    ("Dockerfile", r"python:3\.11-slim", ""),
    ("Dockerfile.gpu", r"nvidia/cuda:[\w.]+-runtime-ubuntu[\d.]+", " gpu"),
])
def test_dockerfile_installs_and_starts_with_the_documented_commands(dockerfile, base, extras):
    steps = instructions(DOCKER / dockerfile)
    (from_,) = [args for name, args in steps if name == "FROM"]
    assert re.fullmatch(base, from_)
    runs = [args for name, args in steps if name == "RUN"]
    install = start_script_install_command() + extras
    assert [args for args in runs if "scripts/" in args] == [install]
    assert not [args for args in runs if "pip" in args]  # the script is the only installer
    for extra in extras.split():
        assert extra in pyproject()["project"]["optional-dependencies"]
    (cmd,) = [args for name, args in steps if name == "CMD"]
    assert shlex.join(json.loads(cmd)) == readme_start_command()


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_follows_container_conventions(dockerfile):
    steps = instructions(DOCKER / dockerfile)
    names = [name for name, _ in steps]
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert names.index("USER") < max(i for i, (n, a) in enumerate(steps) if "install.sh" in a)
    exposed = {port for name, args in steps if name == "EXPOSE" for port in args.split()}
    assert exposed == {"5064/tcp", "5064/udp", "5065/tcp", "5065/udp"}
    env = " ".join(args for name, args in steps if name == "ENV")
    for variable in ("EPICS_CA_SERVER_PORT=5064", "EPICS_CAS_SERVER_PORT=5064",
                     "EPICS_CAS_BEACON_PORT=5065", "EPICS_CAS_INTF_ADDR_LIST="):
        assert variable in env, variable
    assert any(name == "LABEL" and "org.opencontainers.image.title" in args
               for name, args in steps)
    ignore = (DOCKER / f"{dockerfile}.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


def test_compose_runs_the_ioc_and_the_simulator_with_valid_commands():
    yaml = pytest.importorskip("yaml", reason="PyYAML (installed with ophyd-async) reads YAML")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    scripts = pyproject()["project"]["scripts"]
    for name in ("ioc", "pimega-sim", "ioc-gpu"):
        service = services[name]
        assert service["network_mode"] == "host", name
        assert (ROOT / "docker" / service["build"]["context"] / service["build"]["dockerfile"]
                ).resolve().is_file(), name
    ioc, sim = services["ioc"], services["pimega-sim"]
    assert ioc["image"] == sim["image"]
    assert ioc["command"][0] in scripts and sim["command"][0] in scripts
    ioc_args = ioc_cli.parser().parse_args(ioc["command"][1:])
    sim_args = sim_cli.build_parser().parse_args(sim["command"][1:])
    assert ioc_args.listen == (sim_args.host, sim_args.port[0])
    assert sim["depends_on"] == ["ioc"]


@pytest.fixture
def scripts_copy(tmp_path: Path) -> Path:
    """The real start.sh beside a pyproject.toml, a fake pimega-ioc and a fake install.sh
    that records its call and installs (copies the pyproject) as the real one does."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "start.sh", tmp_path / "scripts")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "scripts" / "install.sh").write_text(
        "cd \"$(dirname \"$0\")/..\"\necho installed >> install.log\n"
        "mkdir -p .venv/bin\ncp pyproject.toml .venv/pimega-installed.toml\n")
    fake_ioc = tmp_path / ".venv" / "bin" / "pimega-ioc"
    fake_ioc.parent.mkdir(parents=True)
    fake_ioc.write_text("#!/bin/sh\necho \"pimega-ioc $*\"\n")
    fake_ioc.chmod(0o755)
    return tmp_path


def run_start(root: Path, *args: str) -> str:
    return subprocess.run(["bash", str(root / "scripts" / "start.sh"), *args], check=True,
                          capture_output=True, text=True, env=os.environ.copy()).stdout


def test_start_installs_once_then_starts_offline(scripts_copy):
    assert run_start(scripts_copy, "--modules", "4") == "pimega-ioc --sim --modules 4\n"
    assert (scripts_copy / "install.log").read_text() == "installed\n"
    assert run_start(scripts_copy) == "pimega-ioc --sim\n"
    assert (scripts_copy / "install.log").read_text() == "installed\n"  # not again
    (scripts_copy / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    run_start(scripts_copy)
    assert (scripts_copy / "install.log").read_text() == "installed\n" * 2


def test_install_script_leaves_the_mark_start_script_looks_for():
    (mark,) = re.findall(r"cmp -s pyproject\.toml (\S+);",
                         (ROOT / "scripts" / "start.sh").read_text())
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert f"cp pyproject.toml {mark}\n" in install
    for script in ("start.sh", "install.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True)
